"""REST routes: the conversation list, one conversation with its messages, search, status
and settings changes, delete, templates and the event log. Every route needs a token."""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web

from server.auth import request_user
from server.errors import ClientError
from server.json_body import parse_uuid, read_body
from server.json_views import conversation_json
from server.protocol import (
    ConversationPatch,
    CreateConversation,
    ListConversations,
    LoadConversation,
    MessageHistory,
    ModelT,
    SearchMessages,
    parse_body,
    validation_error,
)
from server.services import Services
from storage.events import events_after

# Largest REST body: conversation create and patch bodies are small.
MAX_BODY_BYTES = 16 * 1024
MAX_EVENTS_PAGE = 1000


async def _user(request: web.Request) -> tuple[Services, uuid.UUID]:
    return await request_user(request)


def _path_id(request: web.Request) -> uuid.UUID:
    return parse_uuid(request.match_info["conversation_id"], "conversation id")


def _query(model: type[ModelT], request: web.Request, **extra: Any) -> ModelT:
    """Validate query parameters; numbers arrive as text, so this parse is not strict."""
    values: dict[str, Any] = {**request.query, **extra}
    try:
        return model.model_validate(values, strict=False)
    except ValueError as exc:
        raise validation_error(exc) from None


async def me(request: web.Request) -> web.Response:
    services, user_id = await _user(request)
    name = await services.pool.fetchval("SELECT name FROM users WHERE id = $1", user_id)
    return web.json_response({"userId": str(user_id), "name": name})


async def list_conversations(request: web.Request) -> web.Response:
    services, user_id = await _user(request)
    body = await services.conversations.list(user_id, _query(ListConversations, request))
    return web.json_response(body)


async def create_conversation(request: web.Request) -> web.Response:
    services, user_id = await _user(request)
    raw = await read_body(request, MAX_BODY_BYTES)
    create = parse_body(CreateConversation, raw or b"{}")
    body = await services.conversations.create(user_id, create)
    return web.json_response(body, status=201)


async def get_conversation(request: web.Request) -> web.Response:
    services, user_id = await _user(request)
    load = _query(LoadConversation, request, conversationId=str(_path_id(request)))
    body = await services.conversations.load(user_id, load.conversationId, load.messageLimit)
    return web.json_response(body)


async def message_history(request: web.Request) -> web.Response:
    services, user_id = await _user(request)
    history = _query(MessageHistory, request, conversationId=str(_path_id(request)))
    return web.json_response(await services.conversations.history(user_id, history))


async def conversation_events(request: web.Request) -> web.Response:
    """Return the event log after afterSeq, for a client that catches up without a socket."""
    services, user_id = await _user(request)
    conversation_id = _path_id(request)
    after = _query_int(request, "afterSeq", 0)
    limit = _query_int(request, "limit", MAX_EVENTS_PAGE)
    if not 1 <= limit <= MAX_EVENTS_PAGE:
        raise ClientError(f"query parameter 'limit' must be 1-{MAX_EVENTS_PAGE}, not {limit}")
    await services.conversations.owned(user_id, conversation_id)
    rows = await events_after(services.pool, conversation_id, after, limit + 1)
    events = [
        {"type": row["event_type"], "seq": row["seq"], "data": row["event_data"]}
        for row in rows[:limit]
    ]
    return web.json_response(
        {"conversationId": str(conversation_id), "events": events, "hasMore": len(rows) > limit}
    )


async def patch_conversation(request: web.Request) -> web.Response:
    """Change the settings, the status, or both (the settings first, so that settings sent
    with an archive request still apply)."""
    services, user_id = await _user(request)
    conversation_id = _path_id(request)
    patch = parse_body(ConversationPatch, await read_body(request, MAX_BODY_BYTES))
    conversations = services.conversations
    current = await conversations.owned(user_id, conversation_id)
    conversations.check_patch(current, patch.status, bool(patch.changed_settings()))
    if patch.changed_settings():
        await conversations.update(user_id, conversation_id, patch)
    if patch.status is not None:
        await conversations.set_status(user_id, conversation_id, patch.status)
    row = await conversations.owned(user_id, conversation_id)
    return web.json_response(conversation_json(row))


async def conversation_memory(request: web.Request) -> web.Response:
    services, user_id = await _user(request)
    return web.json_response(await services.conversations.memory(user_id, _path_id(request)))


async def conversation_context(request: web.Request) -> web.Response:
    services, user_id = await _user(request)
    return web.json_response(await services.conversations.context(user_id, _path_id(request)))


async def delete_conversation(request: web.Request) -> web.Response:
    services, user_id = await _user(request)
    await services.conversations.delete(user_id, _path_id(request))
    return web.Response(status=204)


async def search(request: web.Request) -> web.Response:
    services, user_id = await _user(request)
    query = dict(request.query)
    if "q" in query:
        query["query"] = query.pop("q")
    try:
        request_model = SearchMessages.model_validate(query, strict=False)
    except ValueError as exc:
        raise validation_error(exc) from None
    return web.json_response(await services.conversations.search(user_id, request_model))


async def templates(request: web.Request) -> web.Response:
    services, _user_id = await _user(request)
    return web.json_response(await services.conversations.templates())


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also accepts characters such as "²" that int() rejects.
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise ClientError(f"query parameter {name!r} must be a whole number, not {raw[:20]!r}")
    return int(raw)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/conversations", list_conversations)
    app.router.add_post("/api/conversations", create_conversation)
    app.router.add_get("/api/conversations/{conversation_id}", get_conversation)
    app.router.add_patch("/api/conversations/{conversation_id}", patch_conversation)
    app.router.add_delete("/api/conversations/{conversation_id}", delete_conversation)
    app.router.add_get("/api/conversations/{conversation_id}/messages", message_history)
    app.router.add_get("/api/conversations/{conversation_id}/events", conversation_events)
    app.router.add_get("/api/conversations/{conversation_id}/memory", conversation_memory)
    app.router.add_get("/api/conversations/{conversation_id}/context", conversation_context)
    app.router.add_get("/api/search", search)
    app.router.add_get("/api/templates", templates)
