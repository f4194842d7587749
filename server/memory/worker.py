"""Background memory work: summaries, key facts and message embeddings.

One task works through the conversations that were notified, one at a time. Each step is
derived from what is stored (the last summary's range, summaries without facts, messages
without embeddings), so a restart resumes where the last run stopped: the start-up scan
finds the conversations still behind. Model steps run only while the foreground gate is
quiet and are stopped when a reply or a caller's turn begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from server.json_views import key_fact_json, summary_json
from server.llm.base import ChatMessage, ChatModel, GenerationOptions, LLMUnavailableError
from server.memory.context import MemorySettings, truncate_tokens
from server.memory.embeddings import Embedder, EmbeddingError, EmbeddingIndex
from server.memory.gate import ForegroundGate, Preempted
from server.memory.prompts import (
    clean_summary,
    facts_request,
    parse_facts,
    summary_request,
)
from server.memory.tokens import CachedCounts
from storage.conversations import get_conversation
from storage.memory import (
    ContextMessage,
    KeyFact,
    Summary,
    conversations_with_memory_work,
    insert_summary,
    last_summarised,
    latest_summary,
    mark_facts_extracted,
    messages_in_range,
    messages_without_embedding,
    store_embeddings,
    summaries_without_facts,
    upsert_key_facts,
)

if TYPE_CHECKING:
    from server.event_bus import EventBus
    from server.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

EMBED_BATCH = 32
MAX_RETRY_S = 3600.0
# Messages read for one summary at most, before the token limit applies.
SUMMARY_MAX_MESSAGES = 200


@dataclass(frozen=True)
class SummaryBlock:
    start: int
    end: int
    messages: list[ContextMessage]
    token_count: int


class MemoryWorker:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        llm: ChatModel,
        bus: EventBus,
        counts: CachedCounts,
        gate: ForegroundGate,
        settings: Settings,
        embedder: Embedder | None,
        index: EmbeddingIndex | None,
        system_message: Callable[[asyncpg.Record], Awaitable[ChatMessage]],
    ) -> None:
        self._pool = pool
        self._llm = llm
        self._bus = bus
        self._counts = counts
        self._gate = gate
        self._settings = settings
        self._embedder = embedder
        self._index = index
        # Insertion-ordered set of conversations to check. Each appears once, so the
        # conversations that exist bound it.
        self._pending: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retries: set[asyncio.TimerHandle] = set()
        # Failures in a row per conversation; each doubles the wait before the next retry.
        self._failures: dict[uuid.UUID, int] = {}
        # When each failed conversation's retry is due, on the monotonic clock.
        self._retry_at: dict[uuid.UUID, float] = {}
        # Returns the system message a reply in the conversation would get now.
        self._system_message = system_message
        self._used_model = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="memory-worker")

    async def close(self) -> None:
        for handle in self._retries:
            handle.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def notify(self, conversation_id: uuid.UUID) -> None:
        """Ask for the conversation's memory to be brought up to date. A conversation
        waiting to retry a failed step waits on; its retry timer notifies it."""
        if conversation_id in self._retry_at and time.monotonic() < self._retry_at[conversation_id]:
            return
        self._pending[conversation_id] = None
        self._wake.set()

    def forget(self, conversation_id: uuid.UUID) -> None:
        self._pending.pop(conversation_id, None)
        self._failures.pop(conversation_id, None)
        self._retry_at.pop(conversation_id, None)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def _run(self) -> None:
        try:
            for conversation_id in await conversations_with_memory_work(self._pool):
                self.notify(conversation_id)
            if self._pending:
                logger.info("memory work resumes for %d conversations", len(self._pending))
        except Exception:
            logger.exception("scanning for unfinished memory work failed")
        while True:
            await self._wake.wait()
            if not self._pending:
                self._wake.clear()
                continue
            conversation_id, _ = self._pending.popitem(last=False)
            await self._work_safely(conversation_id)

    async def _work_safely(self, conversation_id: uuid.UUID) -> None:
        try:
            await self._work_on(conversation_id)
            self._failures.pop(conversation_id, None)
        except Preempted:
            # Foreground work started: try again once it is quiet, first in line.
            self._pending[conversation_id] = None
            self._pending.move_to_end(conversation_id, last=False)
        except asyncpg.ForeignKeyViolationError:
            logger.info("conversation %s was deleted during its memory work", conversation_id)
        except (LLMUnavailableError, EmbeddingError) as exc:
            delay_s = self._retry_later(conversation_id)
            logger.warning(
                "memory work on conversation %s failed, retrying in %.0f s: %s",
                conversation_id,
                delay_s,
                exc,
            )
        except Exception:
            delay_s = self._retry_later(conversation_id)
            logger.exception(
                "memory work on conversation %s failed, retrying in %.0f s",
                conversation_id,
                delay_s,
            )

    def _retry_later(self, conversation_id: uuid.UUID) -> float:
        """Schedule another try, after memory_retry_s doubled per failure in a row (at
        most an hour); return the delay."""
        failures = self._failures.get(conversation_id, 0)
        self._failures[conversation_id] = failures + 1
        delay_s = min(self._settings.memory_retry_s * 2 ** min(failures, 16), MAX_RETRY_S)
        loop = asyncio.get_running_loop()

        def retry() -> None:
            self._retries.discard(handle)
            self._retry_at.pop(conversation_id, None)
            self.notify(conversation_id)

        self._retry_at[conversation_id] = time.monotonic() + delay_s
        handle = loop.call_later(delay_s, retry)
        self._retries.add(handle)
        return delay_s

    async def catch_up(self, conversation_id: uuid.UUID) -> None:
        """Bring the conversation's summaries, facts and embeddings up to date now, in the
        caller's task; the errors the background loop retries are raised."""
        await self._work_on(conversation_id)

    async def _work_on(self, conversation_id: uuid.UUID) -> None:
        row = await get_conversation(self._pool, conversation_id)
        if row is None:
            return
        self._used_model = False
        await self._update_memory(conversation_id, row)
        if self._used_model:
            await self._restore_prefix(conversation_id)

    async def _restore_prefix(self, conversation_id: uuid.UUID) -> None:
        """Have the model read the conversation's system message again, with its new
        summary or facts. Backends keep the last prompt's state (llama.cpp's prefix cache),
        and a summary prompt displaced the tutor's, which the next reply would otherwise
        evaluate on its way to first audio."""
        row = await get_conversation(self._pool, conversation_id)
        if row is None:
            return
        system = await self._system_message(row)
        await self._generate([system, ChatMessage("user", "Hello.")], max_tokens=1)

    async def _update_memory(self, conversation_id: uuid.UUID, row: asyncpg.Record) -> None:
        memory = MemorySettings.from_row(row)
        if memory.keeps_summaries:
            continuing = False
            while (block := await self._due_block(conversation_id, memory, continuing)) is not None:
                summary = await self._summarize(conversation_id, block)
                if summary is None:
                    break
                continuing = True
                if memory.keeps_facts:
                    await self._extract_facts(conversation_id, summary, block.messages)
        if memory.keeps_facts:
            for summary in await summaries_without_facts(self._pool, conversation_id):
                messages = await messages_in_range(
                    self._pool, conversation_id, summary.start, summary.end, SUMMARY_MAX_MESSAGES
                )
                await self._extract_facts(conversation_id, summary, messages)
        if memory.strategy == "semantic":
            await self._embed_missing(conversation_id)

    # -- summaries

    async def _due_block(
        self, conversation_id: uuid.UUID, memory: MemorySettings, continuing: bool
    ) -> SummaryBlock | None:
        """Return the next messages to fold into the summary, or None if none are due.

        Summaries start once the conversation contains more than summarize_threshold messages,
        and cover the messages older than the recent window (max_context_messages) in
        batches of at least memory_summary_batch messages. A backlog longer than one
        summary's input is folded in whole, `continuing` marking the summaries after its
        first, so no remainder waits for a batch.
        """
        row = await get_conversation(self._pool, conversation_id)
        if row is None:
            return None
        newest = row["last_message_seq"]
        done = await last_summarised(self._pool, conversation_id)
        if done == 0 and newest <= memory.summarize_threshold:
            return None
        end = newest - memory.max_messages
        # The first summary takes whatever left the window; later ones wait for a batch.
        minimum = self._settings.memory_summary_batch if done and not continuing else 1
        if end - done < minimum:
            return None
        messages = await messages_in_range(
            self._pool, conversation_id, done + 1, end, SUMMARY_MAX_MESSAGES
        )
        return self._fit_block(done + 1, end, messages)

    def _fit_block(self, start: int, end: int, messages: list[ContextMessage]) -> SummaryBlock:
        """Keep the messages that fit the summary's input budget. The block ends at the last
        one kept, or at `end` when all fit, so it covers any empty messages between."""
        limit = self._settings.memory_summary_input_tokens
        kept: list[ContextMessage] = []
        tokens = 0
        for message in messages:
            cost = self._counts.count(message.id, message.content)
            if kept and tokens + cost > limit:
                break
            if cost > limit:
                # A message longer than one summary's input alone is read up to the limit,
                # so the request still fits the model's window.
                content = truncate_tokens(
                    message.content, limit, self._counts.counter.count, keep="start"
                )
                message = ContextMessage(message.id, message.role, content, message.sequence_number)
                cost = limit
            kept.append(message)
            tokens += cost
        all_fit = len(kept) == len(messages) and len(messages) < SUMMARY_MAX_MESSAGES
        block_end = end if all_fit or not kept else kept[-1].sequence_number
        return SummaryBlock(start, block_end, kept, tokens)

    async def _summarize(self, conversation_id: uuid.UUID, block: SummaryBlock) -> Summary | None:
        previous = await latest_summary(self._pool, conversation_id)
        words = self._settings.memory_summary_words
        request = summary_request(previous.text if previous else None, block.messages, words)
        text = clean_summary(await self._generate(request, max_tokens=words * 2))
        if not text:
            raise LLMUnavailableError(f"{self._llm.name} wrote an empty summary")
        summary = await insert_summary(
            self._pool, conversation_id, text, block.start, block.end, block.token_count
        )
        if summary is None:
            logger.info(
                "conversation %s: messages %d-%d were summarised meanwhile",
                conversation_id,
                block.start,
                block.end,
            )
            return None
        logger.info(
            "conversation %s: summarised messages %d-%d (%d tokens)",
            conversation_id,
            block.start,
            block.end,
            block.token_count,
        )
        await self._bus.publish(
            conversation_id,
            "memory:summarized",
            summary_json(summary),
        )
        return summary

    async def _generate(self, messages: list[ChatMessage], *, max_tokens: int) -> str:
        """Run the model once the foreground is quiet; Preempted if a turn begins."""
        await self._gate.wait_quiet()
        self._used_model = True
        options = GenerationOptions(
            max_tokens=max_tokens,
            temperature=0.2,
            context_tokens=self._settings.ollama_context_tokens,
        )

        async def collect() -> str:
            pieces = []
            stream = self._llm.stream_chat(messages, options)
            async with contextlib.aclosing(stream):
                async for piece in stream:
                    pieces.append(piece)
            return "".join(pieces)

        return await self._gate.run_unless_preempted(self._time_limited(collect()))

    async def _time_limited(self, step: Awaitable[T]) -> T:
        limit_s = self._settings.memory_step_timeout_s
        try:
            return await asyncio.wait_for(step, limit_s)
        except TimeoutError:
            message = f"a memory step did not finish within {limit_s:.0f} s"
            raise LLMUnavailableError(message) from None

    # -- key facts

    async def _extract_facts(
        self, conversation_id: uuid.UUID, summary: Summary, messages: list[ContextMessage]
    ) -> None:
        if any(message.role == "user" for message in messages):
            answer = await self._generate(facts_request(messages), max_tokens=160)
            facts = parse_facts(answer)
            if facts:
                stored = await upsert_key_facts(self._pool, conversation_id, facts)
                await self._publish_facts(conversation_id, stored)
            logger.info(
                "conversation %s: %d key facts from messages %d-%d",
                conversation_id,
                len(facts),
                summary.start,
                summary.end,
            )
        await mark_facts_extracted(self._pool, summary.id)

    async def _publish_facts(self, conversation_id: uuid.UUID, facts: list[KeyFact]) -> None:
        await self._bus.publish(
            conversation_id,
            "memory:key-facts-extracted",
            {"facts": [key_fact_json(fact) for fact in facts]},
        )

    # -- embeddings

    async def _embed_missing(self, conversation_id: uuid.UUID) -> None:
        embedder = self._embedder
        if embedder is None:
            return
        while True:
            await self._gate.wait_quiet()
            batch = await messages_without_embedding(
                self._pool, conversation_id, embedder.name, EMBED_BATCH
            )
            if not batch:
                return
            vectors = await self._gate.run_unless_preempted(
                self._time_limited(embedder.embed([message.content for message in batch]))
            )
            await store_embeddings(
                self._pool, conversation_id, embedder.name, [m.id for m in batch], vectors
            )
            if self._index is not None:
                self._index.add(conversation_id, [m.sequence_number for m in batch], vectors)
