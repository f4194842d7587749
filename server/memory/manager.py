"""The memory manager: the context for each reply, and the background work that keeps
summaries, key facts and embeddings current."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from server.memory.context import AssembledContext, MemorySettings, MemorySources, assemble
from server.memory.embeddings import Embedder, EmbeddingError, EmbeddingIndex
from server.memory.gate import ForegroundGate
from server.memory.tokens import CachedCounts, TokenCounter
from server.memory.worker import MemoryWorker
from server.prompts import tutor_system_prompt
from storage.memory import (
    ContextMessage,
    context_sources,
    messages_by_sequence,
    store_embeddings,
)

if TYPE_CHECKING:
    import asyncpg

    from server.event_bus import EventBus
    from server.llm.base import ChatMessage, ChatModel
    from server.settings import Settings

logger = logging.getLogger(__name__)

# Token counts kept for stored texts (about 100 bytes each).
COUNT_CACHE_ENTRIES = 50_000
# A reply waits this long at most for the embedding of its message, then goes without
# retrieval: the packaged model takes about 10 ms, a stalled Ollama forever.
QUERY_EMBED_TIMEOUT_S = 5.0
# Budgets shrink at most by this factor, however far off a backend report was.
MAX_UNDERCOUNT = 3.0
# Retrieved messages less similar than this to the newest one are left out: with
# all-MiniLM-L6-v2, unrelated sentences score about 0 to 0.2.
MIN_SIMILARITY = 0.2


class MemoryManager:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        settings: Settings,
        llm: ChatModel,
        bus: EventBus,
        counter: TokenCounter,
        window_tokens: int,
        embedder: Embedder | None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self.counts = CachedCounts(counter, COUNT_CACHE_ENTRIES)
        self.window_tokens = window_tokens
        self.embedder = embedder
        self.gate = ForegroundGate(settings.memory_quiet_s)
        self.index = (
            EmbeddingIndex(pool, embedder.name, settings.memory_index_conversations)
            if embedder is not None
            else None
        )
        self.worker = MemoryWorker(
            pool=pool,
            llm=llm,
            bus=bus,
            counts=self.counts,
            gate=self.gate,
            settings=settings,
            embedder=embedder,
            index=self.index,
            system_message=self._system_message,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        # How much the token counter has undercounted at worst, from backend reports; 1.0
        # until a report shows otherwise.
        self.undercount = 1.0

    def start(self) -> None:
        self.worker.start()

    async def close(self) -> None:
        await self.worker.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        close = getattr(self.embedder, "close", None)
        if close is not None:
            await close()

    def notify(self, conversation_id: uuid.UUID) -> None:
        self.worker.notify(conversation_id)

    def messages_added(self, conversation: Any) -> None:
        """Wake the background work for a conversation that got new messages, if its
        settings keep summaries or embeddings."""
        memory = MemorySettings.from_row(conversation)
        if memory.keeps_summaries or memory.strategy == "semantic":
            self.worker.notify(conversation["id"])

    def forget(self, conversation_id: uuid.UUID) -> None:
        """Drop what is kept in memory for a deleted conversation."""
        self.worker.forget(conversation_id)
        if self.index is not None:
            self.index.drop(conversation_id)

    def budget(self, memory: MemorySettings) -> int:
        """Return the conversation's token budget, within what the model's window leaves
        after the reply's tokens. Where counts are estimates that the backend has found
        too low, the budget shrinks by the worst ratio seen."""
        room = self.window_tokens - self._settings.llm_max_reply_tokens
        budget = min(memory.max_tokens, room)
        return max(1, int(budget / self.undercount))

    def observe_prompt(self, counted: int, reported: int | None) -> None:
        """Compare a prompt's counted tokens with the count the backend reported."""
        if reported is None or counted <= 0 or reported <= counted * self.undercount:
            return
        self.undercount = min(reported / counted, MAX_UNDERCOUNT)
        logger.warning(
            "the backend counted %d prompt tokens where %s counted %d: budgets now shrink "
            "by a factor of %.2f",
            reported,
            self.counts.counter.name,
            counted,
            self.undercount,
        )

    def status(self) -> dict[str, Any]:
        return {
            "tokenCounter": self.counts.counter.name,
            "windowTokens": self.window_tokens,
            "embeddings": self.embedder.name if self.embedder is not None else None,
            "undercount": round(self.undercount, 3),
            "backlog": self.worker.backlog,
        }

    async def context_for(self, conversation: Any) -> AssembledContext:
        """Assemble the prompt for a reply to the conversation's newest message."""
        started = time.perf_counter()
        memory = MemorySettings.from_row(conversation)
        sources = await self._load_sources(conversation, memory)

        budget = self.budget(memory)
        uncounted = not all(self.counts.cached(message.id) for message in sources.recent)
        if sources.retrieved or uncounted:
            # Texts to tokenize: up to max_context_messages of them, in a worker thread.
            context = await asyncio.to_thread(assemble, sources, memory, budget, self.counts)
        else:
            # Every count is known, so assembling is list work of well under a millisecond,
            # cheaper than the thread hand-off.
            context = assemble(sources, memory, budget, self.counts)

        logger.debug(
            "conversation %s: %s context of %d/%d tokens in %.1f ms",
            conversation["id"],
            memory.strategy,
            context.token_count,
            context.budget,
            (time.perf_counter() - started) * 1000,
        )
        return context

    async def _load_sources(self, conversation: Any, memory: MemorySettings) -> MemorySources:
        conversation_id: uuid.UUID = conversation["id"]
        recent, summary, facts = await context_sources(
            self._pool,
            conversation_id,
            memory.max_messages,
            with_summary=memory.strategy in ("summarization", "hierarchical"),
        )
        scenario = (conversation["metadata"] or {}).get("scenario")
        sources = MemorySources(
            system_prompt=tutor_system_prompt(conversation["level"], scenario),
            recent=recent,
            summary=summary,
            facts=facts,
        )
        if memory.strategy == "semantic":
            sources.retrieved = await self._retrieve(conversation_id, recent)
        return sources

    async def _system_message(self, conversation: Any) -> ChatMessage:
        return (await self.context_for(conversation)).messages[0]

    async def _retrieve(
        self, conversation_id: uuid.UUID, recent: list[ContextMessage]
    ) -> list[tuple[ContextMessage, float]]:
        """Return the older messages most similar to the newest one, best first."""
        if self.index is None or not recent:
            return []
        query = await self._query_vector(conversation_id, recent[-1])
        if query is None:
            return []
        hits = await self.index.search(
            conversation_id,
            query,
            before=recent[0].sequence_number,
            top_k=self._settings.memory_semantic_top_k,
        )
        scores = {sequence: score for sequence, score in hits if score >= MIN_SIMILARITY}
        if not scores:
            return []
        found = await messages_by_sequence(self._pool, conversation_id, list(scores))
        found.sort(key=lambda message: -scores[message.sequence_number])
        return [(message, scores[message.sequence_number]) for message in found]

    async def _query_vector(
        self, conversation_id: uuid.UUID, message: ContextMessage
    ) -> np.ndarray | None:
        """Embed the newest message now (it is what the retrieval compares against) and
        store its embedding in the background."""
        assert self.embedder is not None and self.index is not None
        try:
            await self.index.load(conversation_id)
            vectors = await asyncio.wait_for(
                self.embedder.embed([message.content]), QUERY_EMBED_TIMEOUT_S
            )
        except (EmbeddingError, TimeoutError) as exc:
            logger.warning(
                "conversation %s: no semantic retrieval for message %d: %s",
                conversation_id,
                message.sequence_number,
                exc,
            )
            return None
        self.index.add(conversation_id, [message.sequence_number], vectors)
        task = asyncio.create_task(
            store_embeddings(
                self._pool, conversation_id, self.embedder.name, [message.id], vectors
            ),
            name=f"memory-embedding-{message.id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._stored)
        vector: np.ndarray = vectors[0]
        return vector

    def _stored(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("storing an embedding failed", exc_info=task.exception())
