"""End to end: real calls from the test caller to `parley serve` on the embedded models."""

from __future__ import annotations

import asyncio
import re
import uuid
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from bench.stt_window import word_error_rate
from media.frames import read_audio_file, write_wav
from server.caller import AUDIBLE_PEAK, CallResult, place_call
from tests.conftest import RunningServer, speech_file, start_server, stop_server

JFK = "jfk_inaugural_1961_male_en.wav"
JFK_WORDS = (
    "And so my fellow Americans ask not what your country can do for you"
    " ask what you can do for your country."
)
# One sentence with no long pause inside, so one turn.
SENTENCE = "librispeech_251-137823-0003_en.wav"


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())


def event_types(result: CallResult) -> list[str]:
    """Return the types of the logged events: live-only ones (interim transcripts) carry
    no seq."""
    return [event["type"] for event in result.events if "seq" in event]


def logged(result: CallResult) -> list[dict[str, Any]]:
    return [event for event in result.events if "seq" in event]


def events_of(result: CallResult, event_type: str) -> list[dict[str, Any]]:
    return [event["data"] for event in result.events if event["type"] == event_type]


@pytest.fixture(scope="module")
async def sentence_call(embedded_server: RunningServer) -> CallResult:
    return await place_call(
        embedded_server.url, token=embedded_server.token, audio_path=str(speech_file(SENTENCE))
    )


async def test_sentence_transcript_reaches_caller(sentence_call: CallResult) -> None:
    assert "rushed toward the door to see what was happening outside" in normalise(
        sentence_call.user_transcript
    )


async def test_sentence_reply_is_heard(sentence_call: CallResult) -> None:
    assert sentence_call.reply_text
    assert sentence_call.reply_audio_seconds >= 1.0
    assert sentence_call.first_audio_ms is not None
    assert sentence_call.first_audio_ms > 0

    audio = sentence_call.reply_audio.astype(np.float64)
    audible = np.abs(audio) > AUDIBLE_PEAK
    assert audible.sum() > 0.2 * 48000, "less than 0.2 s of the recording is above silence"
    rms = float(np.sqrt(np.mean(audio[audible.argmax() :] ** 2)))
    assert rms > 300, f"reply audio RMS {rms:.0f} is near silence"


async def test_sentence_events_arrive_in_order(sentence_call: CallResult) -> None:
    types = event_types(sentence_call)
    received = events_of(sentence_call, "message:received")
    assert types[0] == "conversation:created", "the call's channel starts at the log's seq 1"
    assert types[1] == "recording:started"
    assert types[2] == "message:received"
    assert received[0]["role"] == "user"
    assert types[-2:] == ["message:received", "turn:metrics"]
    assert received[-1]["role"] == "assistant"
    assert "conversation:error" not in types

    seqs = [event["seq"] for event in logged(sentence_call)]
    assert seqs == list(range(1, len(seqs) + 1)), "events are missing or out of order"

    generated = [data["chunkId"] for data in events_of(sentence_call, "chunk:generated")]
    ready = [data["chunkId"] for data in events_of(sentence_call, "chunk:audio-ready")]
    assert generated
    assert ready == generated, "every chunk gets its audio, in chunk order"
    for chunk_id in generated:
        generated_at = next(
            i
            for i, e in enumerate(sentence_call.events)
            if e["type"] == "chunk:generated" and e["data"]["chunkId"] == chunk_id
        )
        ready_at = next(
            i
            for i, e in enumerate(sentence_call.events)
            if e["type"] == "chunk:audio-ready" and e["data"]["chunkId"] == chunk_id
        )
        assert generated_at < ready_at
    indexes = [data["chunkIndex"] for data in events_of(sentence_call, "chunk:generated")]
    assert indexes == list(range(len(indexes)))


async def test_sentence_turn_is_stored(
    sentence_call: CallResult, embedded_server: RunningServer
) -> None:
    pool = await embedded_server.db()
    messages = await pool.fetch(
        "SELECT * FROM messages WHERE conversation_id = $1 ORDER BY sequence_number",
        uuid.UUID(sentence_call.conversation_id),
    )
    assert [row["role"] for row in messages] == ["user", "assistant"]
    assert [row["sequence_number"] for row in messages] == [1, 2]

    user, assistant = messages
    user_event = events_of(sentence_call, "message:received")[0]
    assert user["content"] == user_event["content"] == sentence_call.user_transcript
    assert user["stt_transcript"] == user["content"]
    assert user["audio_file_id"]
    assert 3.5 <= float(user["audio_duration"]) <= 5.0
    assert assistant["content"] == sentence_call.reply_text
    assert assistant["metadata"]["status"] == "completed"

    chunks = await pool.fetch(
        "SELECT * FROM message_chunks WHERE message_id = $1 ORDER BY chunk_index", assistant["id"]
    )
    generated = events_of(sentence_call, "chunk:generated")
    assert [str(row["id"]) for row in chunks] == [data["chunkId"] for data in generated]
    assert " ".join(row["text"] for row in chunks) == assistant["content"]
    for row in chunks:
        assert row["tts_status"] == "completed"
        assert row["audio_file_id"]
        assert float(row["audio_duration"]) > 0
        assert row["emotion"] in (
            "happy",
            "encouraging",
            "neutral",
            "excited",
            "calm",
            "curious",
            "supportive",
        )
        assert row["icon"]

    # The server stops the recording just after the caller hangs up.
    stored_events = []
    for _ in range(50):
        stored_events = await pool.fetch(
            "SELECT event_type FROM conversation_events WHERE conversation_id = $1 ORDER BY seq",
            assistant["conversation_id"],
        )
        if stored_events[-1]["event_type"] == "recording:stopped":
            break
        await asyncio.sleep(0.1)
    # The caller hung up before the recording stopped, so it never got that last event.
    assert [row["event_type"] for row in stored_events] == [
        *event_types(sentence_call),
        "recording:stopped",
    ]


async def test_stored_audio_is_served(
    sentence_call: CallResult, embedded_server: RunningServer, tmp_path: Path
) -> None:
    ready = events_of(sentence_call, "chunk:audio-ready")[0]
    user = events_of(sentence_call, "message:received")[0]
    async with aiohttp.ClientSession(headers=embedded_server.auth()) as http:
        for url, expected_s in (
            (ready["audioUrl"], ready["duration"]),
            (user["audioUrl"], user["audioDuration"]),
        ):
            async with http.get(embedded_server.url + url) as response:
                assert response.status == 200
                body = await response.read()
            path = tmp_path / "served.wav"
            path.write_bytes(body)
            with wave.open(str(path)) as wav:
                seconds = wav.getnframes() / wav.getframerate()
            assert abs(seconds - expected_s) < 0.01

        async with http.get(embedded_server.url + "/api/audio/" + "0" * 32) as response:
            assert response.status == 404
            assert (await response.json())["code"] == "not_found"
        async with http.get(embedded_server.url + "/api/audio/..%2Fetc") as response:
            assert response.status in (400, 404)
            assert (await response.json())["code"] in ("invalid_field", "not_found")


async def test_call_session_is_cleaned_up(
    sentence_call: CallResult, embedded_server: RunningServer
) -> None:
    health = await embedded_server.wait_for_idle()
    assert health["calls"] == 0
    assert health["callThreads"] == 0
    assert health["callTasks"] == 0


async def test_silence_makes_no_turn(embedded_server: RunningServer) -> None:
    result = await place_call(
        embedded_server.url,
        token=embedded_server.token,
        audio_path=str(speech_file("generated_silence_10s_16k.wav")),
    )
    assert event_types(result) == ["conversation:created", "recording:started"]
    pool = await embedded_server.db()
    count = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE conversation_id = $1",
        uuid.UUID(result.conversation_id),
    )
    assert count == 0


async def test_noise_makes_no_turn(embedded_server: RunningServer, tmp_path: Path) -> None:
    noise = read_audio_file(str(speech_file("speechcommands_doing_the_dishes_noise.wav")), 16000)
    excerpt = tmp_path / "noise.wav"
    write_wav(excerpt, noise[: 12 * 16000], 16000)

    result = await place_call(
        embedded_server.url, token=embedded_server.token, audio_path=str(excerpt)
    )
    assert "message:received" not in event_types(result)
    assert (await embedded_server.health())["status"] == "ok"


async def test_monologue_is_cut_and_every_part_answered(
    tmp_path: Path, postgres_admin_dsn: str
) -> None:
    server = await start_server(tmp_path, postgres_admin_dsn, PARLEY_VAD_MAX_UTTERANCE_S="4")
    try:
        result = await place_call(server.url, token=server.token, audio_path=str(speech_file(JFK)))
    finally:
        await stop_server(server)

    received = events_of(result, "message:received")
    user_turns = [data for data in received if data["role"] == "user"]
    replies = [data for data in received if data["role"] == "assistant"]
    assert len(user_turns) >= 3, "11 s of speech with a 4 s maximum makes at least 3 turns"
    assert len(replies) == len(user_turns)
    # Cuts at the maximum length may cost a word at each boundary, never a phrase.
    error_rate = word_error_rate(JFK_WORDS, result.user_transcript)
    assert error_rate <= 0.25, f"{result.user_transcript!r}"


async def test_long_pauses_keep_every_word(embedded_server: RunningServer) -> None:
    # Kennedy pauses about a second between phrases: longer than the longest pause inside a
    # turn (vad_end_silence_ms), so the speech may arrive as several turns, but none of its
    # words may be lost and every turn is answered or cut by the next.
    result = await place_call(
        embedded_server.url, token=embedded_server.token, audio_path=str(speech_file(JFK))
    )

    received = events_of(result, "message:received")
    user_turns = [data for data in received if data["role"] == "user"]
    replies = [data for data in received if data["role"] == "assistant"]
    assert len(replies) == len(user_turns) >= 1
    # tiny.en may mishear a word ("as not"), but a lost phrase is five words or more.
    error_rate = word_error_rate(JFK_WORDS, result.user_transcript)
    assert error_rate <= 0.1, f"{result.user_transcript!r}"
