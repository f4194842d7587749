"""`POST /api/rtc/offer` with bad input: clear JSON errors and no session left behind."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from server.caller import place_call
from tests.conftest import RunningServer, free_port, speech_file, start_server, stop_server


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_dsn: str
) -> AsyncIterator[RunningServer]:
    # No language model: these tests are about signalling, and start faster without one.
    running = await start_server(
        tmp_path_factory.mktemp("signalling"),
        postgres_admin_dsn,
        PARLEY_LLM_BACKEND="ollama",
        OLLAMA_HOST=f"http://127.0.0.1:{free_port()}",
        PARLEY_CALL_IDLE_TIMEOUT_S="3",
    )
    yield running
    await stop_server(running)


async def audio_offer() -> str:
    """A real offer from aiortc that sends audio, from a peer that then goes away."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(AudioStreamTrack())
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def data_only_offer() -> str:
    """A real offer from aiortc with a data channel and no audio."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def post_offer(server: RunningServer, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url + "/api/rtc/offer",
            data=data,
            headers={"Content-Type": "application/json", **server.auth()},
        ) as response,
    ):
        payload: dict[str, Any] = await response.json()
        return response.status, payload


BROKEN_AUDIO_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\na=fingerprint:sha-256 AB:CD\r\n"
    "m=audio x RTP/AVP\r\nc=IN\r\n"
)
NO_FINGERPRINT_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nm=audio 9 RTP/AVP 0\r\n"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_json"),
        ([1, 2], 400, "bad_json"),
        ({"type": "offer"}, 400, "invalid_field"),
        ({"sdp": 42, "type": "offer"}, 400, "invalid_field"),
        (
            {"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "answer"},
            400,
            "invalid_field",
        ),
        ({"sdp": "hello", "type": "offer"}, 400, "invalid_sdp"),
        ({"sdp": BROKEN_AUDIO_SDP, "type": "offer"}, 400, "invalid_sdp"),
        ({"sdp": BROKEN_AUDIO_SDP, "type": "offer", "extra": 1}, 400, "invalid_field"),
        ({"sdp": BROKEN_AUDIO_SDP, "type": "offer", "level": "Z9"}, 400, "invalid_field"),
        (
            {"sdp": BROKEN_AUDIO_SDP, "type": "offer", "conversationId": "nope"},
            400,
            "invalid_field",
        ),
        (
            {"sdp": BROKEN_AUDIO_SDP, "type": "offer", "conversationId": str(uuid.uuid4())},
            404,
            "not_found",
        ),
        ({"sdp": "v=0\r\nm=audio " + "x" * 70000, "type": "offer"}, 413, "too_large"),
        ({"sdp": NO_FINGERPRINT_SDP, "type": "offer"}, 400, "invalid_sdp"),
        ({"sdp": BROKEN_AUDIO_SDP, "type": "offer", "title": "a\u0000b"}, 400, "invalid_field"),
        ({"sdp": BROKEN_AUDIO_SDP, "type": "offer", "title": "\ud800"}, 400, "invalid_field"),
        (b'{"sdp": ' + b"[" * 30000 + b"]" * 30000 + b"}", 400, "bad_json"),
    ],
    ids=[
        "not-json",
        "json-array",
        "missing-sdp",
        "sdp-not-string",
        "type-answer",
        "not-sdp",
        "broken-sdp",
        "unknown-field",
        "bad-level",
        "bad-conversation-id",
        "unknown-conversation",
        "too-large",
        "no-fingerprint",
        "title-nul",
        "title-surrogate",
        "deeply-nested",
    ],
)
async def test_bad_offer_is_rejected(
    server: RunningServer, body: Any, status: int, code: str
) -> None:
    got_status, payload = await post_offer(server, body)
    assert got_status == status
    assert payload["code"] == code
    assert payload["error"]


async def test_offer_without_audio_is_rejected(server: RunningServer) -> None:
    status, payload = await post_offer(server, {"sdp": await data_only_offer(), "type": "offer"})
    assert status == 400
    assert payload["code"] == "invalid_sdp"
    assert "audio" in payload["error"]


async def test_rejected_offers_leave_no_session(server: RunningServer) -> None:
    await post_offer(server, {"sdp": BROKEN_AUDIO_SDP, "type": "offer"})
    health = await server.wait_for_idle()
    assert health["calls"] == 0
    assert health["callThreads"] == 0
    assert health["callTasks"] == 0


async def test_second_call_continues_conversation(server: RunningServer) -> None:
    question = str(speech_file("librispeech_251-137823-0002_en.wav"))
    first = await place_call(server.url, token=server.token, audio_path=question, level="B2")
    second = await place_call(
        server.url, token=server.token, audio_path=question, conversation_id=first.conversation_id
    )
    assert second.conversation_id == first.conversation_id

    pool = await server.db()
    conversation = await pool.fetchrow(
        "SELECT level, status FROM conversations WHERE id = $1",
        uuid.UUID(first.conversation_id),
    )
    numbers = await pool.fetch(
        "SELECT sequence_number FROM messages WHERE conversation_id = $1 ORDER BY 1",
        uuid.UUID(first.conversation_id),
    )
    assert conversation["level"] == "B2"
    assert conversation["status"] == "active"
    assert [row["sequence_number"] for row in numbers] == [1, 2]
    second_seqs = [event["seq"] for event in second.events if "seq" in event]
    first_seqs = [event["seq"] for event in first.events if "seq" in event]
    # Between the calls, only the first call's recording stopped, after its caller left.
    between = await pool.fetch(
        "SELECT event_type FROM conversation_events"
        " WHERE conversation_id = $1 AND seq > $2 AND seq < $3",
        uuid.UUID(first.conversation_id),
        first_seqs[-1],
        second_seqs[0],
    )
    assert [row["event_type"] for row in between] == ["recording:stopped"]


async def test_abandoned_call_ends_by_itself(server: RunningServer) -> None:
    status, payload = await post_offer(server, {"sdp": await audio_offer(), "type": "offer"})
    assert status == 200
    assert payload["type"] == "answer"
    assert (await server.health())["calls"] == 1

    # The caller never connects: ICE failure or the 3 s idle timeout ends the session.
    health = await server.wait_for_idle(timeout_s=40)
    assert health["calls"] == 0
    assert health["callThreads"] == 0
    assert health["callTasks"] == 0


async def test_bad_channel_messages_get_errors(server: RunningServer) -> None:
    question = str(speech_file("librispeech_251-137823-0002_en.wav"))
    result = await place_call(
        server.url,
        token=server.token,
        audio_path=question,
        channel_messages=[
            "{not json",
            '{"type": "nope", "data": {}}',
            "[" * 1500 + "]" * 1500,
        ],
    )

    errors = [e["data"] for e in result.events if e["type"] == "conversation:error"]
    codes = [error["code"] for error in errors]
    assert codes[:3] == ["bad_json", "unknown_event", "bad_json"]
    assert "nope" in errors[1]["error"]
    assert "testing routine" in result.user_transcript.lower(), "the call went on"


async def test_second_call_on_busy_conversation_rejected(server: RunningServer) -> None:
    question = str(speech_file("librispeech_251-137823-0002_en.wav"))
    first = await place_call(server.url, token=server.token, audio_path=question)
    # The server ends its side of the call (and its recording) just after the hang-up.
    await server.wait_for_idle()
    status, payload = await post_offer(
        server,
        {"sdp": await audio_offer(), "type": "offer", "conversationId": first.conversation_id},
    )
    assert status == 200, "the first call has ended, so the conversation is free again"

    status, payload = await post_offer(
        server,
        {"sdp": await audio_offer(), "type": "offer", "conversationId": first.conversation_id},
    )
    assert status == 409
    assert payload["code"] == "conversation_busy"


async def test_rejected_offer_creates_no_conversation(server: RunningServer) -> None:
    pool = await server.db()
    before = await pool.fetchval("SELECT count(*) FROM conversations")
    status, _ = await post_offer(server, {"sdp": BROKEN_AUDIO_SDP, "type": "offer"})
    after = await pool.fetchval("SELECT count(*) FROM conversations")
    assert status == 400
    assert after == before


async def test_call_without_audio_track_ends(server: RunningServer) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    status, answer = await post_offer(server, {"sdp": pc.localDescription.sdp, "type": "offer"})
    assert status == 200
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    try:
        health = await server.wait_for_idle(timeout_s=15)
    finally:
        await pc.close()
    assert health["calls"] == 0, "a connected call that never sends audio is ended"


async def test_speech_cut_by_hang_up_is_stored(server: RunningServer) -> None:
    # One sentence read without a long pause; the caller hangs up in its middle.
    sentence = str(speech_file("librispeech_251-137823-0003_en.wav"))
    hang_up_at = time.monotonic() + 3.0
    result = await place_call(
        server.url,
        token=server.token,
        audio_path=sentence,
        hang_up_when=lambda events: time.monotonic() > hang_up_at,
    )
    await server.wait_for_idle()

    pool = await server.db()
    messages = await pool.fetch(
        "SELECT role, content, audio_file_id, metadata FROM messages"
        " WHERE conversation_id = $1 ORDER BY sequence_number",
        uuid.UUID(result.conversation_id),
    )
    assert [m["role"] for m in messages] == ["user"]
    assert "another engineer" in messages[0]["content"].lower()
    assert messages[0]["audio_file_id"]
    assert messages[0]["metadata"]["unanswered"] is True


def codes_with_seq(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["code"] for e in events if e["type"] == "conversation:error" and "seq" in e]


async def test_channel_flood_is_rate_limited(server: RunningServer) -> None:
    question = str(speech_file("librispeech_251-137823-0002_en.wav"))
    flood = [json.dumps({"type": f"spam-{n}", "data": {}}) for n in range(200)]
    result = await place_call(
        server.url, token=server.token, audio_path=question, channel_messages=flood
    )

    codes = [e["data"]["code"] for e in result.events if e["type"] == "conversation:error"]
    assert "rate_limited" in codes
    assert codes.count("unknown_event") < 100, "most of the flood is dropped"
    seqs = [event["seq"] for event in result.events if "seq" in event]
    assert seqs == sorted(seqs), "events arrive in seq order"
    logged_errors = [
        e for e in codes_with_seq(result.events) if e in ("rate_limited", "unknown_event")
    ]
    assert logged_errors == [], "errors answering bad messages go to that connection only"
    assert "testing routine" in result.user_transcript.lower(), "the call went on"


async def test_wrong_method_gets_json_405(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/api/rtc/offer") as response:
        payload = await response.json()
        assert response.status == 405
        assert payload["code"] == "method_not_allowed"
        assert "POST" in response.headers["Allow"]


async def test_audio_id_with_newline_is_invalid(server: RunningServer) -> None:
    url = server.url + "/api/audio/" + "a" * 32 + "%0A"
    async with aiohttp.ClientSession() as http, http.get(url, headers=server.auth()) as response:
        payload = await response.json()
        assert response.status == 400
        assert payload["code"] == "invalid_field"
