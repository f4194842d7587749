"""Calls whose replies come through the real `ollama` client, against a stand-in Ollama on loopback:
tagged chunks, a chunk that piper cannot speak, a model that dies mid-reply, a caller who
hangs up mid-reply, and no model at all."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.frames import read_audio_file, write_wav
from server.caller import CallResult, place_call
from tests.conftest import RunningServer, free_port, speech_file, start_server, stop_server
from tests.ollama_standin import MODEL, OllamaStandIn, ScriptedReply

SHORT_QUESTION = "librispeech_251-137823-0002_en.wav"
SECOND_QUESTION = "librispeech_251-137823-0003_en.wav"


@pytest.fixture(scope="module")
async def ollama_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_dsn: str, standin: OllamaStandIn
) -> AsyncIterator[RunningServer]:
    server = await start_server(
        tmp_path_factory.mktemp("ollama-server"),
        postgres_admin_dsn,
        OLLAMA_HOST=standin.url,
        PARLEY_OLLAMA_MODEL=MODEL,
    )
    yield server
    await stop_server(server)


@pytest.fixture(autouse=True)
def fresh_script(standin: OllamaStandIn) -> None:
    standin.replies.clear()
    standin.requests.clear()


def events_of(result: CallResult, event_type: str) -> list[dict[str, Any]]:
    return [event["data"] for event in result.events if event["type"] == event_type]


async def fetch_messages(server: RunningServer, conversation_id: str) -> list[Any]:
    pool = await server.db()
    return list(
        await pool.fetch(
            "SELECT * FROM messages WHERE conversation_id = $1 ORDER BY sequence_number",
            uuid.UUID(conversation_id),
        )
    )


async def fetch_chunks(server: RunningServer, message_id: uuid.UUID) -> list[Any]:
    pool = await server.db()
    return list(
        await pool.fetch(
            "SELECT * FROM message_chunks WHERE message_id = $1 ORDER BY chunk_index", message_id
        )
    )


def two_questions(tmp_path: Path) -> Path:
    """One file with two questions 1.5 s apart: two turns in one call."""
    first = read_audio_file(str(speech_file(SHORT_QUESTION)), 16000)
    second = read_audio_file(str(speech_file(SECOND_QUESTION)), 16000)
    gap = np.zeros(int(1.5 * 16000), dtype=np.int16)
    path = tmp_path / "two-questions.wav"
    write_wav(path, np.concatenate([first, gap, second]), 16000)
    return path


async def test_ollama_is_chosen_when_it_answers(ollama_server: RunningServer) -> None:
    health = await ollama_server.health()
    assert health["llm"] == f"ollama:{MODEL}"


async def test_ollama_reply_becomes_tagged_chunks(
    ollama_server: RunningServer, standin: OllamaStandIn
) -> None:
    standin.replies.append(
        ScriptedReply(
            ["[happy] Well", " done", "! [cur", "ious] What is your *favourite*", " food?"]
        )
    )
    result = await place_call(
        ollama_server.url, token=ollama_server.token, audio_path=str(speech_file(SHORT_QUESTION))
    )

    assert "testing routine" in result.user_transcript.lower()
    assert result.reply_text == "Well done! What is your favourite food?"
    assert result.reply_audio_seconds >= 1.0
    chunks = events_of(result, "chunk:generated")
    assert [c["text"] for c in chunks] == ["Well done!", "What is your favourite food?"]
    assert [c["emotion"] for c in chunks] == ["happy", "curious"]
    assert [c["icon"] for c in chunks] == ["😊", "🤔"]
    assert [c["emphasis"] for c in chunks] == [True, True]
    assert [c["pause"] for c in chunks] == [0.4, 0.0]

    request = standin.requests[-1]
    assert request["model"] == MODEL
    assert request["stream"] is True
    assert request["messages"][0]["role"] == "system"
    assert "A1" in request["messages"][0]["content"]
    assert request["messages"][-1] == {"role": "user", "content": result.user_transcript}

    messages = await fetch_messages(ollama_server, result.conversation_id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["metadata"]["model"] == f"ollama:{MODEL}"
    stored = await fetch_chunks(ollama_server, messages[1]["id"])
    assert [row["emotion"] for row in stored] == ["happy", "curious"]
    assert [row["tts_status"] for row in stored] == ["completed", "completed"]


async def test_unspeakable_chunk_fails_alone(
    ollama_server: RunningServer, standin: OllamaStandIn
) -> None:
    # Arabic-Indic digits: piper's English voice produces no audio for them.
    standin.replies.append(
        ScriptedReply(["[happy] Good work.", " ١٢٣.", " [calm] Let us count again", " together."])
    )
    result = await place_call(
        ollama_server.url, token=ollama_server.token, audio_path=str(speech_file(SHORT_QUESTION))
    )

    errors = events_of(result, "conversation:error")
    assert [e["code"] for e in errors] == ["tts_failed"]
    chunks = events_of(result, "chunk:generated")
    assert [c["text"] for c in chunks] == ["Good work.", "١٢٣.", "Let us count again together."]
    assert errors[0]["chunkId"] == chunks[1]["chunkId"]
    ready = [c["chunkId"] for c in events_of(result, "chunk:audio-ready")]
    assert ready == [chunks[0]["chunkId"], chunks[2]["chunkId"]]
    assert result.reply_audio_seconds >= 1.5

    messages = await fetch_messages(ollama_server, result.conversation_id)
    stored = await fetch_chunks(ollama_server, messages[1]["id"])
    assert [row["tts_status"] for row in stored] == ["completed", "failed", "completed"]
    assert stored[1]["audio_file_id"] is None


async def test_model_failure_mid_reply_keeps_call_going(
    ollama_server: RunningServer, standin: OllamaStandIn, tmp_path: Path
) -> None:
    standin.replies.append(ScriptedReply(["[happy] Hello", " there!", " I am"], fail_after=2))
    standin.replies.append(ScriptedReply(["[calm] Yes,", " I heard you this time."]))
    result = await place_call(
        ollama_server.url, token=ollama_server.token, audio_path=str(two_questions(tmp_path))
    )

    errors = events_of(result, "conversation:error")
    assert [e["code"] for e in errors] == ["llm_unavailable"]
    received = events_of(result, "message:received")
    roles = [data["role"] for data in received]
    assert roles.count("user") == 2, "both questions are heard in the same call"
    assert received[-1]["role"] == "assistant"
    assert received[-1]["content"] == "Yes, I heard you this time."

    messages = await fetch_messages(ollama_server, result.conversation_id)
    users = [m for m in messages if m["role"] == "user"]
    assert len(users) == 2
    assert all(m["audio_file_id"] for m in users)
    failed = [
        m for m in messages if m["role"] == "assistant" and m["metadata"]["status"] == "failed"
    ]
    assert len(failed) <= 1, "a reply cut by the model keeps what was already spoken"


async def test_hang_up_mid_reply_stores_true_status(
    ollama_server: RunningServer, standin: OllamaStandIn
) -> None:
    sentences = [f" [calm] This is sentence number {n}." for n in range(1, 13)]
    standin.replies.append(ScriptedReply(sentences, delay_s=0.4))
    result = await place_call(
        ollama_server.url,
        token=ollama_server.token,
        audio_path=str(speech_file(SHORT_QUESTION)),
        hang_up_when=lambda events: any(e["type"] == "chunk:audio-ready" for e in events),
    )
    health = await ollama_server.wait_for_idle()
    assert health["calls"] == 0
    assert health["callThreads"] == 0
    assert health["callTasks"] == 0

    messages = await fetch_messages(ollama_server, result.conversation_id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assistant = messages[1]
    assert assistant["metadata"]["status"] == "interrupted"
    stored = await fetch_chunks(ollama_server, assistant["id"])
    statuses = [row["tts_status"] for row in stored]
    assert 1 <= len(stored) < len(sentences)
    assert statuses[0] == "completed"
    assert "processing" not in statuses
    assert set(statuses) <= {"completed", "pending"}
    for row in stored:
        assert (row["audio_file_id"] is not None) == (row["tts_status"] == "completed")
    # The caller hung up: the content is what it heard, the whole text stays in metadata.
    generated = " ".join(row["text"] for row in stored)
    heard = await (await ollama_server.db()).fetch(
        "SELECT playout_status, heard_text FROM message_chunks"
        " WHERE message_id = $1 ORDER BY chunk_index",
        assistant["id"],
    )
    assert {row["playout_status"] for row in heard} <= {"spoken", "cut", "unspoken"}
    assert assistant["content"] == " ".join(r["heard_text"] for r in heard if r["heard_text"])
    assert assistant["metadata"].get("generatedContent", assistant["content"]) == generated
    assert assistant["metadata"]["interruption"]["reason"] == "call-ended"


async def test_no_model_answers_llm_unavailable(tmp_path: Path, postgres_admin_dsn: str) -> None:
    server = await start_server(
        tmp_path,
        postgres_admin_dsn,
        PARLEY_LLM_BACKEND="ollama",
        OLLAMA_HOST=f"http://127.0.0.1:{free_port()}",
    )
    try:
        assert (await server.health())["llm"] == "unavailable"
        result = await place_call(
            server.url, token=server.token, audio_path=str(speech_file(SHORT_QUESTION))
        )
        messages = await fetch_messages(server, result.conversation_id)
        health = await server.health()
    finally:
        await stop_server(server)

    # memory:context-updated is sent beside the reply's first events, in either order.
    types = [e["type"] for e in result.events]
    assert types.count("memory:context-updated") == 1
    # Interim transcripts are live only: the logged events are what this checks.
    events = [e for e in result.events if e["type"] != "memory:context-updated" and "seq" in e]
    assert [e["type"] for e in events] == [
        "conversation:created",
        "recording:started",
        "message:received",
        "conversation:error",
    ]
    error = events[3]["data"]
    assert error["code"] == "llm_unavailable"
    assert "Ollama" in error["error"]
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"] == result.user_transcript
    assert health["status"] == "degraded"
