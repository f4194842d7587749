"""The event protocol over a WebSocket and a call's data channel: every round trip, replay
after a dropped connection, fan-out to several subscribers, concurrent senders, and the
conversation lifecycle. Replies come from a stand-in Ollama through the real client."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from media.frames import write_wav
from server.caller import place_call
from tests.conftest import RunningServer, speech_file
from tests.event_client import Event, EventClient
from tests.ollama_standin import OllamaStandIn, ScriptedReply

QUESTION = "librispeech_251-137823-0002_en.wav"
SLOW_REPLY = ScriptedReply(
    ["[happy] One", " two", " three.", " [calm] Four", " five", " six.", " Seven", " eight."],
    delay_s=0.25,
)


@pytest.fixture(scope="module")
def server(chat_server: RunningServer) -> RunningServer:
    return chat_server


@pytest.fixture(autouse=True)
def fresh_script(standin: OllamaStandIn) -> None:
    standin.replies.clear()
    standin.requests.clear()


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[EventClient]:
    connected = await EventClient.connect(server.url, server.token)
    yield connected
    await connected.close()


async def new_conversation(client: EventClient, **data: Any) -> str:
    created = await client.request("conversation:create", data or {"title": "Test talk"})
    assert created["type"] == "conversation:created", created
    conversation_id: str = created["data"]["conversationId"]
    return conversation_id


async def send_and_wait(client: EventClient, conversation_id: str, text: str) -> Event:
    """Send a text message; return the assistant's finished reply."""
    start = len(client.events)
    answer = await client.request(
        "message:send", {"conversationId": conversation_id, "content": text}
    )
    assert answer["type"] == "message:received", answer
    return await client.wait_for(
        lambda e: (
            e["type"] == "message:received"
            and e["data"]["role"] == "assistant"
            and e["data"]["conversationId"] == conversation_id
        ),
        60,
        start=start,
    )


def seqs_of(client: EventClient, conversation_id: str) -> list[int]:
    return [
        e["seq"]
        for e in client.events
        if "seq" in e and e["data"].get("conversationId") == conversation_id
    ]


async def stored_events(server: RunningServer, conversation_id: str) -> list[Any]:
    pool = await server.db()
    return list(
        await pool.fetch(
            "SELECT seq, event_type, event_data FROM conversation_events"
            " WHERE conversation_id = $1 ORDER BY seq",
            uuid.UUID(conversation_id),
        )
    )


# -- round trips


async def test_greeting_names_protocol_version(client: EventClient) -> None:
    ready = client.of_type("connection:ready")[0]

    assert ready["data"]["protocolVersion"] == "1.0"
    assert uuid.UUID(ready["data"]["userId"])


async def test_create_stores_conversation(client: EventClient, server: RunningServer) -> None:
    created = await client.request("conversation:create", {"title": "Ordering food", "level": "B1"})
    pool = await server.db()
    row = await pool.fetchrow(
        "SELECT conversations.*, users.name FROM conversations JOIN users ON users.id = user_id"
        " WHERE conversations.id = $1",
        uuid.UUID(created["data"]["conversationId"]),
    )

    assert created["type"] == "conversation:created"
    assert created["seq"] == 1
    assert created["data"]["title"] == "Ordering food"
    assert created["data"]["level"] == "B1"
    assert created["data"]["status"] == "active"
    assert row["title"] == "Ordering food"
    assert row["level"] == "B1"
    assert row["name"] == "tester"


async def test_template_sets_level_and_opening(client: EventClient) -> None:
    listed = await client.request("template:list")
    template = next(t for t in listed["data"]["templates"] if t["level"] == "B2")
    conversation_id = await new_conversation(client, templateId=template["templateId"])
    opening = await client.wait_for(
        lambda e: e["type"] == "message:received" and e["data"]["conversationId"] == conversation_id
    )
    loaded = await client.request("conversation:load", {"conversationId": conversation_id})

    assert listed["type"] == "template:listed"
    assert loaded["data"]["conversation"]["level"] == "B2"
    assert loaded["data"]["conversation"]["title"] == template["name"]
    spoken = await client.request(
        "audio:request", {"chunkId": opening["data"]["chunks"][0]["chunkId"]}
    )
    assert opening["data"]["role"] == "assistant"
    assert opening["data"]["content"] == template["initialMessage"]
    assert spoken["type"] == "chunk:audio-ready", "the opening line can be voiced on request"
    assert [m["content"] for m in loaded["data"]["messages"]] == [template["initialMessage"]]


async def test_text_message_gets_spoken_reply(
    client: EventClient, server: RunningServer, standin: OllamaStandIn
) -> None:
    conversation_id = await new_conversation(client)
    reply = await send_and_wait(client, conversation_id, "Hello, how are you?")
    await client.wait_for(
        lambda e: (
            e["type"] == "chunk:audio-ready"
            and e["data"]["chunkId"] == reply["data"]["chunks"][-1]["chunkId"]
        )
    )
    pool = await server.db()
    messages = await pool.fetch(
        "SELECT role, content, sequence_number FROM messages WHERE conversation_id = $1"
        " ORDER BY sequence_number",
        uuid.UUID(conversation_id),
    )
    chunks = await pool.fetch(
        "SELECT tts_status, audio_file_id FROM message_chunks WHERE message_id = $1",
        uuid.UUID(reply["data"]["messageId"]),
    )

    assert [(m["role"], m["sequence_number"]) for m in messages] == [("user", 1), ("assistant", 2)]
    assert messages[0]["content"] == "Hello, how are you?"
    assert reply["data"]["content"] == "Hello there! How are you today?"
    assert standin.requests[-1]["messages"][-1]["content"] == "Hello, how are you?"
    assert {c["tts_status"] for c in chunks} == {"completed"}
    async with aiohttp.ClientSession(headers=server.auth()) as http:
        for chunk in chunks:
            async with http.get(f"{server.url}/api/audio/{chunk['audio_file_id']}") as response:
                assert response.status == 200
                assert len(await response.read()) > 1000


async def test_every_event_is_stored_before_sent(
    client: EventClient, server: RunningServer
) -> None:
    conversation_id = await new_conversation(client)
    await send_and_wait(client, conversation_id, "Tell me something.")
    await asyncio.sleep(0.5)
    received = [
        e for e in client.events if e.get("data", {}).get("conversationId") == conversation_id
    ]
    stored = await stored_events(server, conversation_id)

    assert [e["seq"] for e in received] == list(range(1, len(stored) + 1))
    assert [(e["seq"], e["type"], e["data"]) for e in received] == [
        (row["seq"], row["event_type"], row["event_data"]) for row in stored
    ]


async def test_unspoken_reply_audio_on_request(client: EventClient, server: RunningServer) -> None:
    conversation_id = await new_conversation(client)
    await client.request(
        "message:send", {"conversationId": conversation_id, "content": "Hi!", "speak": False}
    )
    reply = await client.wait_for_reply(conversation_id)
    chunk = reply["data"]["chunks"][0]
    await asyncio.sleep(0.3)
    audio_ready_before = len(client.of_type("chunk:audio-ready"))
    answer = await client.request(
        "audio:request", {"chunkId": chunk["chunkId"], "messageId": reply["data"]["messageId"]}
    )
    pool = await server.db()
    row = await pool.fetchrow(
        "SELECT tts_status, audio_file_id FROM message_chunks WHERE id = $1",
        uuid.UUID(chunk["chunkId"]),
    )

    await asyncio.sleep(0.3)
    copies = [
        e for e in client.of_type("chunk:audio-ready") if e["data"]["chunkId"] == chunk["chunkId"]
    ]

    assert chunk["ttsStatus"] == "pending"
    assert audio_ready_before == 0, "speak=false synthesises nothing"
    assert answer["type"] == "chunk:audio-ready"
    assert "seq" in answer, "the new audio is logged, and the requester's copy answers it"
    assert copies == [answer], "one answer, not a logged copy and a direct one"
    assert answer["data"]["audioFileId"] == row["audio_file_id"]
    assert answer["data"]["duration"] > 0.3
    assert row["tts_status"] == "completed"


async def test_voice_message_is_transcribed(client: EventClient, server: RunningServer) -> None:
    conversation_id = await new_conversation(client)
    audio = base64.b64encode(speech_file(QUESTION).read_bytes()).decode()
    answer = await client.request(
        "message:send",
        {"conversationId": conversation_id, "inputMethod": "voice", "audio": audio},
        timeout_s=60,
    )
    reply = await client.wait_for_reply(conversation_id)
    pool = await server.db()
    stored = await pool.fetchrow(
        "SELECT content, stt_transcript, audio_file_id FROM messages WHERE id = $1",
        uuid.UUID(answer["data"]["messageId"]),
    )

    assert answer["type"] == "message:received"
    assert "testing routine" in answer["data"]["content"].lower()
    assert stored["stt_transcript"] == answer["data"]["content"]
    assert stored["audio_file_id"] == answer["data"]["audioFileId"]
    assert reply["data"]["content"]


async def test_list_history_and_search(client: EventClient) -> None:
    conversation_id = await new_conversation(client, title="Marmalade recipes")
    for text in ("I cook marmalade.", "Oranges are sweet.", "Lemons are sour."):
        await send_and_wait(client, conversation_id, text)
    listed = await client.request("conversation:list", {"limit": 2})
    newest = await client.request(
        "conversation:history", {"conversationId": conversation_id, "limit": 2}
    )
    older = await client.request(
        "conversation:history",
        {"conversationId": conversation_id, "limit": 2, "beforeSequence": 5},
    )
    forward = await client.request(
        "conversation:history", {"conversationId": conversation_id, "afterSequence": 4}
    )
    found = await client.request("conversation:search", {"query": "marmalade"})

    assert listed["type"] == "conversation:listed"
    assert len(listed["data"]["conversations"]) == 2
    assert listed["data"]["conversations"][0]["conversationId"] == conversation_id
    assert listed["data"]["total"] >= 2
    assert [m["sequenceNumber"] for m in newest["data"]["messages"]] == [6, 5]
    assert newest["data"]["hasMore"] is True
    assert [m["sequenceNumber"] for m in older["data"]["messages"]] == [4, 3]
    assert [m["sequenceNumber"] for m in forward["data"]["messages"]] == [5, 6]
    assert forward["data"]["hasMore"] is False
    kinds = {(r["kind"], r["conversationId"]) for r in found["data"]["results"]}
    assert ("conversation", conversation_id) in kinds
    assert ("message", conversation_id) in kinds
    assert any("<mark>marmalade</mark>" in r["snippet"].lower() for r in found["data"]["results"])


# -- replay and fan-out


async def test_reconnect_replays_missed_events(client: EventClient, server: RunningServer) -> None:
    conversation_id = await new_conversation(client)
    late = await EventClient.connect(server.url, server.token)
    await late.request("conversation:load", {"conversationId": conversation_id})
    seen = max(seqs_of(late, conversation_id) or [1])
    await late.close()

    await send_and_wait(client, conversation_id, "Are you there?")
    await asyncio.sleep(0.5)
    back = await EventClient.connect(server.url, server.token)
    try:
        loaded = await back.request(
            "conversation:load", {"conversationId": conversation_id, "afterSeq": seen}
        )
        last = (await stored_events(server, conversation_id))[-1]["seq"]
        future = await back.request(
            "conversation:load", {"conversationId": conversation_id, "afterSeq": last + 5}
        )
        assert future["data"]["code"] == "invalid_field", "afterSeq past the log is rejected"
        await back.wait_for(lambda e: e.get("seq") == last)
        await send_and_wait(client, conversation_id, "Still there?")
        await back.wait_for_reply(conversation_id)
        await asyncio.sleep(0.5)
        stored = [row["seq"] for row in await stored_events(server, conversation_id)]

        assert loaded["type"] == "conversation:loaded"
        assert seqs_of(back, conversation_id) == [s for s in stored if s > seen]
    finally:
        await back.close()


async def test_drop_mid_reply_replays_once(
    client: EventClient, server: RunningServer, standin: OllamaStandIn
) -> None:
    conversation_id = await new_conversation(client)
    watcher = await EventClient.connect(server.url, server.token)
    await watcher.request("conversation:load", {"conversationId": conversation_id})
    standin.replies.append(SLOW_REPLY)
    await client.request("message:send", {"conversationId": conversation_id, "content": "Count!"})
    await watcher.wait_for(lambda e: e["type"] == "chunk:generated")
    seen = max(seqs_of(watcher, conversation_id))
    before_drop = list(watcher.events)
    await watcher.close()

    back = await EventClient.connect(server.url, server.token)
    try:
        await back.request(
            "conversation:load", {"conversationId": conversation_id, "afterSeq": seen}
        )
        reply = await back.wait_for_reply(conversation_id)
        await asyncio.sleep(0.5)
        stored = [row["seq"] for row in await stored_events(server, conversation_id)]
        chunks_seen = [
            e["data"]["chunkIndex"]
            for e in [*before_drop, *back.events]
            if e["type"] == "chunk:generated"
        ]

        assert seqs_of(back, conversation_id) == [s for s in stored if s > seen]
        assert chunks_seen == list(range(len(reply["data"]["chunks"])))
    finally:
        await back.close()


async def test_two_subscribers_get_every_event(client: EventClient, server: RunningServer) -> None:
    conversation_id = await new_conversation(client)
    second_tab = await EventClient.connect(server.url, server.token)
    try:
        await second_tab.request("conversation:load", {"conversationId": conversation_id})
        request_id = await client.send(
            "message:send", {"conversationId": conversation_id, "content": "Hello both"}
        )
        await client.wait_for_reply(conversation_id)
        await second_tab.wait_for_reply(conversation_id)
        await asyncio.sleep(0.5)
        first_seqs = [s for s in seqs_of(client, conversation_id) if s > 1]
        second_seqs = seqs_of(second_tab, conversation_id)
        user_copies = [
            (tab, e)
            for tab in (client, second_tab)
            for e in tab.of_type("message:received")
            if e["data"]["role"] == "user" and e["data"]["conversationId"] == conversation_id
        ]

        assert first_seqs == second_seqs
        assert len(second_seqs) >= 4
        assert [e.get("requestId") for tab, e in user_copies if tab is client] == [request_id]
        assert [e.get("requestId") for tab, e in user_copies if tab is second_tab] == [None]
    finally:
        await second_tab.close()


async def test_concurrent_senders_keep_sequences(
    client: EventClient, server: RunningServer
) -> None:
    conversation_id = await new_conversation(client)
    other = await EventClient.connect(server.url, server.token)
    try:
        await other.request("conversation:load", {"conversationId": conversation_id})

        async def send_five(sender: EventClient, name: str) -> None:
            for number in range(5):
                await sender.send(
                    "message:send",
                    {"conversationId": conversation_id, "content": f"{name} {number}"},
                )

        await asyncio.gather(send_five(client, "first"), send_five(other, "second"))
        await client.wait_for(
            lambda e: (
                e["type"] == "message:received"
                and e["data"]["role"] == "assistant"
                and e["data"].get("sequenceNumber") == 20
            ),
            90,
        )
        pool = await server.db()
        numbers = await pool.fetch(
            "SELECT role, sequence_number FROM messages WHERE conversation_id = $1"
            " ORDER BY sequence_number",
            uuid.UUID(conversation_id),
        )
        events = [row["seq"] for row in await stored_events(server, conversation_id)]

        assert [row["sequence_number"] for row in numbers] == list(range(1, 21))
        assert sum(row["role"] == "user" for row in numbers) == 10
        assert events == list(range(1, len(events) + 1))
    finally:
        await other.close()


# -- lifecycle and settings


async def test_lifecycle_allows_only_design_moves(
    client: EventClient, server: RunningServer
) -> None:
    conversation_id = await new_conversation(client)

    async def move(status: str) -> Event:
        return await client.request(
            "conversation:set-status", {"conversationId": conversation_id, "status": status}
        )

    paused = await move("paused")
    resumed_by_message = await client.request(
        "message:send", {"conversationId": conversation_id, "content": "Back again"}
    )
    await client.wait_for_reply(conversation_id)
    status_events = [
        e["data"]["status"]
        for e in client.of_type("conversation:status-changed")
        if e["data"]["conversationId"] == conversation_id
    ]
    completed = await move("completed")
    closed = await client.request(
        "message:send", {"conversationId": conversation_id, "content": "Anyone?"}
    )
    back_to_active = await move("active")
    archived = await move("archived")
    unarchived = await move("active")
    pool = await server.db()
    row = await pool.fetchrow(
        "SELECT status, updated_at, last_message_at, created_at FROM conversations WHERE id = $1",
        uuid.UUID(conversation_id),
    )

    assert paused["type"] == "conversation:status-changed"
    assert paused["data"]["previousStatus"] == "active"
    assert resumed_by_message["type"] == "message:received"
    assert status_events == ["paused", "active"], "a message resumes a paused conversation"
    assert completed["data"]["status"] == "completed"
    assert closed["data"]["code"] == "conversation_closed"
    assert back_to_active["data"]["code"] == "invalid_transition"
    assert archived["data"]["status"] == "archived"
    assert unarchived["data"]["code"] == "invalid_transition"
    assert row["status"] == "archived"
    assert row["updated_at"] > row["last_message_at"] > row["created_at"]


async def test_settings_change_shapes_next_reply(
    client: EventClient, server: RunningServer, standin: OllamaStandIn
) -> None:
    conversation_id = await new_conversation(client, level="A1")
    updated = await client.request(
        "conversation:update",
        {
            "conversationId": conversation_id,
            "level": "C1",
            "aiSettings": {"temperature": 0.2},
            "memoryStrategy": "summarization",
        },
    )
    await send_and_wait(client, conversation_id, "Let's talk.")
    system_prompt = standin.requests[-1]["messages"][0]["content"]
    options = standin.requests[-1].get("options", {})
    pool = await server.db()
    row = await pool.fetchrow(
        "SELECT level, ai_settings, memory_strategy FROM conversations WHERE id = $1",
        uuid.UUID(conversation_id),
    )

    assert updated["type"] == "conversation:updated"
    assert updated["data"]["changed"] == ["aiSettings", "level", "memoryStrategy"]
    assert "C1" in system_prompt
    assert options.get("temperature") == 0.2
    assert row["level"] == "C1"
    assert row["ai_settings"] == {"temperature": 0.2}
    assert row["memory_strategy"] == "summarization"


async def test_delete_removes_rows_and_files(client: EventClient, server: RunningServer) -> None:
    conversation_id = await new_conversation(client)
    reply = await send_and_wait(client, conversation_id, "Say something.")
    await client.wait_for(
        lambda e: (
            e["type"] == "chunk:audio-ready"
            and e["data"]["chunkId"] == reply["data"]["chunks"][-1]["chunkId"]
        )
    )
    pool = await server.db()
    file_ids = [
        row["audio_file_id"]
        for row in await pool.fetch(
            "SELECT audio_file_id FROM message_chunks WHERE message_id = $1",
            uuid.UUID(reply["data"]["messageId"]),
        )
    ]
    paths = [server.data_dir / "audio" / f[:2] / f"{f}.wav" for f in file_ids]
    existed = [path.is_file() for path in paths]
    answer = await client.request("conversation:delete", {"conversationId": conversation_id})
    left = await pool.fetchval(
        "SELECT count(*) FROM conversation_events WHERE conversation_id = $1",
        uuid.UUID(conversation_id),
    )

    assert answer["type"] == "conversation:deleted"
    assert existed and all(existed)
    assert not any(path.is_file() for path in paths)
    assert left == 0


# -- the data channel carries the same protocol


def silence_file(tmp_path: Path, seconds: float) -> Path:
    path = tmp_path / "silence.wav"
    write_wav(path, np.zeros(int(seconds * 16000), dtype=np.int16), 16000)
    return path


async def test_channel_text_reply_is_spoken_in_call(
    client: EventClient, server: RunningServer, tmp_path: Path
) -> None:
    conversation_id = await new_conversation(client)
    channel_messages = [
        '{"type": "conversation:list", "requestId": "list-1"}',
        '{"type": "message:send", "requestId": "send-1", "data": {"conversationId": "'
        + conversation_id
        + '", "content": "Hello from the call"}}',
    ]
    result = await place_call(
        server.url,
        token=server.token,
        audio_path=str(silence_file(tmp_path, 5.0)),
        conversation_id=conversation_id,
        channel_messages=channel_messages,
    )
    by_request = {e.get("requestId"): e for e in result.events if e.get("requestId")}
    chunk_texts = [e["data"]["text"] for e in result.events if e["type"] == "chunk:generated"]
    web_copy = await client.wait_for_reply(conversation_id)

    assert by_request["list-1"]["type"] == "conversation:listed"
    assert by_request["send-1"]["type"] == "message:received"
    assert by_request["send-1"]["data"]["content"] == "Hello from the call"
    assert " ".join(chunk_texts) == "Hello there! How are you today?"
    assert result.reply_audio_seconds > 1.0, "the reply is spoken on the call's audio track"
    assert web_copy["data"]["content"] == "Hello there! How are you today?"


async def test_unsubscribe_stops_events(client: EventClient, server: RunningServer) -> None:
    conversation_id = await new_conversation(client)
    other = await EventClient.connect(server.url, server.token)
    try:
        await other.request("conversation:load", {"conversationId": conversation_id})
        answer = await other.request(
            "conversation:unsubscribe", {"conversationId": conversation_id}
        )
        await send_and_wait(client, conversation_id, "Is anyone listening?")
        await asyncio.sleep(0.5)

        assert answer["type"] == "conversation:unsubscribed"
        assert seqs_of(other, conversation_id) == [], "no event after unsubscribing"
    finally:
        await other.close()


async def test_channel_answers_every_event(
    client: EventClient, server: RunningServer, tmp_path: Path
) -> None:
    """Every client event type sent on a call's data channel gets its response there."""
    conversation_id = await new_conversation(client, title="Channel round trips")
    await client.request(
        "message:send", {"conversationId": conversation_id, "content": "Hi", "speak": False}
    )
    reply = await client.wait_for_reply(conversation_id)
    target = await new_conversation(client, title="To delete")
    chunk_id = reply["data"]["chunks"][0]["chunkId"]
    requests: list[tuple[str, dict[str, Any], str]] = [
        ("connection:ping", {}, "connection:pong"),
        ("template:list", {}, "template:listed"),
        ("conversation:create", {"title": "From the channel"}, "conversation:created"),
        ("conversation:list", {}, "conversation:listed"),
        ("conversation:load", {"conversationId": conversation_id}, "conversation:loaded"),
        (
            "conversation:history",
            {"conversationId": conversation_id},
            "conversation:history-loaded",
        ),
        ("conversation:search", {"query": "channel"}, "conversation:search-results"),
        ("audio:request", {"chunkId": chunk_id}, "chunk:audio-ready"),
        (
            "conversation:update",
            {"conversationId": conversation_id, "title": "Renamed"},
            "conversation:updated",
        ),
        (
            "message:send",
            {"conversationId": conversation_id, "content": "Once more", "speak": False},
            "message:received",
        ),
        (
            "conversation:set-status",
            {"conversationId": target, "status": "paused"},
            "conversation:status-changed",
        ),
        ("conversation:unsubscribe", {"conversationId": target}, "conversation:unsubscribed"),
        ("conversation:delete", {"conversationId": target}, "conversation:deleted"),
    ]
    messages = [
        json.dumps({"type": event_type, "requestId": f"ch-{index}", "data": data})
        for index, (event_type, data, _answer) in enumerate(requests)
    ]
    result = await place_call(
        server.url,
        token=server.token,
        audio_path=str(silence_file(tmp_path, 4.0)),
        channel_messages=messages,
    )
    answers = {e["requestId"]: e for e in result.events if e.get("requestId")}

    for index, (event_type, _data, answer_type) in enumerate(requests):
        answer = answers.get(f"ch-{index}")
        assert answer is not None, f"{event_type} got no answer on the data channel"
        assert (event_type, answer["type"]) == (event_type, answer_type)
