"""REST routes and bearer tokens: paging, status changes, search ranking, and isolation
between two users on every route and every event."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningServer
from tests.event_client import EventClient
from tests.ollama_standin import OllamaStandIn


@pytest.fixture(autouse=True)
def fresh_script(standin: OllamaStandIn) -> None:
    standin.replies.clear()


@dataclass
class Api:
    server: RunningServer
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {**self.server.auth(token), **kwargs.pop("headers", {})}
        async with self.http.request(
            method, self.server.url + path, headers=headers, **kwargs
        ) as response:
            is_json = response.content_type == "application/json"
            body = await response.json() if is_json else await response.read()
            return response.status, body


@pytest.fixture
async def api(chat_server: RunningServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield Api(chat_server, http)


@dataclass
class OwnedConversation:
    conversation_id: str
    chunk_id: str
    audio_file_id: str
    token: str


@pytest.fixture(scope="module")
async def owner(chat_server: RunningServer) -> OwnedConversation:
    """A second user's conversation with one spoken reply: the thing others must not see."""
    token = await chat_server.create_user(f"owner-{uuid.uuid4().hex[:6]}")
    client = await EventClient.connect(chat_server.url, token)
    try:
        created = await client.request("conversation:create", {"title": "Zucchini secrets"})
        conversation_id = created["data"]["conversationId"]
        await client.request(
            "message:send", {"conversationId": conversation_id, "content": "I grow zucchini."}
        )
        reply = await client.wait_for_reply(conversation_id)
        chunk_id = reply["data"]["chunks"][0]["chunkId"]
        ready = await client.wait_for(
            lambda e: e["type"] == "chunk:audio-ready" and e["data"]["chunkId"] == chunk_id
        )
    finally:
        await client.close()
    return OwnedConversation(conversation_id, chunk_id, ready["data"]["audioFileId"], token)


async def create(api: Api, **body: Any) -> dict[str, Any]:
    status, created = await api.call("POST", "/api/conversations", json=body)
    assert status == 201, created
    result: dict[str, Any] = created
    return result


# -- tokens


ROUTES = [
    ("GET", "/api/me"),
    ("GET", "/api/conversations"),
    ("POST", "/api/conversations"),
    ("GET", "/api/conversations/00000000-0000-4000-8000-000000000000"),
    ("PATCH", "/api/conversations/00000000-0000-4000-8000-000000000000"),
    ("DELETE", "/api/conversations/00000000-0000-4000-8000-000000000000"),
    ("GET", "/api/conversations/00000000-0000-4000-8000-000000000000/messages"),
    ("GET", "/api/conversations/00000000-0000-4000-8000-000000000000/events"),
    ("GET", "/api/search?q=hello"),
    ("GET", "/api/templates"),
    ("GET", "/api/audio/" + "a" * 32),
    ("POST", "/api/rtc/offer"),
    ("GET", "/ws"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["none", "unknown", "basic"],
)
async def test_route_requires_token(
    chat_server: RunningServer, method: str, path: str, headers: dict[str, str]
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, chat_server.url + path, headers=headers) as response,
    ):
        body = await response.json()

    assert response.status == 401
    assert body["code"] == "unauthorized"


async def test_me_names_token_user(api: Api) -> None:
    status, body = await api.call("GET", "/api/me")

    assert status == 200
    assert body["name"] == "tester"


# -- conversations


async def test_list_pages_and_filters(api: Api) -> None:
    token = await api.server.create_user(f"pager-{uuid.uuid4().hex[:6]}")
    ids = []
    for number in range(5):
        status, body = await api.call(
            "POST", "/api/conversations", token=token, json={"title": f"Talk {number}"}
        )
        assert status == 201
        ids.append(body["conversationId"])
    await api.call("PATCH", f"/api/conversations/{ids[1]}", token=token, json={"status": "paused"})

    _, first = await api.call("GET", "/api/conversations?limit=2", token=token)
    _, second = await api.call("GET", "/api/conversations?limit=2&offset=2", token=token)
    _, paused = await api.call("GET", "/api/conversations?status=paused", token=token)
    bad_status, bad = await api.call("GET", "/api/conversations?status=sleeping", token=token)
    bad_limit, _ = await api.call("GET", "/api/conversations?limit=1000", token=token)

    assert first["total"] == 5
    assert [c["conversationId"] for c in first["conversations"]] == [ids[1], ids[4]]
    assert [c["conversationId"] for c in second["conversations"]] == [ids[3], ids[2]]
    assert [c["conversationId"] for c in paused["conversations"]] == [ids[1]]
    assert paused["total"] == 1
    assert bad_status == 400
    assert bad["code"] == "invalid_field"
    assert bad_limit == 400


async def test_conversation_with_message_pages(api: Api) -> None:
    created = await create(api, title="Paging")
    conversation_id = created["conversationId"]
    client = await EventClient.connect(api.server.url, api.server.token)
    try:
        for number in range(3):
            await client.request(
                "message:send",
                {"conversationId": conversation_id, "content": f"Message {number}", "speak": False},
            )
            await client.wait_for_reply(conversation_id)
            client.events.clear()
    finally:
        await client.close()

    _, whole = await api.call("GET", f"/api/conversations/{conversation_id}?messageLimit=4")
    _, older = await api.call(
        "GET", f"/api/conversations/{conversation_id}/messages?beforeSequence=3&limit=10"
    )
    _, later = await api.call(
        "GET", f"/api/conversations/{conversation_id}/messages?afterSequence=4"
    )
    _, events = await api.call("GET", f"/api/conversations/{conversation_id}/events?afterSeq=1")

    assert whole["conversation"]["messageCount"] == 6
    assert [m["sequenceNumber"] for m in whole["messages"]] == [3, 4, 5, 6]
    assert whole["hasMoreMessages"] is True
    assert whole["messages"][1]["chunks"][0]["text"]
    assert [m["sequenceNumber"] for m in older["messages"]] == [2, 1]
    assert [m["sequenceNumber"] for m in later["messages"]] == [5, 6]
    assert [e["seq"] for e in events["events"]] == list(range(2, len(events["events"]) + 2))
    assert events["events"][0]["type"] == "message:received"


async def test_patch_status_and_settings(api: Api) -> None:
    created = await create(api, title="Before", level="A2")
    path = f"/api/conversations/{created['conversationId']}"

    paused_status, paused = await api.call("PATCH", path, json={"status": "paused"})
    both_status, both = await api.call(
        "PATCH", path, json={"status": "active", "title": "After", "maxContextMessages": 40}
    )
    wrong_status, wrong = await api.call("PATCH", path, json={"status": "archived"})
    empty_status, empty = await api.call("PATCH", path, json={})
    extra_status, extra = await api.call("PATCH", path, json={"colour": "blue"})

    assert paused_status == 200
    assert paused["status"] == "paused"
    assert both_status == 200
    assert both["status"] == "active"
    assert both["title"] == "After"
    assert both["settings"]["maxContextMessages"] == 40
    assert wrong_status == 409
    assert wrong["code"] == "invalid_transition"
    assert empty_status == 400
    assert empty["code"] == "invalid_field"
    assert extra_status == 400
    assert "colour" in extra["error"]


async def test_delete_answers_204_then_404(api: Api) -> None:
    created = await create(api)
    path = f"/api/conversations/{created['conversationId']}"

    deleted, _ = await api.call("DELETE", path)
    again, body = await api.call("DELETE", path)
    read, _ = await api.call("GET", path)

    assert deleted == 204
    assert again == 404
    assert body["code"] == "not_found"
    assert read == 404


async def test_bad_ids_and_bodies(api: Api) -> None:
    not_uuid, body = await api.call("GET", "/api/conversations/123")
    not_json, body_json = await api.call(
        "POST", "/api/conversations", data=b"{oops", headers={"Content-Type": "application/json"}
    )
    bad_level, level_body = await api.call("POST", "/api/conversations", json={"level": "D4"})
    too_big, big_body = await api.call(
        "POST", "/api/conversations", data=json.dumps({"title": "x" * 40000})
    )

    assert not_uuid == 400
    assert body["code"] == "invalid_field"
    assert not_json == 400
    assert body_json["code"] == "bad_json"
    assert bad_level == 400
    assert "level" in level_body["error"]
    assert too_big == 413
    assert big_body["code"] == "too_large"


# -- search


async def test_search_ranks_denser_match_first(api: Api) -> None:
    token = await api.server.create_user(f"searcher-{uuid.uuid4().hex[:6]}")
    client = await EventClient.connect(api.server.url, token)
    try:
        created = await client.request("conversation:create", {"title": "Kitchen talk"})
        conversation_id = created["data"]["conversationId"]
        texts = [
            "Yesterday I walked to the station and later, after lunch, I bought a teapot.",
            "Teapot, teapot, my favourite teapot is a blue teapot.",
            "Nothing about kitchens here.",
        ]
        for text in texts:
            await client.request(
                "message:send",
                {"conversationId": conversation_id, "content": text, "speak": False},
            )
        await asyncio.sleep(1.0)
    finally:
        await client.close()

    _, found = await api.call("GET", "/api/search?q=teapot", token=token)
    _, phrase = await api.call("GET", "/api/search?q=%22blue+teapot%22", token=token)
    _, nothing = await api.call("GET", "/api/search?q=zebra", token=token)
    empty_status, _ = await api.call("GET", "/api/search?q=", token=token)

    messages = [r for r in found["results"] if r["kind"] == "message"]
    assert len(messages) == 2
    assert "favourite" in messages[0]["snippet"]
    assert messages[0]["rank"] > messages[1]["rank"]
    assert "<mark>teapot</mark>" in messages[0]["snippet"].lower()
    assert len(phrase["results"]) == 1
    assert nothing["results"] == []
    assert empty_status == 400


# -- isolation between users


async def test_other_users_routes_answer_not_found(api: Api, owner: OwnedConversation) -> None:
    conversation = f"/api/conversations/{owner.conversation_id}"
    attempts = [
        ("GET", conversation, {}),
        ("GET", conversation + "/messages", {}),
        ("GET", conversation + "/events", {}),
        ("PATCH", conversation, {"json": {"status": "paused"}}),
        ("PATCH", conversation, {"json": {"title": "Mine now"}}),
        ("DELETE", conversation, {}),
        ("GET", f"/api/audio/{owner.audio_file_id}", {}),
    ]
    for method, path, kwargs in attempts:
        status, body = await api.call(method, path, **kwargs)
        assert (method, path, status) == (method, path, 404)
        assert body["code"] == "not_found"

    _, listed = await api.call("GET", "/api/conversations?limit=100")
    _, found = await api.call("GET", "/api/search?q=zucchini")
    owner_status, owner_view = await api.call("GET", conversation, token=owner.token)
    owner_audio, _ = await api.call("GET", f"/api/audio/{owner.audio_file_id}", token=owner.token)

    assert owner.conversation_id not in [c["conversationId"] for c in listed["conversations"]]
    assert found["results"] == []
    assert owner_status == 200
    assert owner_view["conversation"]["title"] == "Zucchini secrets"
    assert owner_audio == 200


async def test_other_users_events_answer_not_found(
    chat_server: RunningServer, owner: OwnedConversation
) -> None:
    conversation_id = owner.conversation_id
    events: list[tuple[str, dict[str, Any]]] = [
        ("conversation:load", {"conversationId": conversation_id}),
        ("conversation:load", {"conversationId": conversation_id, "afterSeq": 0}),
        ("conversation:history", {"conversationId": conversation_id}),
        ("conversation:set-status", {"conversationId": conversation_id, "status": "paused"}),
        ("conversation:update", {"conversationId": conversation_id, "title": "Mine"}),
        ("conversation:delete", {"conversationId": conversation_id}),
        ("message:send", {"conversationId": conversation_id, "content": "Hi"}),
        ("audio:request", {"chunkId": owner.chunk_id}),
    ]
    pool = await chat_server.db()
    count_sql = "SELECT count(*) FROM conversation_events WHERE conversation_id = $1"
    before = await pool.fetchval(count_sql, uuid.UUID(conversation_id))
    client = await EventClient.connect(chat_server.url, chat_server.token)
    try:
        for event_type, data in events:
            answer = await client.request(event_type, data)
            assert (event_type, answer["type"], answer["data"]["code"]) == (
                event_type,
                "conversation:error",
                "not_found",
            )
        listed = await client.request("conversation:list", {"limit": 100})
        found = await client.request("conversation:search", {"query": "zucchini"})
        await asyncio.sleep(0.5)
        leaked = [
            e for e in client.events if e.get("data", {}).get("conversationId") == conversation_id
        ]
    finally:
        await client.close()
    after = await pool.fetchval(count_sql, uuid.UUID(conversation_id))
    status = await pool.fetchval(
        "SELECT status FROM conversations WHERE id = $1", uuid.UUID(conversation_id)
    )

    assert conversation_id not in [c["conversationId"] for c in listed["data"]["conversations"]]
    assert found["data"]["results"] == []
    assert all(e["type"] == "conversation:error" for e in leaked), "no event of theirs arrives"
    assert after == before
    assert status == "active"


async def test_other_users_call_offer_not_found(
    chat_server: RunningServer, owner: OwnedConversation
) -> None:
    # Plausible enough to pass the SDP checks, which come before the conversation lookup.
    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 AB:CD\r\n"
    body = {"sdp": sdp, "type": "offer", "conversationId": owner.conversation_id}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            chat_server.url + "/api/rtc/offer", json=body, headers=chat_server.auth()
        ) as response,
    ):
        payload = await response.json()

    assert response.status == 404
    assert payload["code"] == "not_found"
