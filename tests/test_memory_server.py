"""Conversation memory in a running server: memory events, strategy changes on a live
conversation, the memory REST routes, and summaries resumed after a restart. The language
and embedding models are a stand-in Ollama reached through the real `ollama` client."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.memory.context import FACTS_HEADER, RETRIEVED_HEADER, SUMMARY_HEADER
from storage.conversations import insert_message
from tests.conftest import RunningServer, start_server, stop_server
from tests.event_client import Event, EventClient
from tests.memory_fixtures import (
    FACT_TEXT,
    is_summary_request,
    memory_answer,
    message_text,
    summary_new_messages,
)
from tests.ollama_standin import EMBED_MODEL, MODEL, OllamaStandIn, ScriptedReply, prompt_tokens

MEMORY_ENV = {
    "PARLEY_OLLAMA_MODEL": MODEL,
    "PARLEY_OLLAMA_EMBED_MODEL": EMBED_MODEL,
    "PARLEY_MEMORY_QUIET_S": "0.2",
    "PARLEY_MEMORY_SUMMARY_BATCH": "2",
    "PARLEY_MEMORY_RETRY_S": "1",
    "PARLEY_CLIENT_EVENTS_PER_S": "200",
    "PARLEY_CLIENT_EVENT_BURST": "200",
}


@pytest.fixture(scope="module")
async def standin() -> AsyncIterator[OllamaStandIn]:
    server = OllamaStandIn(answer=memory_answer)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_dsn: str, standin: OllamaStandIn
) -> AsyncIterator[RunningServer]:
    running = await start_server(
        tmp_path_factory.mktemp("memory-server"),
        postgres_admin_dsn,
        OLLAMA_HOST=standin.url,
        **MEMORY_ENV,
    )
    yield running
    await stop_server(running)


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[EventClient]:
    connected = await EventClient.connect(server.url, server.token)
    yield connected
    await connected.close()


async def send_and_wait(client: EventClient, conversation_id: str, text: str) -> Event:
    """Send a text message without audio; return the assistant's finished reply."""
    start = len(client.events)
    sent = await client.request(
        "message:send", {"conversationId": conversation_id, "content": text, "speak": False}
    )
    assert sent["type"] == "message:received", sent
    return await client.wait_for(
        lambda e: (
            e["type"] == "message:received"
            and e["data"]["role"] == "assistant"
            and e["data"]["conversationId"] == conversation_id
        ),
        30,
        start=start,
    )


def last_reply_request(standin: OllamaStandIn) -> dict[str, Any]:
    """The newest chat request that asked for a tutor reply, not for memory work."""
    for body in reversed(standin.requests):
        # A one-token request is the memory worker restoring the model's prefix cache.
        priming = body.get("options", {}).get("num_predict") == 1
        if body["messages"][0]["content"].startswith("You are Parley") and not priming:
            return body
    raise AssertionError("no reply request reached the stand-in")


def context_event(client: EventClient, start: int) -> Event:
    events = [e for e in client.events[start:] if e["type"] == "memory:context-updated"]
    assert len(events) == 1, [e["type"] for e in client.events[start:]]
    return events[0]


async def update(client: EventClient, conversation_id: str, **settings: Any) -> None:
    answer = await client.request(
        "conversation:update", {"conversationId": conversation_id, **settings}
    )
    assert answer["type"] == "conversation:updated", answer


async def test_strategy_changes_take_effect_next_reply(
    server: RunningServer, client: EventClient, standin: OllamaStandIn
) -> None:
    created = await client.request("conversation:create", {"title": "Memory", "level": "B1"})
    conversation_id = created["data"]["conversationId"]
    await update(
        client,
        conversation_id,
        memoryStrategy="summarization",
        summarizeThreshold=4,
        maxContextMessages=4,
    )
    await send_and_wait(client, conversation_id, FACT_TEXT)
    for turn in range(5):
        await send_and_wait(client, conversation_id, f"What is the weather like on day {turn}?")

    summarized = await client.wait_for(lambda e: e["type"] == "memory:summarized", 20)
    assert summarized["data"]["conversationId"] == conversation_id
    assert summarized["data"]["messageRange"]["start"] == 1
    assert "Ana" in summarized["data"]["summary"]
    assert summarized["seq"] > 0

    # summarization: the summary is in the prompt of the next reply.
    start = len(client.events)
    reply = await send_and_wait(client, conversation_id, "Shall we go on?")
    event = context_event(client, start)
    assert event["data"]["strategy"] == "summarization"
    assert event["data"]["summaryRange"]["start"] == 1
    assert event["data"]["tokenCount"] <= event["data"]["tokenBudget"]
    system = last_reply_request(standin)["messages"][0]["content"]
    assert SUMMARY_HEADER in system
    assert "Ana" in system
    context = reply["data"]["metadata"]["context"]
    assert context["strategy"] == "summarization"
    # The stand-in reports about 4.2 characters a token; the estimate counts more.
    reported = prompt_tokens(last_reply_request(standin)["messages"])
    assert context["reportedPromptTokens"] == reported
    assert context["tokenCount"] >= reported

    # sliding: the same conversation, the next reply has no summary.
    await update(client, conversation_id, memoryStrategy="sliding")
    start = len(client.events)
    await send_and_wait(client, conversation_id, "And now?")
    event = context_event(client, start)
    assert event["data"]["strategy"] == "sliding"
    assert event["data"]["summaryRange"] is None
    system = last_reply_request(standin)["messages"][0]["content"]
    assert SUMMARY_HEADER not in system
    assert "Ana" not in system

    # hierarchical, set over REST: key facts are extracted and shape the system prompt.
    async with (
        aiohttp.ClientSession() as http,
        http.patch(
            f"{server.url}/api/conversations/{conversation_id}",
            json={"memoryStrategy": "hierarchical"},
            headers=server.auth(),
        ) as response,
    ):
        assert response.status == 200, await response.text()
    facts_event = await client.wait_for(lambda e: e["type"] == "memory:key-facts-extracted", 20)
    facts = {(f["type"], f["text"]) for f in facts_event["data"]["facts"]}
    assert ("learning_goal", "pass the IELTS exam") in facts
    start = len(client.events)
    await send_and_wait(client, conversation_id, "What should we practise?")
    assert context_event(client, start)["data"]["strategy"] == "hierarchical"
    system = last_reply_request(standin)["messages"][0]["content"]
    assert FACTS_HEADER in system
    assert "- Goal: pass the IELTS exam" in system
    assert SUMMARY_HEADER in system

    # semantic: every message gets an embedding from the embed endpoint, and the learner's
    # early statement comes back for a question sharing its words.
    await update(client, conversation_id, memoryStrategy="semantic")
    memory = await wait_for_embeddings(server, conversation_id)
    assert memory["embeddings"]["model"] == f"ollama:{EMBED_MODEL}"
    start = len(client.events)
    await send_and_wait(client, conversation_id, "Which exam am I preparing for? My name is?")
    event = context_event(client, start)
    assert event["data"]["strategy"] == "semantic"
    assert 1 in event["data"]["retrievedSequences"]
    system = last_reply_request(standin)["messages"][0]["content"]
    assert RETRIEVED_HEADER in system
    assert f"(message 1): {FACT_TEXT}" in system


async def wait_for_embeddings(server: RunningServer, conversation_id: str) -> dict[str, Any]:
    """Wait until every message with content has an embedding; return the memory view."""
    pool = await server.db()
    deadline = time.monotonic() + 20
    while True:
        memory = await get_json(server, f"/api/conversations/{conversation_id}/memory")
        count = await pool.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = $1 AND content <> ''",
            uuid.UUID(conversation_id),
        )
        if memory["embeddings"]["messages"] == count:
            return memory
        assert time.monotonic() < deadline, memory
        await asyncio.sleep(0.2)


async def get_json(
    server: RunningServer, path: str, token: str | None = None, status: int = 200
) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url + path, headers=server.auth(token)) as response,
    ):
        assert response.status == status, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_create_with_memory_settings(server: RunningServer, client: EventClient) -> None:
    created = await client.request(
        "conversation:create",
        {"title": "Set up", "memoryStrategy": "semantic", "maxContextTokens": 900},
    )
    assert created["type"] == "conversation:created", created
    settings = created["data"]["settings"]
    assert settings["memoryStrategy"] == "semantic"
    assert settings["maxContextTokens"] == 900
    assert settings["maxContextMessages"] == 20

    rejected = await client.request(
        "conversation:create", {"title": "Bad", "memoryStrategy": "everything"}
    )
    assert rejected["type"] == "conversation:error"
    assert rejected["data"]["code"] == "invalid_field"
    listed = await client.request("conversation:list", {"limit": 100})
    titles = [c["title"] for c in listed["data"]["conversations"]]
    assert "Bad" not in titles

    body = await post_json(server, "/api/conversations", {"summarizeThreshold": 8})
    assert body["settings"]["summarizeThreshold"] == 8
    assert body["settings"]["memoryStrategy"] == "sliding"


async def test_memory_routes(server: RunningServer, client: EventClient) -> None:
    created = await client.request("conversation:create", {"title": "Routes", "level": "A2"})
    conversation_id = created["data"]["conversationId"]
    await send_and_wait(client, conversation_id, "Hello, I like green tea.")

    memory = await get_json(server, f"/api/conversations/{conversation_id}/memory")
    assert memory["strategy"] == "sliding"
    # maxContextTokens 4000, within Ollama's 4096-token window less 120 for the reply.
    assert memory["tokenBudget"] == 3976
    assert memory["tokenCounter"] == "estimate"
    assert memory["summaries"] == []
    assert memory["keyFacts"] == []

    context = await get_json(server, f"/api/conversations/{conversation_id}/context")
    assert context["messages"][0]["role"] == "system"
    assert context["messages"][1] == {"role": "user", "content": "Hello, I like green tea."}
    assert context["messages"][-1]["role"] == "assistant"
    assert context["tokenCount"] <= context["tokenBudget"]
    assert context["messageRange"] == {"start": 1, "end": 2}

    stranger = await server.create_user("stranger")
    for route in ("memory", "context"):
        path = f"/api/conversations/{conversation_id}/{route}"
        body = await get_json(server, path, token=stranger, status=404)
        assert body["code"] == "not_found"
        body = await get_json(server, f"/api/conversations/not-a-uuid/{route}", status=400)
        assert body["code"] == "invalid_field"


async def test_summary_resumes_after_restart(tmp_path: Path, postgres_admin_dsn: str) -> None:
    """A summary cut off by a crash is written once by the next server, for the same
    messages, and the chain of ranges has no gap and no overlap."""
    hold = asyncio.Event()
    standin = OllamaStandIn()

    def answer(body: dict[str, Any]) -> ScriptedReply | None:
        script = memory_answer(body)
        if script is not None and is_summary_request(body) and not hold.is_set():
            script.wait_for = hold
        return script

    standin.answer = answer
    await standin.start()
    env = {**MEMORY_ENV, "OLLAMA_HOST": standin.url, "PARLEY_MEMORY_SUMMARY_INPUT_TOKENS": "150"}
    first = await start_server(tmp_path / "first", postgres_admin_dsn, **env)
    try:
        created = await post_json(first, "/api/conversations", {"title": "Restart"})
        conversation_id = created["conversationId"]
        pool = await first.db()
        for sequence in range(1, 61):
            role, content = message_text(sequence, 60)
            await insert_message(pool, uuid.UUID(conversation_id), role, content)
        # Setting the strategy wakes the memory worker, whose first summary then hangs.
        await patch_json(
            first,
            f"/api/conversations/{conversation_id}",
            {"memoryStrategy": "summarization", "summarizeThreshold": 10, "maxContextMessages": 4},
        )
        await wait_for_requests(standin, 1)
        hung = summary_new_messages(standin.requests[0])
        os.kill(first.process.pid, signal.SIGKILL)
        await asyncio.to_thread(first.process.wait, 10)
        assert await pool.fetchval("SELECT count(*) FROM conversation_summaries") == 0
    finally:
        await stop_server(first)

    hold.set()
    standin.requests.clear()
    second = await start_server(tmp_path / "second", postgres_admin_dsn, dsn=first.dsn, **env)
    second.token = first.token
    try:
        summaries = await wait_for_summaries(second, conversation_id, end=60 - 4)
        assert summary_new_messages(standin.requests[0]) == hung
        assert summaries[0]["messageRange"]["start"] == 1
        for before, after in itertools.pairwise(summaries):
            assert after["messageRange"]["start"] == before["messageRange"]["end"] + 1
        assert len(summaries) > 1  # 150 input tokens a summary: several blocks
        logged = await (await second.db()).fetch(
            "SELECT event_data FROM conversation_events WHERE event_type = 'memory:summarized'"
            " ORDER BY seq"
        )
        assert [row["event_data"]["summaryId"] for row in logged] == [
            s["summaryId"] for s in summaries
        ]
    finally:
        await stop_server(second)
        await standin.stop()


async def wait_for_requests(standin: OllamaStandIn, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(standin.requests) < count:
        assert time.monotonic() < deadline, "the memory worker sent no summary request"
        await asyncio.sleep(0.05)


async def wait_for_summaries(
    server: RunningServer, conversation_id: str, *, end: int
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        memory = await get_json(server, f"/api/conversations/{conversation_id}/memory")
        summaries: list[dict[str, Any]] = memory["summaries"]
        if summaries and summaries[-1]["messageRange"]["end"] == end:
            return summaries
        assert time.monotonic() < deadline, summaries
        await asyncio.sleep(0.2)


async def post_json(server: RunningServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url + path, json=body, headers=server.auth()) as response,
    ):
        assert response.status == 201, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def patch_json(server: RunningServer, path: str, body: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.patch(server.url + path, json=body, headers=server.auth()) as response,
    ):
        assert response.status == 200, await response.text()
