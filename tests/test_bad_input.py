"""Malformed client events on `/ws` and on a call's data channel.

Every bad input gets one `conversation:error` with a stable code (echoing the requestId when
the input carries a valid one), the connection stays open, and no stored row changes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import uuid
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from server.caller import place_call
from tests.conftest import RunningServer, speech_file, start_server, stop_server
from tests.event_client import Event, EventClient
from tests.ollama_standin import MODEL, OllamaStandIn

# Small limits keep the oversized inputs cheap to build and send.
MAX_MESSAGE_CHARS = 200
MAX_EVENT_BYTES = 4096
MAX_VOICE_EVENT_BYTES = 64 * 1024
# The server's default rate limit is 20 events a second in bursts of 40, so a full burst
# is available again 2 s after a flood stops.
FLOOD_EVENTS = 300
FLOOD_PAUSE_S = 2.5
SHORT_QUESTION = "librispeech_251-137823-0002_en.wav"

# Every stored row that a rejected event must leave alone, per table. The rows of the
# conversations in $1 are left out, because a call stores its own conversation as it runs.
SNAPSHOT_QUERIES = {
    "conversations": "SELECT * FROM conversations WHERE id <> ALL($1::uuid[]) ORDER BY id",
    "messages": "SELECT * FROM messages WHERE conversation_id <> ALL($1::uuid[]) ORDER BY id",
    "message_chunks": (
        "SELECT c.* FROM message_chunks c JOIN messages m ON m.id = c.message_id"
        " WHERE m.conversation_id <> ALL($1::uuid[]) ORDER BY c.id"
    ),
    "conversation_events": (
        "SELECT * FROM conversation_events WHERE conversation_id <> ALL($1::uuid[]) ORDER BY id"
    ),
}

Snapshot = dict[str, list[tuple[Any, ...]]]


@dataclass(frozen=True)
class World:
    """Conversations stored before the tests run, for the inputs to point at."""

    open_id: str
    open_chunk_id: str
    completed_id: str
    archived_id: str
    # A conversation, message and chunk of a second user.
    other_id: str
    other_message_id: str
    other_chunk_id: str


@pytest.fixture(scope="module")
async def standin() -> AsyncIterator[OllamaStandIn]:
    ollama = OllamaStandIn()
    await ollama.start()
    yield ollama
    await ollama.stop()


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_dsn: str, standin: OllamaStandIn
) -> AsyncIterator[RunningServer]:
    running = await start_server(
        tmp_path_factory.mktemp("bad-input"),
        postgres_admin_dsn,
        OLLAMA_HOST=standin.url,
        PARLEY_OLLAMA_MODEL=MODEL,
        PARLEY_MAX_MESSAGE_CHARS=str(MAX_MESSAGE_CHARS),
        PARLEY_MAX_EVENT_BYTES=str(MAX_EVENT_BYTES),
        PARLEY_MAX_VOICE_EVENT_BYTES=str(MAX_VOICE_EVENT_BYTES),
    )
    yield running
    await stop_server(running)


async def converse(client: EventClient, title: str) -> tuple[str, Event]:
    """Create a conversation with one text exchange and return its id and the reply event."""
    created = await client.request("conversation:create", {"title": title, "level": "B1"})
    assert created["type"] == "conversation:created", created
    conversation_id: str = created["data"]["conversationId"]
    sent = await client.request(
        "message:send",
        {"conversationId": conversation_id, "content": "Hello, tutor!", "speak": False},
    )
    assert sent["type"] == "message:received", sent
    reply = await client.wait_for_reply(conversation_id)
    assert reply["data"]["chunks"], reply
    return conversation_id, reply


async def set_status(client: EventClient, conversation_id: str, status: str) -> None:
    answer = await client.request(
        "conversation:set-status", {"conversationId": conversation_id, "status": status}
    )
    assert answer["type"] == "conversation:status-changed", answer


@pytest.fixture(scope="module")
async def world(server: RunningServer) -> World:
    tester = await EventClient.connect(server.url, server.token)
    other = await EventClient.connect(server.url, await server.create_user("other-learner"))
    try:
        open_id, open_reply = await converse(tester, "Open")
        completed_id, _ = await converse(tester, "Completed")
        await set_status(tester, completed_id, "completed")
        archived_id, _ = await converse(tester, "Archived")
        await set_status(tester, archived_id, "completed")
        await set_status(tester, archived_id, "archived")
        other_id, other_reply = await converse(other, "Someone else's")
    finally:
        await tester.close()
        await other.close()
    return World(
        open_id=open_id,
        open_chunk_id=open_reply["data"]["chunks"][0]["chunkId"],
        completed_id=completed_id,
        archived_id=archived_id,
        other_id=other_id,
        other_message_id=other_reply["data"]["messageId"],
        other_chunk_id=other_reply["data"]["chunks"][0]["chunkId"],
    )


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[EventClient]:
    """A fresh connection for each test, so one test's rate limit never reaches the next."""
    connection = await EventClient.connect(server.url, server.token)
    yield connection
    await connection.close()


async def snapshot(server: RunningServer, exclude: Sequence[str] = ()) -> Snapshot:
    pool = await server.db()
    excluded = [uuid.UUID(conversation_id) for conversation_id in exclude]
    return {
        table: [tuple(row) for row in await pool.fetch(query, excluded)]
        for table, query in SNAPSHOT_QUERIES.items()
    }


def assert_unchanged(before: Snapshot, after: Snapshot) -> None:
    for table, rows in before.items():
        assert after[table] == rows, f"rows of {table} changed"


async def send_expecting_error(client: EventClient, raw: str | bytes) -> Event:
    start = len(client.events)
    await client.send_raw(raw)
    return await client.wait_for(
        lambda event: event["type"] == "conversation:error", timeout_s=15, start=start
    )


# -- building inputs


def event(event_type: Any, data: Any = None, request_id: Any = None, **fields: Any) -> str:
    """Encode an event as JSON text, leaving out data and request_id when they are None."""
    body: dict[str, Any] = {"type": event_type}
    if request_id is not None:
        body["requestId"] = request_id
    if data is not None:
        body["data"] = data
    body.update(fields)
    return json.dumps(body)


def wav_bytes(duration_s: float, rate_hz: int = 16000) -> bytes:
    """A mono 16-bit WAV file of a 440 Hz tone."""
    times_s = np.arange(int(duration_s * rate_hz)) / rate_hz
    samples = (8000 * np.sin(2 * np.pi * 440 * times_s)).astype(np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


def base64_text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# Seeded, so every run sends the same bytes and FFmpeg rejects them the same way.
RANDOM_BYTES = random.Random(1234).randbytes(3000)
TEXT_FILE = b"Shopping list:\n- eggs\n- milk\n- bread\n" * 30
NOT_BASE64 = "this is not base64!"


def voice(world: World, audio: str, request_id: str) -> str:
    data = {"conversationId": world.open_id, "inputMethod": "voice", "audio": audio}
    return event("message:send", data, request_id)


def text(conversation_id: str, content: Any, request_id: str, **data: Any) -> str:
    return event(
        "message:send", {"conversationId": conversation_id, "content": content, **data}, request_id
    )


def padded_ping(request_id: str) -> str:
    """A valid ping made larger than MAX_EVENT_BYTES with whitespace between its fields."""
    return (
        f'{{"type": "connection:ping", "requestId": "{request_id}",'
        + " " * (MAX_EVENT_BYTES + 100)
        + '"data": {}}'
    )


def oversized_voice(world: World) -> str:
    audio = "A" * (MAX_VOICE_EVENT_BYTES + 1000)
    return event(
        "message:send", {"conversationId": world.open_id, "inputMethod": "voice", "audio": audio}
    )


def nested_title(depth: int) -> str:
    title = "[" * depth + "]" * depth
    return f'{{"type": "conversation:create", "data": {{"title": {title}}}}}'


# -- the table: name, input built from the world and the name, code, requestId echoed

Build = Callable[[World, str], str | bytes]


def case(name: str, build: Build, code: str, *, echoed: bool = True) -> Any:
    """Return one table row. An input with a valid requestId uses the case name as its
    requestId, so the error must echo the name. echoed=False marks inputs without one."""
    return pytest.param(name, build, code, echoed, id=name)


# No row has this id.
UNKNOWN_ID = str(uuid.UUID(int=0xBAD))

BAD_INPUTS = [
    # not an event at all
    case("not-json", lambda w, r: "{not json", "bad_json", echoed=False),
    case("empty-text", lambda w, r: "", "bad_json", echoed=False),
    case(
        "trailing-garbage", lambda w, r: '{"type": "connection:ping"} x', "bad_json", echoed=False
    ),
    case("json-array", lambda w, r: '["connection:ping"]', "bad_json", echoed=False),
    case("json-string", lambda w, r: '"connection:ping"', "bad_json", echoed=False),
    case("json-number", lambda w, r: "42", "bad_json", echoed=False),
    case("json-null", lambda w, r: "null", "bad_json", echoed=False),
    case("binary-frame", lambda w, r: b"\x00\x01binary", "bad_json", echoed=False),
    case("deeply-nested", lambda w, r: "[" * 1000 + "]" * 1000, "bad_json", echoed=False),
    case("deeply-nested-data", lambda w, r: nested_title(1000), "bad_json", echoed=False),
    # the envelope
    case("missing-type", lambda w, r: json.dumps({"requestId": r, "data": {}}), "invalid_field"),
    # A `type` that is not a string is a wrong field type, not an unsupported event type.
    case("type-number", lambda w, r: event(5, {}, r), "invalid_field"),
    case("type-null", lambda w, r: event(None, request_id=r, data={}), "invalid_field"),
    case("unknown-type", lambda w, r: event("conversation:explode", {}, r), "unknown_event"),
    case("long-unknown-type", lambda w, r: event("x" * 1000, {}, r), "unknown_event"),
    case(
        "unknown-top-field",
        lambda w, r: event("connection:ping", {}, r, priority="high"),
        "invalid_field",
    ),
    case("unknown-data-field", lambda w, r: event("connection:ping", {"x": 1}, r), "invalid_field"),
    case("data-array", lambda w, r: event("conversation:list", [1], r), "invalid_field"),
    case("data-string", lambda w, r: event("connection:ping", "hi", r), "invalid_field"),
    case(
        "data-null",
        lambda w, r: json.dumps({"type": "conversation:load", "requestId": r, "data": None}),
        "invalid_field",
    ),
    case(
        "request-id-too-long",
        lambda w, r: event("connection:ping", {}, "r" * 65),
        "invalid_field",
        echoed=False,
    ),
    case(
        "request-id-control-char",
        lambda w, r: event("connection:ping", {}, "r\n1"),
        "invalid_field",
        echoed=False,
    ),
    case(
        "request-id-number",
        lambda w, r: event("connection:ping", {}, 7),
        "invalid_field",
        echoed=False,
    ),
    # field types and values
    case("content-number", lambda w, r: text(w.open_id, 42, r), "invalid_field"),
    case("speak-string", lambda w, r: text(w.open_id, "Hi", r, speak="yes"), "invalid_field"),
    case(
        "limit-string", lambda w, r: event("conversation:list", {"limit": "5"}, r), "invalid_field"
    ),
    case("limit-zero", lambda w, r: event("conversation:list", {"limit": 0}, r), "invalid_field"),
    case(
        "after-seq-float",
        lambda w, r: event("conversation:load", {"conversationId": w.open_id, "afterSeq": 1.5}, r),
        "invalid_field",
    ),
    case(
        "level-z9",
        lambda w, r: event("conversation:create", {"title": "Z", "level": "Z9"}, r),
        "invalid_field",
    ),
    case(
        "level-lowercase",
        lambda w, r: event("conversation:update", {"conversationId": w.open_id, "level": "b1"}, r),
        "invalid_field",
    ),
    case(
        "unknown-status",
        lambda w, r: event(
            "conversation:set-status", {"conversationId": w.open_id, "status": "deleted"}, r
        ),
        "invalid_field",
    ),
    case(
        "conversation-id-x",
        lambda w, r: event("conversation:load", {"conversationId": "x"}, r),
        "invalid_field",
    ),
    case(
        "conversation-id-int",
        lambda w, r: event("conversation:load", {"conversationId": 5}, r),
        "invalid_field",
    ),
    case(
        "conversation-id-empty",
        lambda w, r: event("conversation:load", {"conversationId": ""}, r),
        "invalid_field",
    ),
    case(
        "update-without-settings",
        lambda w, r: event("conversation:update", {"conversationId": w.open_id}, r),
        "invalid_field",
    ),
    case(
        "history-both-directions",
        lambda w, r: event(
            "conversation:history",
            {"conversationId": w.open_id, "beforeSequence": 2, "afterSequence": 0},
            r,
        ),
        "invalid_field",
    ),
    case(
        "search-empty-query",
        lambda w, r: event("conversation:search", {"query": ""}, r),
        "invalid_field",
    ),
    # message:send content
    case(
        "send-without-content",
        lambda w, r: event("message:send", {"conversationId": w.open_id}, r),
        "invalid_field",
    ),
    case(
        "text-with-audio",
        lambda w, r: text(w.open_id, "Hi", r, audio=base64_text(wav_bytes(1.0))),
        "invalid_field",
    ),
    case(
        "voice-without-audio",
        lambda w, r: event(
            "message:send", {"conversationId": w.open_id, "inputMethod": "voice"}, r
        ),
        "invalid_field",
    ),
    case(
        "unknown-input-method",
        lambda w, r: text(w.open_id, "Hi", r, inputMethod="video"),
        "invalid_field",
    ),
    case("blank-content", lambda w, r: text(w.open_id, " \n\t ", r), "invalid_field"),
    case("content-nul", lambda w, r: text(w.open_id, "a\u0000b", r), "invalid_field"),
    # The escape "\\ud800" is valid JSON syntax (Python's json module reads it), but a lone
    # surrogate has no UTF-8 form. Like NUL, it is text that cannot be stored, and
    # POST /api/rtc/offer already rejects it in a title with invalid_field.
    case("content-lone-surrogate", lambda w, r: text(w.open_id, "a\ud800b", r), "invalid_field"),
    case(
        "content-too-long",
        lambda w, r: text(w.open_id, "a" * (MAX_MESSAGE_CHARS + 1), r),
        "too_large",
    ),
    case("event-over-limit", lambda w, r: padded_ping(r), "too_large"),
    case(
        "voice-event-over-limit",
        lambda w, r: oversized_voice(w),
        "too_large",
        echoed=False,
    ),
    # voice message audio
    case("audio-not-base64", lambda w, r: voice(w, NOT_BASE64, r), "invalid_audio"),
    case("audio-empty", lambda w, r: voice(w, "", r), "invalid_audio"),
    case(
        "audio-random-bytes", lambda w, r: voice(w, base64_text(RANDOM_BYTES), r), "invalid_audio"
    ),
    case("audio-text-file", lambda w, r: voice(w, base64_text(TEXT_FILE), r), "invalid_audio"),
    case(
        "audio-too-short", lambda w, r: voice(w, base64_text(wav_bytes(0.05)), r), "invalid_audio"
    ),
    # ids that name nothing this user owns
    case(
        "unknown-conversation",
        lambda w, r: event("conversation:load", {"conversationId": UNKNOWN_ID}, r),
        "not_found",
    ),
    case("unknown-conversation-send", lambda w, r: text(UNKNOWN_ID, "Hi", r), "not_found"),
    case(
        "unknown-template",
        lambda w, r: event("conversation:create", {"templateId": UNKNOWN_ID}, r),
        "not_found",
    ),
    case(
        "unknown-chunk",
        lambda w, r: event("audio:request", {"chunkId": UNKNOWN_ID}, r),
        "not_found",
    ),
    case(
        "chunk-of-other-message",
        lambda w, r: event(
            "audio:request", {"chunkId": w.open_chunk_id, "messageId": w.other_message_id}, r
        ),
        "not_found",
    ),
    case(
        "other-user-load",
        lambda w, r: event("conversation:load", {"conversationId": w.other_id}, r),
        "not_found",
    ),
    case("other-user-send", lambda w, r: text(w.other_id, "Hi", r), "not_found"),
    case(
        "other-user-set-status",
        lambda w, r: event(
            "conversation:set-status", {"conversationId": w.other_id, "status": "paused"}, r
        ),
        "not_found",
    ),
    case(
        "other-user-update",
        lambda w, r: event(
            "conversation:update", {"conversationId": w.other_id, "title": "Mine"}, r
        ),
        "not_found",
    ),
    case(
        "other-user-delete",
        lambda w, r: event("conversation:delete", {"conversationId": w.other_id}, r),
        "not_found",
    ),
    case(
        "other-user-history",
        lambda w, r: event("conversation:history", {"conversationId": w.other_id}, r),
        "not_found",
    ),
    case(
        "other-user-audio",
        lambda w, r: event("audio:request", {"chunkId": w.other_chunk_id}, r),
        "not_found",
    ),
    # the lifecycle
    case("send-to-completed", lambda w, r: text(w.completed_id, "Hi", r), "conversation_closed"),
    case(
        "update-archived",
        lambda w, r: event(
            "conversation:update", {"conversationId": w.archived_id, "title": "New"}, r
        ),
        "conversation_closed",
    ),
    case(
        "archived-to-active",
        lambda w, r: event(
            "conversation:set-status", {"conversationId": w.archived_id, "status": "active"}, r
        ),
        "invalid_transition",
    ),
    case(
        "active-to-archived",
        lambda w, r: event(
            "conversation:set-status", {"conversationId": w.open_id, "status": "archived"}, r
        ),
        "invalid_transition",
    ),
    case(
        "completed-to-paused",
        lambda w, r: event(
            "conversation:set-status", {"conversationId": w.completed_id, "status": "paused"}, r
        ),
        "invalid_transition",
    ),
]


@pytest.mark.parametrize(("name", "build", "code", "echoed"), BAD_INPUTS)
async def test_bad_input_is_rejected(
    server: RunningServer,
    world: World,
    client: EventClient,
    name: str,
    build: Build,
    code: str,
    echoed: bool,
) -> None:
    raw = build(world, name)
    before = await snapshot(server)
    start = len(client.events)

    error = await send_expecting_error(client, raw)
    assert error["data"]["code"] == code, error["data"]["error"]
    assert error["data"]["error"], "the error says what is wrong"

    assert await client.is_open()
    answers = [e["type"] for e in client.events[start:]]
    assert answers == ["conversation:error", "connection:pong"], "the only answer is the error"
    assert_unchanged(before, await snapshot(server))

    assert error.get("requestId") == (name if echoed else None)


async def test_long_type_echo_truncated(client: EventClient) -> None:
    error = await send_expecting_error(client, event("x" * 1000, {}))

    message = error["data"]["error"]
    assert error["data"]["code"] == "unknown_event"
    assert "x" * 64 + "…" in message
    assert "x" * 65 not in message
    assert await client.is_open()


async def test_flood_is_rate_limited(server: RunningServer, client: EventClient) -> None:
    before = await snapshot(server)
    start = len(client.events)
    ping = event("connection:ping")
    for _ in range(FLOOD_EVENTS):
        await client.send_raw(ping)

    limited = await client.wait_for(
        lambda e: e["type"] == "conversation:error", timeout_s=15, start=start
    )
    assert limited["data"]["code"] == "rate_limited"
    assert limited["data"]["error"]

    await asyncio.sleep(FLOOD_PAUSE_S)
    assert not client.socket.closed
    assert await client.is_open()
    listed = await client.request("conversation:list")
    assert listed["type"] == "conversation:listed"

    flood_pongs = [
        e for e in client.events[start:] if e["type"] == "connection:pong" and "requestId" not in e
    ]
    assert 0 < len(flood_pongs) < FLOOD_EVENTS, "part of the flood is answered, not all of it"
    assert_unchanged(before, await snapshot(server))


async def test_channel_bad_input_codes(server: RunningServer, world: World) -> None:
    # (message, code, requestId to echo) in the order they are sent on the data channel.
    bad_messages = [
        ("{not json", "bad_json", None),
        (event("connection:ping", {"x": 1}, "dc-data-field"), "invalid_field", "dc-data-field"),
        (
            event("conversation:load", {"conversationId": "x"}, "dc-conversation-id"),
            "invalid_field",
            "dc-conversation-id",
        ),
        (event("conversation:explode", {}, "dc-unknown-type"), "unknown_event", "dc-unknown-type"),
        (
            text(world.open_id, "a" * (MAX_MESSAGE_CHARS + 1), "dc-too-long"),
            "too_large",
            "dc-too-long",
        ),
        (
            event("conversation:load", {"conversationId": world.other_id}, "dc-other-user"),
            "not_found",
            "dc-other-user",
        ),
        (text(world.completed_id, "Hi", "dc-completed"), "conversation_closed", "dc-completed"),
        (voice(world, NOT_BASE64, "dc-not-base64"), "invalid_audio", "dc-not-base64"),
    ]
    messages = [message for message, _code, _request_id in bad_messages]
    before = await snapshot(server)

    result = await place_call(
        server.url,
        token=server.token,
        audio_path=str(speech_file(SHORT_QUESTION)),
        channel_messages=[*messages, event("connection:ping", request_id="dc-after")],
    )

    errors = [e for e in result.events if e["type"] == "conversation:error"]
    codes = [e["data"]["code"] for e in errors]
    assert codes[: len(bad_messages)] == [code for _message, code, _request_id in bad_messages]
    pongs = [e for e in result.events if e["type"] == "connection:pong"]
    assert [pong.get("requestId") for pong in pongs] == ["dc-after"]
    assert "testing routine" in result.user_transcript.lower(), "the call went on"
    assert_unchanged(before, await snapshot(server, exclude=[result.conversation_id]))

    echoed = [e.get("requestId") for e in errors[: len(bad_messages)]]
    assert echoed == [request_id for _message, _code, request_id in bad_messages]


async def test_snapshot_detects_new_rows(server: RunningServer, client: EventClient) -> None:
    # The store checks above are only worth something if a stored change fails them.
    before = await snapshot(server)
    created = await client.request("conversation:create", {"title": "Sanity"})
    assert created["type"] == "conversation:created"

    with pytest.raises(AssertionError, match="rows of conversations changed"):
        assert_unchanged(before, await snapshot(server))
