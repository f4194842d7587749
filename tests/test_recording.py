"""Recorded calls: real calls with speech from the shared audio, recorded by a real server,
read back through the REST routes and decoded with PyAV."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import signal
import sys
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
from tests.conftest import REPO_DIR, RunningServer, speech_file, start_server, stop_server
from tests.event_client import EventClient
from tests.ollama_standin import MODEL as OLLAMA_MODEL
from tests.ollama_standin import OllamaStandIn, ScriptedReply
from tests.test_signalling import audio_offer, post_offer

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
    _server, _standin = recording_server
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


async def test_recording_holds_both_directions(
    recorded_call: tuple[CallResult, dict[str, Any]], recording_server: Any
) -> None:
    call, recording = recorded_call
    server, _standin = recording_server
    path = server.data_dir / "recordings" / call.conversation_id / f"{recording['id']}.ogg"
    audio, rate = decode_recording(path)
    assert rate == 48000
    assert audio.shape[0] == 2
    assert abs(audio.shape[1] / rate * 1000 - recording["durationMs"]) <= 30

    def span(channel: int, start_ms: int, end_ms: int) -> np.ndarray:
        return audio[channel, start_ms * rate // 1000 : end_ms * rate // 1000]

    [utterance] = entries(recording["timeline"], "utterance")
    chunk = entries(recording["timeline"], "chunk")[0]
    caller_speech = mean_level(span(0, utterance["atMs"] + 500, utterance["endMs"]))
    caller_during_reply = mean_level(span(0, chunk["atMs"], chunk["endMs"]))
    parley_during_speech = mean_level(span(1, utterance["atMs"] + 500, utterance["endMs"]))
    parley_reply = mean_level(span(1, chunk["atMs"], chunk["endMs"]))
    # Float samples in [-1, 1]: speech is well above 0.01 RMS, digital silence near 0.
    assert caller_speech > 0.02, "the caller's speech is missing from the left channel"
    assert parley_reply > 0.02, "the reply is missing from the right channel"
    assert caller_during_reply < caller_speech / 10, "the left channel has the reply in it"
    assert parley_during_speech < parley_reply / 10, "the right channel has the caller in it"


async def test_timeline_has_transcript_and_chunks(
    recorded_call: tuple[CallResult, dict[str, Any]],
) -> None:
    call, recording = recorded_call
    timeline = recording["timeline"]
    assert [entry["atMs"] for entry in timeline] == sorted(entry["atMs"] for entry in timeline)
    [utterance] = entries(timeline, "utterance")
    [transcript] = entries(timeline, "transcript")
    assert transcript["text"] == call.user_transcript
    assert (transcript["atMs"], transcript["endMs"]) == (utterance["atMs"], utterance["endMs"])
    chunks = entries(timeline, "chunk")
    assert " ".join(chunk["text"] for chunk in chunks) == call.reply_text
    assert [chunk["index"] for chunk in chunks] == list(range(len(chunks)))
    assert all(chunk["status"] == "spoken" for chunk in chunks)
    assert chunks[0]["emotion"] == "happy"
    assert all(chunk["endMs"] > chunk["atMs"] for chunk in chunks)
    assert all(b["atMs"] >= a["endMs"] for a, b in itertools.pairwise(chunks))


async def test_recording_events_reach_caller(
    recorded_call: tuple[CallResult, dict[str, Any]],
) -> None:
    call, recording = recorded_call
    started = [e["data"] for e in call.events if e["type"] == "recording:started"]
    assert [data["recordingId"] for data in started] == [recording["id"]]
    assert started[0]["startedAt"] == recording["startedAt"]


async def fetch_audio(
    server: RunningServer, recording_id: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    url = f"{server.url}/api/recordings/{recording_id}/audio?token={server.token}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def test_audio_ranges_return_right_bytes(
    recorded_call: tuple[CallResult, dict[str, Any]], recording_server: Any
) -> None:
    call, recording = recorded_call
    server, _standin = recording_server
    path = server.data_dir / "recordings" / call.conversation_id / f"{recording['id']}.ogg"
    whole = path.read_bytes()
    size = len(whole)
    assert recording["audio"]["sizeBytes"] == size

    status, headers, body = await fetch_audio(server, recording["id"], {})
    assert status == 200
    assert body == whole
    assert headers["Content-Type"] == "audio/ogg"
    assert headers["Accept-Ranges"] == "bytes"

    cases = {
        "bytes=0-99": (0, 99),
        "bytes=1000-": (1000, size - 1),
        "bytes=-500": (size - 500, size - 1),
        f"bytes=100-{size + 5000}": (100, size - 1),
        f"bytes={size - 1}-{size - 1}": (size - 1, size - 1),
    }
    for header, (first, last) in cases.items():
        status, headers, body = await fetch_audio(server, recording["id"], {"Range": header})
        assert status == 206, header
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}", header
        assert body == whole[first : last + 1], header


async def test_bad_ranges(
    recorded_call: tuple[CallResult, dict[str, Any]], recording_server: Any
) -> None:
    _call, recording = recorded_call
    server, _standin = recording_server
    size = recording["audio"]["sizeBytes"]
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        status, headers, body = await fetch_audio(server, recording["id"], {"Range": header})
        assert status == 416, header
        assert headers["Content-Range"] == f"bytes */{size}", header
        assert json.loads(body)["code"] == "range_not_satisfiable", header
    status, headers, _body = await fetch_audio(
        server, recording["id"], {"Range": "bytes=" + "9" * 19 + "-"}
    )
    assert status == 416
    # Headers that are not one valid range are ignored: the whole file, as HTTP allows.
    for header in ("bytes=0-9,20-29", "items=0-9", "bytes=9-0", "bytes=abc"):
        status, _headers, body = await fetch_audio(server, recording["id"], {"Range": header})
        assert status == 200, header
        assert len(body) == size, header
    # No validator is ever sent, so an If-Range cannot match: the whole file.
    status, _headers, body = await fetch_audio(
        server, recording["id"], {"Range": "bytes=0-9", "If-Range": '"some-etag"'}
    )
    assert status == 200
    assert len(body) == size


async def test_export_holds_audio_and_timeline(
    recorded_call: tuple[CallResult, dict[str, Any]], recording_server: Any
) -> None:
    call, recording = recorded_call
    server, _standin = recording_server
    url = f"{server.url}/api/recordings/{recording['id']}/export?token={server.token}"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/zip"
        assert recording["id"] in response.headers["Content-Disposition"]
        archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    path = server.data_dir / "recordings" / call.conversation_id / f"{recording['id']}.ogg"
    assert sorted(archive.namelist()) == ["recording.ogg", "timeline.json"]
    assert archive.read("recording.ogg") == path.read_bytes()
    assert json.loads(archive.read("timeline.json")) == recording


async def test_head_requests_send_no_body(
    recorded_call: tuple[CallResult, dict[str, Any]], recording_server: Any
) -> None:
    _call, recording = recorded_call
    server, _standin = recording_server
    async with aiohttp.ClientSession() as http:
        for route in ("audio", "export"):
            url = f"{server.url}/api/recordings/{recording['id']}/{route}?token={server.token}"
            async with http.head(url) as response:
                assert response.status == 200, route
                assert int(response.headers["Content-Length"]) > 0, route
                assert await response.read() == b"", route
    assert "Traceback" not in server.log_tail(200)


async def test_unconnected_call_leaves_no_recording(recording_server: Any) -> None:
    server, _standin = recording_server
    conversation_id = await create_conversation(server)
    status, _answer = await post_offer(
        server, {"sdp": await audio_offer(), "type": "offer", "conversationId": conversation_id}
    )
    assert status == 200
    # The caller never connects: the idle timeout (3 s here) ends the call.
    health = await server.wait_for_idle(timeout_s=30)
    assert health["calls"] == 0
    listed = await get_json(server, f"/api/conversations/{conversation_id}/recordings")
    assert listed["recordings"] == []
    assert not (server.data_dir / "recordings" / conversation_id).exists()
    events = await get_json(server, f"/api/conversations/{conversation_id}/events")
    stopped = [e["data"] for e in events["events"] if e["type"] == "recording:stopped"]
    assert [data["status"] for data in stopped] == ["discarded"]


async def test_other_user_gets_not_found(
    recorded_call: tuple[CallResult, dict[str, Any]], recording_server: Any
) -> None:
    call, recording = recorded_call
    server, _standin = recording_server
    other = await server.create_user(f"other-{uuid.uuid4().hex[:6]}")
    recording_id = recording["id"]
    routes = [
        ("GET", f"/api/conversations/{call.conversation_id}/recordings"),
        ("GET", f"/api/recordings/{recording_id}"),
        ("GET", f"/api/recordings/{recording_id}/audio"),
        ("GET", f"/api/recordings/{recording_id}/export"),
        ("DELETE", f"/api/recordings/{recording_id}"),
        ("GET", f"/api/recordings/{uuid.uuid4()}"),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path in routes:
            async with http.request(method, server.url + path, headers=server.auth(other)) as r:
                assert r.status == 404, path
                assert (await r.json())["code"] == "not_found", path
        async with http.get(server.url + "/api/recordings/not-a-uuid", headers=server.auth()) as r:
            assert r.status == 400
        async with http.get(server.url + f"/api/recordings/{recording_id}") as r:
            assert r.status == 401
    assert (await get_json(server, f"/api/recordings/{recording_id}"))["id"] == recording_id


async def create_conversation(server: RunningServer, **settings: Any) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url + "/api/conversations", json=settings, headers=server.auth()) as r,
    ):
        assert r.status == 201, await r.text()
        conversation_id: str = (await r.json())["conversationId"]
        return conversation_id


async def spawn_caller(server: RunningServer, conversation_id: str) -> asyncio.subprocess.Process:
    """Start `parley call` in its own process, so that the test can kill it outright."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "call",
        "--audio",
        str(speech_file(SENTENCE)),
        "--server",
        server.url,
        # One form: a token may start with "-", which argparse would take for an option.
        f"--token={server.token}",
        "--conversation",
        conversation_id,
        cwd=REPO_DIR,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def test_vanished_caller_leaves_playable_recording(recording_server: Any) -> None:
    server, standin = recording_server
    standin.replies.append(LONG_REPLY)
    conversation_id = await create_conversation(server)
    events = await EventClient.connect(server.url, server.token)
    try:
        await events.request("conversation:load", {"conversationId": conversation_id})
        caller = await spawn_caller(server, conversation_id)
        try:
            await events.wait_for(lambda e: e["type"] == "chunk:audio-ready", timeout_s=60)
            # While the call runs, the recording shows what has happened so far.
            [running] = (
                await get_json(server, f"/api/conversations/{conversation_id}/recordings")
            )["recordings"]
            assert running["status"] == "recording"
            assert running["durationMs"] is None
            so_far = await get_json(server, f"/api/recordings/{running['id']}")
            assert [e["type"] for e in so_far["timeline"]][:2] == ["utterance", "transcript"]
            status, _headers, head = await fetch_audio(
                server, running["id"], {"Range": "bytes=0-3"}
            )
            assert (status, head) == (206, b"OggS")
            # Mid-reply: the first chunk is playing, the rest are still to come.
            await asyncio.sleep(1.0)
            vanished_at = time.monotonic()
            caller.kill()
        finally:
            await caller.wait()
        stopped = await events.wait_for(lambda e: e["type"] == "recording:stopped", 30)
        stopped_at = time.monotonic()
    finally:
        await events.close()

    [recording] = await finished_recordings(server, conversation_id)
    recording = await get_json(server, f"/api/recordings/{recording['id']}")
    assert stopped["data"]["recordingId"] == recording["id"]
    assert recording["status"] == "completed"
    # The server ends the call when no audio came for the idle timeout (3 s here).
    assert recording["durationMs"] > 3000
    path = server.data_dir / "recordings" / conversation_id / f"{recording['id']}.ogg"
    audio, rate = decode_recording(path)
    assert abs(audio.shape[1] / rate * 1000 - recording["durationMs"]) <= 30
    chunks = entries(recording["timeline"], "chunk")
    assert chunks, "no chunk played before the caller vanished"
    last_end = max(chunk["endMs"] for chunk in chunks)
    assert last_end <= recording["durationMs"]
    reply = audio[1, chunks[0]["atMs"] * rate // 1000 : chunks[0]["endMs"] * rate // 1000]
    assert mean_level(reply) > 0.02, "the reply is missing from the recording"
    # The caller's channel falls silent when it vanished, long before the end.
    silent_for_ms = (stopped_at - vanished_at) * 1000
    tail = audio[0, -int(rate * min(2.0, silent_for_ms / 1000 - 0.5)) :]
    assert mean_level(tail) < 0.002


async def test_recording_off_for_conversation(recording_server: Any) -> None:
    server, _standin = recording_server
    conversation_id = await create_conversation(server, recordCalls=False)
    body = await get_json(server, f"/api/conversations/{conversation_id}")
    assert body["conversation"]["settings"]["recordCalls"] is False
    call = await place_call(
        server.url, str(speech_file(SENTENCE)), token=server.token, conversation_id=conversation_id
    )
    assert call.reply_text, "the call itself must work unrecorded"
    assert not [e for e in call.events if e["type"].startswith("recording:")]
    listed = await get_json(server, f"/api/conversations/{conversation_id}/recordings")
    assert listed["recordings"] == []
    assert not (server.data_dir / "recordings" / conversation_id).exists()


async def test_delete_removes_files(
    recorded_call: tuple[CallResult, dict[str, Any]], recording_server: Any
) -> None:
    call, recording = recorded_call
    server, _standin = recording_server
    folder = server.data_dir / "recordings" / call.conversation_id
    audio = folder / f"{recording['id']}.ogg"
    assert audio.is_file()
    async with aiohttp.ClientSession() as http:
        url = f"{server.url}/api/recordings/{recording['id']}"
        async with http.delete(url, headers=server.auth()) as response:
            assert response.status == 204
        async with http.get(url, headers=server.auth()) as response:
            assert response.status == 404
        async with http.delete(url, headers=server.auth()) as response:
            assert response.status == 404
    assert not audio.exists()
    assert not folder.exists(), "the conversation's empty folder is left behind"
    db = await server.db()
    assert (
        await db.fetchval(
            "SELECT count(*) FROM recordings WHERE id = $1", uuid.UUID(recording["id"])
        )
        == 0
    )


async def test_deleting_conversation_removes_recordings(recording_server: Any) -> None:
    server, _standin = recording_server
    call = await place_call(server.url, str(speech_file(SENTENCE)), token=server.token)
    await finished_recordings(server, call.conversation_id)
    folder = server.data_dir / "recordings" / call.conversation_id
    assert [path.suffix for path in folder.iterdir()] == [".ogg"]
    async with (
        aiohttp.ClientSession() as http,
        http.delete(
            f"{server.url}/api/conversations/{call.conversation_id}", headers=server.auth()
        ) as response,
    ):
        assert response.status == 204
    assert not folder.exists()
    db = await server.db()
    count = await db.fetchval(
        "SELECT count(*) FROM recordings WHERE conversation_id = $1",
        uuid.UUID(call.conversation_id),
    )
    assert count == 0


async def test_killed_server_leaves_playable_recording(
    tmp_path: Path, postgres_admin_dsn: str
) -> None:
    standin = OllamaStandIn()
    await standin.start()
    standin.replies.append(LONG_REPLY)
    env = {"OLLAMA_HOST": standin.url, "PARLEY_OLLAMA_MODEL": OLLAMA_MODEL}
    server = await start_server(tmp_path, postgres_admin_dsn, **env)
    restarted = None
    try:
        killed_at: list[float] = []

        def kill_mid_reply(events: list[dict[str, Any]]) -> bool:
            if not killed_at and any(e["type"] == "chunk:audio-ready" for e in events):
                server.process.kill()
                killed_at.append(time.monotonic())
            return bool(killed_at)

        call = await place_call(
            server.url,
            str(speech_file(SENTENCE)),
            token=server.token,
            hang_up_when=kill_mid_reply,
        )
        assert killed_at, "the reply never started"
        await asyncio.to_thread(server.process.wait, 10)
        restarted = await start_server(
            tmp_path,
            postgres_admin_dsn,
            dsn=server.dsn,
            PARLEY_DATA_DIR=str(server.data_dir),
            **env,
        )
        restarted.token = server.token
        [recording] = await finished_recordings(restarted, call.conversation_id)
        recording = await get_json(restarted, f"/api/recordings/{recording['id']}")
    finally:
        await stop_server(server)
        if restarted is not None:
            await stop_server(restarted)
        await standin.stop()

    assert recording["status"] == "interrupted"
    call_ms = (killed_at[0] - call.offer_sent_at) * 1000 if call.offer_sent_at else 0
    # Ogg pages close every 200 ms and silence fills in 300 ms behind: up to about 0.5 s lost.
    assert call_ms - 800 <= recording["durationMs"] <= call_ms + TOLERANCE_MS
    path = server.data_dir / "recordings" / call.conversation_id / f"{recording['id']}.ogg"
    audio, rate = decode_recording(path)
    assert abs(audio.shape[1] / rate * 1000 - recording["durationMs"]) <= 30
    assert recording["audio"]["sizeBytes"] == path.stat().st_size
    assert not path.with_suffix("").with_suffix(".timeline.jsonl").exists()
    types = [entry["type"] for entry in recording["timeline"]]
    assert "utterance" in types
    assert "transcript" in types
    [utterance] = entries(recording["timeline"], "utterance")
    speech = audio[
        0, utterance["atMs"] * rate // 1000 + rate // 2 : utterance["endMs"] * rate // 1000
    ]
    assert mean_level(speech) > 0.02


async def test_stopped_server_finishes_recording(tmp_path: Path, postgres_admin_dsn: str) -> None:
    standin = OllamaStandIn()
    await standin.start()
    standin.replies.append(LONG_REPLY)
    server = await start_server(
        tmp_path, postgres_admin_dsn, OLLAMA_HOST=standin.url, PARLEY_OLLAMA_MODEL=OLLAMA_MODEL
    )
    try:
        stopped_at: list[float] = []
        audio_ready_at: list[float] = []

        def stop_mid_reply(events: list[dict[str, Any]]) -> bool:
            if not audio_ready_at and any(e["type"] == "chunk:audio-ready" for e in events):
                audio_ready_at.append(time.monotonic())
            # The first chunk's audio is stored just as it starts playing: give it 0.5 s.
            if not stopped_at and audio_ready_at and time.monotonic() - audio_ready_at[0] > 0.5:
                server.process.send_signal(signal.SIGINT)
                stopped_at.append(time.monotonic())
            return bool(stopped_at)

        call = await place_call(
            server.url, str(speech_file(SENTENCE)), token=server.token, hang_up_when=stop_mid_reply
        )
        assert stopped_at, "the reply never started"
        assert await asyncio.to_thread(server.process.wait, 30) == 0
        db = await server.db()
        row = await db.fetchrow(
            "SELECT id, status, duration_ms, timeline FROM recordings WHERE conversation_id = $1",
            uuid.UUID(call.conversation_id),
        )
    finally:
        await stop_server(server)
        await standin.stop()

    assert row["status"] == "completed"
    assert call.offer_sent_at is not None
    call_ms = (stopped_at[0] - call.offer_sent_at) * 1000
    assert abs(row["duration_ms"] - call_ms) <= 300
    path = server.data_dir / "recordings" / call.conversation_id / f"{row['id']}.ogg"
    audio, rate = decode_recording(path)
    assert abs(audio.shape[1] / rate * 1000 - row["duration_ms"]) <= 30
    chunks = entries(row["timeline"], "chunk")
    assert chunks, "the chunk playing when the server stopped is missing"
    assert chunks[-1]["status"] == "cut"


async def test_delete_racing_offer_leaves_nothing(recording_server: Any) -> None:
    server, _standin = recording_server
    conversations = []
    for round_number in range(20):
        conversation_id = await create_conversation(server)
        conversations.append(conversation_id)
        offer = {"sdp": await audio_offer(), "type": "offer", "conversationId": conversation_id}

        async def delete(delay_s: float, conversation_id: str = conversation_id) -> int:
            await asyncio.sleep(delay_s)
            async with (
                aiohttp.ClientSession() as http,
                http.delete(
                    f"{server.url}/api/conversations/{conversation_id}", headers=server.auth()
                ) as response,
            ):
                return response.status

        # The delete lands at different moments of the offer's handling.
        _offered, deleted = await asyncio.gather(
            post_offer(server, offer), delete(0.001 * round_number)
        )
        assert deleted == 204, f"round {round_number}: the delete failed"
    health = await server.wait_for_idle(timeout_s=30)
    assert health["calls"] == 0
    assert health["callThreads"] == 0, "a recorder thread outlived its call"
    assert health["callTasks"] == 0
    for conversation_id in conversations:
        assert not (server.data_dir / "recordings" / conversation_id).exists(), conversation_id
