"""Recorded calls: real calls with speech from the shared audio, recorded by a real server,
read back through the REST routes and decoded with PyAV."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from server.caller import CallResult, place_call
from tests.conftest import RunningServer, speech_file, start_server, stop_server
from tests.ollama_standin import MODEL as OLLAMA_MODEL
from tests.ollama_standin import OllamaStandIn, ScriptedReply

# One sentence with no long pause inside, so one turn.
SENTENCE = "librispeech_251-137823-0003_en.wav"
# The timeline and the duration must match what the caller measured this closely.
TOLERANCE_MS = 100
# A reply long enough to hang up in the middle of it.
LONG_REPLY = ScriptedReply(
    [
        "[happy] That is a lovely thing to hear.",
        " Tell me more about the door and the people outside it.",
        " [curious] What did you see when you got there?",
        " Did anyone else come out to look?",
        " I would love to hear the whole story, slowly, in your own words.",
    ]
)


def mean_level(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


def decode_recording(path: Path) -> tuple[np.ndarray, int]:
    """Return the recording as float samples shaped (2, n) and its rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        return np.concatenate(frames, axis=1), stream.rate


async def get_json(server: RunningServer, path: str, token: str | None = None) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url + path, headers=server.auth(token)) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def finished_recordings(
    server: RunningServer, conversation_id: str, count: int = 1, timeout_s: float = 20
) -> list[dict[str, Any]]:
    """Wait until the conversation has count recordings, none still recording."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = await get_json(server, f"/api/conversations/{conversation_id}/recordings")
        recordings = body["recordings"]
        if len(recordings) >= count and all(r["status"] != "recording" for r in recordings):
            return list(recordings)
        assert time.monotonic() < deadline, f"recordings not finished: {recordings}"
        await asyncio.sleep(0.2)


def entries(timeline: list[dict[str, Any]], entry_type: str) -> list[dict[str, Any]]:
    return [entry for entry in timeline if entry["type"] == entry_type]


def caller_offset_ms(call: CallResult, at: float | None) -> float:
    assert at is not None and call.offer_sent_at is not None
    return (at - call.offer_sent_at) * 1000


@pytest.fixture(scope="module")
async def recording_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_dsn: str
) -> Any:
    standin = OllamaStandIn()
    await standin.start()
    server = await start_server(
        tmp_path_factory.mktemp("recording-server"),
        postgres_admin_dsn,
        OLLAMA_HOST=standin.url,
        PARLEY_OLLAMA_MODEL=OLLAMA_MODEL,
        PARLEY_CALL_IDLE_TIMEOUT_S="3",
    )
    yield server, standin
    await stop_server(server)
    await standin.stop()


@pytest.fixture(scope="module")
async def recorded_call(recording_server: Any) -> tuple[CallResult, dict[str, Any]]:
    server, _standin = recording_server
    call = await place_call(server.url, str(speech_file(SENTENCE)), token=server.token)
    [listed] = await finished_recordings(server, call.conversation_id)
    recording = await get_json(server, f"/api/recordings/{listed['id']}")
    return call, recording


async def test_call_recording_matches_caller(
    recorded_call: tuple[CallResult, dict[str, Any]], recording_server: Any
) -> None:
    call, recording = recorded_call
    server, _standin = recording_server
    assert recording["status"] == "completed"
    call_ms = caller_offset_ms(call, call.hung_up_at)
    timeline = recording["timeline"]
    [utterance] = entries(timeline, "utterance")
    chunks = entries(timeline, "chunk")
    assert chunks, timeline
    speech_end_ms = caller_offset_ms(call, call.speech_end_sent_at)
    first_audio_ms = caller_offset_ms(call, call.first_reply_heard_at)
    print(
        f"duration {recording['durationMs']} vs caller {call_ms:.0f}; "
        f"utterance end {utterance['endMs']} vs {speech_end_ms:.0f}; "
        f"first audio {chunks[0]['atMs']} vs {first_audio_ms:.0f}"
    )
    assert abs(recording["durationMs"] - call_ms) <= TOLERANCE_MS
    assert abs(utterance["endMs"] - speech_end_ms) <= TOLERANCE_MS
    assert abs(chunks[0]["atMs"] - first_audio_ms) <= TOLERANCE_MS
