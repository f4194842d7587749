"""Conversation management for one user at a time: create, read, search, lifecycle, delete.

Every method takes the acting user's id and raises `not_found` for a conversation that
does not exist or belongs to someone else, so a client cannot tell the two apart. Changes
are published on the event bus (stored, then fanned out); reads return JSON-ready dicts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from server.chunking import ReplyChunker
from server.errors import (
    ClientError,
    ConversationClosedError,
    InvalidTransitionError,
    NotFoundError,
)
from server.event_bus import Subscriber
from server.json_views import (
    chunk_json,
    conversation_json,
    key_fact_json,
    message_json,
    search_result_json,
    summary_json,
    template_json,
)
from server.memory.context import MemorySettings
from server.protocol import (
    CreateConversation,
    ListConversations,
    MessageHistory,
    SearchMessages,
    SettingsChange,
)
from storage import conversations as store
from storage import memory as memory_store
from storage.chunks import insert_chunk
from storage.history import message_page
from storage.search import search
from storage.templates import get_template, list_templates

if TYPE_CHECKING:
    from server.services import Services

logger = logging.getLogger(__name__)

# The lifecycle: active and paused switch back and forth; either can be completed, and a
# completed conversation can be archived. Nothing leaves archived.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "active": ("paused", "completed"),
    "paused": ("active", "completed"),
    "completed": ("archived",),
    "archived": (),
}
CLOSED_STATUSES = ("completed", "archived")

# conversation:update field -> conversations column.
SETTINGS_FIELDS = {
    "title": "title",
    "level": "level",
    "aiSettings": "ai_settings",
    "memoryStrategy": "memory_strategy",
    "maxContextMessages": "max_context_messages",
    "maxContextTokens": "max_context_tokens",
    "autoSummarize": "auto_summarize",
    "summarizeThreshold": "summarize_threshold",
    "recordCalls": "record_calls",
}
MEMORY_FIELDS = {
    "memoryStrategy",
    "maxContextMessages",
    "maxContextTokens",
    "autoSummarize",
    "summarizeThreshold",
}


class ConversationService:
    def __init__(self, services: Services) -> None:
        self._services = services

    @property
    def _pool(self) -> asyncpg.Pool:
        return self._services.pool

    async def owned(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> asyncpg.Record:
        """Return the user's conversation row, or raise not_found."""
        row = await store.get_conversation(self._pool, conversation_id)
        if row is None or row["user_id"] != user_id:
            raise NotFoundError(f"conversation {conversation_id} not found")
        return row

    async def open_for_messages(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID
    ) -> asyncpg.Record:
        """Return a conversation that can take a new message, resuming it if paused."""
        row = await self.owned(user_id, conversation_id)
        if row["status"] in CLOSED_STATUSES:
            raise ConversationClosedError(
                f"conversation {conversation_id} is {row['status']} and takes no new messages"
            )
        if row["status"] == "paused":
            row, _resumed = await self._transition(row, "active")
        return row

    # -- create and read

    async def create(
        self,
        user_id: uuid.UUID,
        request: CreateConversation,
        *,
        subscribe: Callable[[uuid.UUID], Subscriber] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Create a conversation (from a template if named) and publish conversation:created.

        subscribe, when given, subscribes the requesting connection before the event is
        published, so that connection receives it with its requestId.
        """
        level = request.level
        title = request.title
        metadata: dict[str, Any] = {}
        opening = None
        if request.templateId is not None:
            template = await get_template(self._pool, request.templateId)
            if template is None:
                raise NotFoundError(f"template {request.templateId} not found")
            level = level or template["level"]
            title = title or template["name"]
            metadata = {"templateId": str(template["id"]), "scenario": template["system_prompt"]}
            opening = template["initial_message"]
        row = await store.create_conversation(
            self._pool,
            user_id,
            title=title or "New conversation",
            level=level or "A1",
            metadata=metadata,
            settings={
                SETTINGS_FIELDS[name]: value for name, value in request.given_settings().items()
            },
        )
        origin = subscribe(row["id"]) if subscribe is not None else None
        # conversation:created is the log's first event, so the conversation's lastSeq is 1.
        body = {**conversation_json(row), "lastSeq": 1}
        await self._services.bus.publish(
            row["id"], "conversation:created", body, origin=origin, request_id=request_id
        )
        if opening:
            await self._post_opening(row["id"], opening)
        logger.info("user %s created conversation %s", user_id, row["id"])
        return body

    async def _post_opening(self, conversation_id: uuid.UUID, text: str) -> None:
        """Store the template's opening line as the tutor's first message, cut into chunks
        like a reply. It is not synthesised, because no client is listening yet:
        audio:request synthesises a chunk on demand."""
        chunker = ReplyChunker(first_chunk_words=self._services.settings.first_chunk_words)
        chunks = chunker.feed(text) + chunker.finish()
        content = " ".join(chunk.text for chunk in chunks)
        metadata = {"status": "completed", "opening": True}
        message = await store.insert_message(
            self._pool, conversation_id, "assistant", content, metadata=metadata
        )
        listed = []
        for chunk in chunks:
            chunk_id = uuid.uuid4()
            await insert_chunk(
                self._pool,
                chunk_id,
                message.id,
                chunk.index,
                text=chunk.text,
                emotion=chunk.emotion,
                icon=chunk.icon,
                pause_after_s=chunk.pause_after_s,
                emphasis=chunk.emphasis,
            )
            listed.append(chunk_json(chunk, chunk_id))
        await self._services.bus.publish(
            conversation_id,
            "message:received",
            {
                "messageId": str(message.id),
                "role": "assistant",
                "content": content,
                "sequenceNumber": message.sequence_number,
                "chunks": listed,
                "metadata": metadata,
            },
        )

    async def load(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, message_limit: int
    ) -> dict[str, Any]:
        row = await self.owned(user_id, conversation_id)
        rows, has_more = await message_page(self._pool, conversation_id, limit=message_limit)
        return {
            "conversation": conversation_json(row),
            # Oldest first, the order a conversation view shows them in.
            "messages": [message_json(r) for r in reversed(rows)],
            "hasMoreMessages": has_more,
        }

    async def list(self, user_id: uuid.UUID, request: ListConversations) -> dict[str, Any]:
        rows, total = await store.list_conversations(
            self._pool,
            user_id,
            status=request.status,
            limit=request.limit,
            offset=request.offset,
        )
        return {
            "conversations": [conversation_json(row) for row in rows],
            "total": total,
            "limit": request.limit,
            "offset": request.offset,
        }

    async def history(self, user_id: uuid.UUID, request: MessageHistory) -> dict[str, Any]:
        await self.owned(user_id, request.conversationId)
        rows, has_more = await message_page(
            self._pool,
            request.conversationId,
            limit=request.limit,
            before=request.beforeSequence,
            after=request.afterSequence,
        )
        return {
            "conversationId": str(request.conversationId),
            "order": "oldest_first" if request.afterSequence is not None else "newest_first",
            "messages": [message_json(row) for row in rows],
            "hasMore": has_more,
        }

    async def search(self, user_id: uuid.UUID, request: SearchMessages) -> dict[str, Any]:
        rows = await search(self._pool, user_id, request.query, limit=request.limit)
        return {"query": request.query, "results": [search_result_json(row) for row in rows]}

    async def templates(self) -> dict[str, Any]:
        return {"templates": [template_json(row) for row in await list_templates(self._pool)]}

    # -- change

    async def set_status(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        status: str,
        *,
        origin: Subscriber | None = None,
        request_id: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Move the conversation to status; return the conversation:status-changed data
        and whether anything changed."""
        row = await self.owned(user_id, conversation_id)
        previous = row["status"]
        changed = False
        if previous != status:
            row, changed = await self._transition(row, status, origin=origin, request_id=request_id)
        if not changed:
            # Already in that status, perhaps set by a racing request: nothing changed
            # and nothing is published.
            return _status_change(row, row["status"]), False
        if status in CLOSED_STATUSES:
            await self._services.end_calls(conversation_id, f"conversation {status}")
        return _status_change(row, previous), True

    def check_patch(self, row: asyncpg.Record, status: str | None, settings: bool) -> None:
        """Raise the error a status change and a settings change together would meet,
        before either is applied, so a rejected request changes nothing."""
        if settings and row["status"] == "archived":
            raise ConversationClosedError(f"conversation {row['id']} is archived")
        moving = status is not None and status != row["status"]
        if moving and status not in TRANSITIONS[row["status"]]:
            raise _transition_error(row["id"], row["status"], str(status))

    async def _transition(
        self,
        row: asyncpg.Record,
        status: str,
        *,
        origin: Subscriber | None = None,
        request_id: str | None = None,
    ) -> tuple[asyncpg.Record, bool]:
        """Move the conversation to status and publish the change.

        Returns the row and whether this call made the change. It is False when a racing
        request made the same change first.
        """
        previous = row["status"]
        allowed_from = tuple(s for s, targets in TRANSITIONS.items() if status in targets)
        updated = await store.change_status(self._pool, row["id"], status, allowed_from)
        if updated is None:
            current = await store.get_conversation(self._pool, row["id"])
            if current is None:
                raise NotFoundError(f"conversation {row['id']} not found")
            if current["status"] == status:
                return current, False
            raise _transition_error(row["id"], current["status"], status)
        await self._services.bus.publish(
            row["id"],
            "conversation:status-changed",
            _status_change(updated, previous),
            origin=origin,
            request_id=request_id,
        )
        logger.info("conversation %s: %s -> %s", row["id"], previous, status)
        return updated, True

    async def update(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        request: SettingsChange,
        *,
        origin: Subscriber | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        row = await self.owned(user_id, conversation_id)
        if row["status"] == "archived":
            raise ConversationClosedError(f"conversation {row['id']} is archived")
        changed = request.changed_settings()
        self._check_model(request)
        changes: dict[str, Any] = {}
        for name in changed:
            value = getattr(request, name)
            if name == "aiSettings" and value is not None:
                value = value.model_dump(exclude_none=True)
            changes[SETTINGS_FIELDS[name]] = value
        updated = await store.update_settings(self._pool, row["id"], changes)
        if updated is None:
            raise NotFoundError(f"conversation {row['id']} not found")
        body = {**conversation_json(updated), "changed": sorted(changed)}
        await self._services.bus.publish(
            row["id"], "conversation:updated", body, origin=origin, request_id=request_id
        )
        if changed & MEMORY_FIELDS:
            # A new strategy may need summaries or embeddings the old one did not keep.
            self._services.memory.notify(row["id"])
        return body

    def _check_model(self, request: SettingsChange) -> None:
        model = request.aiSettings.model if request.aiSettings is not None else None
        settings = self._services.settings
        allowed = settings.ollama_allowed_models or (settings.ollama_model,)
        if model is not None and model not in allowed:
            raise ClientError(
                f"model {model!r} is not allowed on this server: use one of "
                f"{', '.join(allowed)} (PARLEY_OLLAMA_ALLOWED_MODELS)"
            )

    async def memory(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> dict[str, Any]:
        """Return the conversation's memory: settings, token budget, summaries, key facts
        and how many messages have embeddings."""
        row = await self.owned(user_id, conversation_id)
        memory = self._services.memory
        settings = MemorySettings.from_row(row)
        embedder = memory.embedder
        summaries = await memory_store.list_summaries(self._pool, row["id"])
        facts = await memory_store.list_key_facts(self._pool, row["id"])
        embedded = (
            await memory_store.embedding_count(self._pool, row["id"], embedder.name)
            if embedder is not None
            else 0
        )
        return {
            "conversationId": str(row["id"]),
            "strategy": settings.strategy,
            "tokenBudget": memory.budget(settings),
            "tokenCounter": memory.counts.counter.name,
            "summaries": [summary_json(summary) for summary in summaries],
            "keyFacts": [key_fact_json(fact) for fact in facts],
            "embeddings": {
                "model": embedder.name if embedder is not None else None,
                "messages": embedded,
            },
        }

    async def context(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> dict[str, Any]:
        """Return the context the next reply would be generated from, as of now."""
        row = await self.owned(user_id, conversation_id)
        context = await self._services.memory.context_for(row)
        return {
            "conversationId": str(row["id"]),
            **context.event_data(),
            "messages": [
                {"role": message.role, "content": message.content} for message in context.messages
            ],
        }

    async def delete(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        """Delete the conversation with its rows and audio files; end its calls first."""
        await self.owned(user_id, conversation_id)
        await self._services.end_calls(conversation_id, "conversation deleted")
        await self._services.messages.cancel_replies(conversation_id)
        self._services.memory.forget(conversation_id)
        file_ids = await store.delete_conversation(self._pool, conversation_id)
        removed = await self._services.audio_files.delete(file_ids)
        # The calls ended above, so no recording of the conversation is still writing.
        removed += await asyncio.to_thread(
            self._services.recording_files.delete_conversation, conversation_id
        )
        # The log went with the conversation, so this notice carries no seq.
        self._services.bus.notify(conversation_id, "conversation:deleted", {})
        logger.info(
            "user %s deleted conversation %s and %d audio files",
            user_id,
            conversation_id,
            removed,
        )


def _transition_error(
    conversation_id: uuid.UUID, current: str, target: str
) -> InvalidTransitionError:
    allowed = ", ".join(TRANSITIONS.get(current, ())) or "nothing"
    return InvalidTransitionError(
        f"conversation {conversation_id} cannot go from {current} to {target}; "
        f"from {current} it can go to: {allowed}"
    )


def _status_change(row: asyncpg.Record, previous: str) -> dict[str, Any]:
    """Build the data of conversation:status-changed."""
    return {
        "conversationId": str(row["id"]),
        "status": row["status"],
        "previousStatus": previous,
        "updatedAt": row["updated_at"].isoformat(),
    }
