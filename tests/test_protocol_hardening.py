"""Inputs that once hurt the server: voice data that steers FFmpeg, huge events, racing
senders, a sender that vanishes, deletes mid-request, and tokens in logged URLs."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import av
import pytest

from media.frames import read_audio_file
from tests.conftest import RunningServer, speech_file
from tests.event_client import EventClient
from tests.ollama_standin import OllamaStandIn, ScriptedReply

QUESTION = "librispeech_251-137823-0002_en.wav"


@pytest.fixture(autouse=True)
def fresh_script(standin: OllamaStandIn) -> None:
    standin.replies.clear()


@pytest.fixture
async def client(chat_server: RunningServer) -> AsyncIterator[EventClient]:
    connected = await EventClient.connect(chat_server.url, chat_server.token)
    yield connected
    await connected.close()


async def new_conversation(client: EventClient) -> str:
    created = await client.request("conversation:create", {"title": "Hardening"})
    conversation_id: str = created["data"]["conversationId"]
    return conversation_id


def voice(conversation_id: str, data: bytes) -> dict[str, object]:
    return {
        "conversationId": conversation_id,
        "inputMethod": "voice",
        "audio": base64.b64encode(data).decode(),
    }


def opus_in_ogg(path: str) -> bytes:
    samples = read_audio_file(path, 48000)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as output:
        stream = output.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload",
    [
        b"ffconcat version 1.0\nfile pyproject.toml\n",
        b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
        b"t=0 0\r\nm=audio 19100 RTP/AVP 0\r\n",
        b"RIFF\x10\x00\x00\x00AVI LIST",
    ],
    ids=["concat-list", "sdp", "riff-not-wave"],
)
async def test_voice_container_must_be_audio(client: EventClient, payload: bytes) -> None:
    conversation_id = await new_conversation(client)
    started = time.monotonic()
    answer = await client.request("message:send", voice(conversation_id, payload))
    elapsed_s = time.monotonic() - started

    assert answer["data"]["code"] == "invalid_audio"
    assert "not in a supported format" in answer["data"]["error"]
    assert elapsed_s < 5, "rejected from its first bytes, without FFmpeg opening anything"


async def test_ogg_opus_voice_is_transcribed(client: EventClient) -> None:
    conversation_id = await new_conversation(client)
    data = await asyncio.to_thread(opus_in_ogg, str(speech_file(QUESTION)))
    answer = await client.request("message:send", voice(conversation_id, data), timeout_s=60)

    assert answer["type"] == "message:received"
    assert "testing routine" in answer["data"]["content"].lower()


async def test_huge_event_rejected_unparsed(
    client: EventClient, chat_server: RunningServer
) -> None:
    keys = ",".join(f'"k{n}":0' for n in range(200_000))
    huge = '{"type":"connection:ping","requestId":"big",' + keys + "}"
    other = await EventClient.connect(chat_server.url, chat_server.token)
    try:
        await client.send_raw(huge)
        started = time.monotonic()
        pong = await other.request("connection:ping")
        other_wait_s = time.monotonic() - started
        error = await client.wait_for(lambda e: e["type"] == "conversation:error")

        assert error["data"]["code"] == "too_large"
        assert pong["type"] == "connection:pong"
        assert other_wait_s < 1.0, "another user is not stalled by the huge event"
    finally:
        await other.close()


async def test_racing_senders_respect_reply_limit(
    chat_server: RunningServer, standin: OllamaStandIn
) -> None:
    # The chat server allows 20 replies per conversation; 30 senders race for them.
    standin.default_reply = ScriptedReply(["[calm] Take", " your", " time."], delay_s=0.3)
    owner = await EventClient.connect(chat_server.url, chat_server.token)
    senders = [await EventClient.connect(chat_server.url, chat_server.token) for _ in range(30)]
    try:
        conversation_id = await new_conversation(owner)
        answers = await asyncio.gather(
            *(
                sender.request(
                    "message:send",
                    {"conversationId": conversation_id, "content": "Hi", "speak": False},
                )
                for sender in senders
            )
        )
        accepted = [a for a in answers if a["type"] == "message:received"]
        limited = [a for a in answers if a["data"].get("code") == "rate_limited"]
        pool = await chat_server.db()
        stored = await pool.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = $1 AND role = 'user'",
            uuid.UUID(conversation_id),
        )

        assert len(accepted) <= 20
        assert len(accepted) + len(limited) == 30
        assert stored == len(accepted), "a rejected message is never stored"
    finally:
        standin.default_reply = OllamaStandIn().default_reply
        for connected in [owner, *senders]:
            await connected.close()


async def test_sender_gone_still_gets_reply(
    client: EventClient, chat_server: RunningServer
) -> None:
    conversation_id = await new_conversation(client)
    for number in range(5):
        hasty = await EventClient.connect(chat_server.url, chat_server.token)
        await hasty.send(
            "message:send",
            {"conversationId": conversation_id, "content": f"Bye {number}", "speak": False},
        )
        await hasty.socket.close()
        await hasty.close()
    await asyncio.sleep(3.0)
    pool = await chat_server.db()
    roles = await pool.fetch(
        "SELECT role, metadata->>'status' AS status FROM messages"
        " WHERE conversation_id = $1 ORDER BY sequence_number",
        uuid.UUID(conversation_id),
    )
    users = [r for r in roles if r["role"] == "user"]
    replies = [r for r in roles if r["role"] == "assistant"]

    assert len(replies) == len(users), "every stored message gets its reply"
    assert all(r["status"] == "completed" for r in replies)


async def test_delete_during_voice_leaves_nothing(
    client: EventClient, chat_server: RunningServer
) -> None:
    conversation_id = await new_conversation(client)
    data = speech_file("silero_lecture_60s_en.wav").read_bytes()[: 40 * 32000]
    audio_dir = chat_server.data_dir / "audio"
    files_before = set(audio_dir.rglob("*.wav")) if audio_dir.exists() else set()
    request_id = await client.send("message:send", voice(conversation_id, data))
    await asyncio.sleep(0.5)
    deleter = await EventClient.connect(chat_server.url, chat_server.token)
    try:
        deleted = await deleter.request("conversation:delete", {"conversationId": conversation_id})
    finally:
        await deleter.close()
    answer = await client.wait_for(lambda e: e.get("requestId") == request_id, 90)
    await asyncio.sleep(0.5)
    files_after = set(audio_dir.rglob("*.wav")) if audio_dir.exists() else set()

    assert deleted["type"] == "conversation:deleted"
    assert answer["data"]["code"] == "not_found"
    assert files_after - files_before == set(), "no audio file outlives its conversation"
    assert "Traceback" not in chat_server.log_tail(200)


async def test_history_bounds_and_digits(client: EventClient, chat_server: RunningServer) -> None:
    conversation_id = await new_conversation(client)
    too_far = await client.request(
        "conversation:history", {"conversationId": conversation_id, "beforeSequence": 2**31}
    )
    async with aiohttp.ClientSession(headers=chat_server.auth()) as http:
        path = f"{chat_server.url}/api/conversations/{conversation_id}"
        async with http.get(path + "/events?afterSeq=%C2%B2") as response:
            superscript = response.status, await response.json()
        async with http.get(path + "/messages?afterSequence=99999999999") as response:
            huge = response.status, await response.json()

    assert too_far["data"]["code"] == "invalid_field"
    assert superscript[0] == 400
    assert superscript[1]["code"] == "invalid_field"
    assert huge[0] == 400
    assert huge[1]["code"] == "invalid_field"


async def test_patch_rejected_changes_nothing(chat_server: RunningServer) -> None:
    async with aiohttp.ClientSession(headers=chat_server.auth()) as http:
        async with http.post(f"{chat_server.url}/api/conversations", json={"title": "Keep"}) as r:
            conversation_id = (await r.json())["conversationId"]
        path = f"{chat_server.url}/api/conversations/{conversation_id}"
        await http.patch(path, json={"status": "paused"})
        async with http.patch(path, json={"status": "archived", "title": "Changed"}) as r:
            rejected = r.status, await r.json()
        async with http.patch(path, json={"status": None, "title": "Changed"}) as r:
            null_status = r.status
        async with http.get(path) as r:
            after = (await r.json())["conversation"]

    assert rejected[0] == 409
    assert rejected[1]["code"] == "invalid_transition"
    assert null_status == 400
    assert after["title"] == "Keep"
    assert after["status"] == "paused"


async def test_same_status_race_is_noop(chat_server: RunningServer) -> None:
    clients = [await EventClient.connect(chat_server.url, chat_server.token) for _ in range(4)]
    try:
        conversation_id = await new_conversation(clients[0])
        answers = await asyncio.gather(
            *(
                c.request(
                    "conversation:set-status",
                    {"conversationId": conversation_id, "status": "completed"},
                )
                for c in clients
            )
        )
        events = [
            r["event_type"]
            for r in await (await chat_server.db()).fetch(
                "SELECT event_type FROM conversation_events WHERE conversation_id = $1",
                uuid.UUID(conversation_id),
            )
        ]

        assert {a["type"] for a in answers} == {"conversation:status-changed"}
        assert {a["data"]["status"] for a in answers} == {"completed"}
        assert events.count("conversation:status-changed") == 1
    finally:
        for connected in clients:
            await connected.close()


async def test_model_choice_is_limited(client: EventClient) -> None:
    conversation_id = await new_conversation(client)
    answer = await client.request(
        "conversation:update",
        {"conversationId": conversation_id, "aiSettings": {"model": "llama3.1:405b"}},
    )

    assert answer["data"]["code"] == "invalid_field"
    assert "not allowed" in answer["data"]["error"]


async def test_token_in_long_url_not_logged(chat_server: RunningServer) -> None:
    url = f"{chat_server.url}/ws?token={chat_server.token}&pad={'x' * 9000}"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        status = response.status
    await asyncio.sleep(0.3)
    log = chat_server.log_path.read_text(errors="replace")

    assert status == 400
    assert chat_server.token not in log
    assert json.dumps(chat_server.token)[1:-1] not in log
