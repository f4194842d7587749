"""Measure context assembly: the time the memory manager takes to build a reply's prompt,
per strategy, in conversations of 100, 1,000 and 10,000 messages.

    .venv/bin/python -m bench.memory [--sizes 100,1000,10000] [--turns 50]
        [--counter llama|estimate] [--strategies sliding,...] [--database-url URL]

Each conversation is seeded in one statement with alternating learner and tutor messages
(every 25th learner message a 1,300-character paragraph). The summarization and
hierarchical conversations get a chain of stored summaries (one per 50 messages, 120
words each) and 10 key facts; the semantic ones get a MiniLM embedding for every message.
Then each turn stores a new learner message and times `MemoryManager.context_for` on it,
as a reply does: the database reads, the similarity search (semantic), embedding the new
message with all-MiniLM-L6-v2 (semantic), and fitting the layers into the budget with
SmolLM2's tokenizer (or the estimate used for Ollama models). The first turn of each
conversation, which loads its embeddings into memory, is reported apart as "cold".

PostgreSQL: --database-url (a server where the bench may create and drop a scratch
database), else DATABASE_URL, else the embedded PostgreSQL in a temporary folder. The
exit code does not depend on the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import numpy as np

from bench.latency_report import percentile_ms
from server.event_bus import EventBus
from server.llm.llama_chat import LlamaChatModel, default_model_path
from server.llm.selection import UnavailableChatModel
from server.memory.context import STRATEGIES
from server.memory.embeddings import Embedder
from server.memory.manager import MemoryManager
from server.memory.setup import open_local_embedder
from server.memory.tokens import EstimatedTokenCounter, TokenCounter
from server.settings import Settings
from storage.conversations import get_conversation, insert_message
from storage.database import open_database
from storage.memory import store_embeddings

logger = logging.getLogger(__name__)

TARGET_P95_MS = 50.0
WINDOW_TOKENS = 2048
LEARNER = (
    "What is the weather like in London in spring?",
    "Tell me about your favourite food, please.",
    "Do people watch football on Sundays there?",
    "How do you cook rice without a rice cooker?",
    "Which museums should a tourist visit first?",
    "Could you explain the difference between since and for?",
)
TUTOR = (
    "[happy] That is a great question! [curious] What do you think?",
    "[encouraging] Nice sentence. [calm] Let us try another one together.",
    "[supportive] Good try, the word is *went*, not goed. [curious] Where did you go?",
)
LONG = (
    "On Saturday the market was full of people buying fruit, bread and flowers, and the "
    "weather changed three times before lunch, so everybody carried an umbrella. "
) * 8
SUMMARY = (
    "The learner talked about food, travel and the weather and practised the past tense. " * 8
).strip()
FACTS = [
    ("personal_info", "The learner's name is Ana"),
    ("learning_goal", "pass the IELTS exam in March"),
    ("level", "speaks at about B1"),
    ("weakness", "irregular past tense verbs"),
    ("weakness", "articles before countable nouns"),
    ("strength", "a wide everyday vocabulary"),
    ("user_preference", "short answers and many questions"),
    ("interest", "cooking"),
    ("interest", "football"),
    ("interest", "museums"),
]


def seed_text(sequence: int) -> tuple[str, str]:
    if sequence % 2 == 0:
        return "assistant", TUTOR[sequence % len(TUTOR)]
    if sequence % 25 == 0:
        return "user", LONG
    return "user", LEARNER[sequence % len(LEARNER)]


async def seed(pool: asyncpg.Pool, user_id: uuid.UUID, size: int, strategy: str) -> uuid.UUID:
    conversation_id: uuid.UUID = await pool.fetchval(
        """
        INSERT INTO conversations (user_id, title, level, memory_strategy, last_message_seq)
        VALUES ($1, $2, 'B1', $3, $4) RETURNING id
        """,
        user_id,
        f"{strategy} {size}",
        strategy,
        size,
    )
    rows = [(conversation_id, *seed_text(seq), seq) for seq in range(1, size + 1)]
    await pool.copy_records_to_table(
        "messages",
        records=rows,
        columns=["conversation_id", "role", "content", "sequence_number"],
    )
    if strategy in ("summarization", "hierarchical"):
        ends = list(range(50, size - 20, 50))
        await pool.executemany(
            """
            INSERT INTO conversation_summaries (conversation_id, summary_text,
                message_range_start, message_range_end, token_count, facts_extracted_at)
            VALUES ($1, $2, $3, $4, 2000, now())
            """,
            [(conversation_id, SUMMARY, end - 49, end) for end in ends],
        )
        await pool.executemany(
            "INSERT INTO conversation_key_facts (conversation_id, fact_type, fact_text, confidence)"
            " VALUES ($1, $2, $3, 0.7)",
            [(conversation_id, kind, text) for kind, text in FACTS],
        )
    return conversation_id


async def embed_all(pool: asyncpg.Pool, embedder: Embedder, conversation_id: uuid.UUID) -> None:
    """Store a real embedding for every message; the seed repeats a few texts, so each
    distinct text is embedded once."""
    rows = await pool.fetch(
        "SELECT id, content FROM messages WHERE conversation_id = $1", conversation_id
    )
    texts = sorted({row["content"] for row in rows})
    vectors = dict(zip(texts, await embedder.embed(texts), strict=True))
    ids = [row["id"] for row in rows]
    matrix = np.stack([vectors[row["content"]] for row in rows])
    await store_embeddings(pool, conversation_id, embedder.name, ids, matrix)


async def measure(
    manager: MemoryManager, pool: asyncpg.Pool, conversation_id: uuid.UUID, turns: int
) -> tuple[float, list[float]]:
    """Return (cold ms, warm ms per turn) of context assembly after a new learner message."""
    timings = []
    for turn in range(turns + 1):
        await insert_message(
            pool, conversation_id, "user", f"Turn {turn}: could we talk about cooking again?"
        )
        row = await get_conversation(pool, conversation_id)
        started = time.perf_counter()
        context = await manager.context_for(row)
        timings.append((time.perf_counter() - started) * 1000)
        assert context.token_count <= context.budget
    return timings[0], timings[1:]


async def open_counter(kind: str) -> TokenCounter:
    if kind == "estimate":
        return EstimatedTokenCounter()
    model = LlamaChatModel(default_model_path(), context_tokens=WINDOW_TOKENS, threads=1)
    await asyncio.to_thread(model.load)
    return await asyncio.to_thread(model.token_counter)


async def scratch_database(url: str) -> tuple[str, str]:
    """Create a scratch database on the server at url; return (its url, its name)."""
    name = f"parley_bench_memory_{os.getpid()}"
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}", name


async def drop_database(url: str, name: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def run(args: argparse.Namespace) -> None:
    sizes = [int(size) for size in args.sizes.split(",")]
    url = args.database_url or os.environ.get("DATABASE_URL")
    scratch = await scratch_database(url) if url else None
    with tempfile.TemporaryDirectory() as folder:
        database = await open_database(scratch[0] if scratch else None, Path(folder) / "pg")
        try:
            await bench(database.pool, sizes, args)
        finally:
            await database.close()
            if scratch and url:
                await drop_database(url, scratch[1])


async def bench(pool: asyncpg.Pool, sizes: list[int], args: argparse.Namespace) -> None:
    counter = await open_counter(args.counter)
    embedder = await open_local_embedder()
    settings = Settings(memory_quiet_s=0.0)
    manager = MemoryManager(
        pool=pool,
        settings=settings,
        llm=UnavailableChatModel("the benchmark writes no summaries"),
        bus=EventBus(pool),
        counter=counter,
        window_tokens=WINDOW_TOKENS,
        embedder=embedder,
    )
    user_id = await pool.fetchval("INSERT INTO users (name) VALUES ('bench') RETURNING id")
    print(f"token counter: {counter.name}; embeddings: {embedder.name if embedder else 'none'}")
    print(
        f"{'strategy':<14} {'messages':>8} {'cold ms':>8} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p95/target':>10}"
    )
    for size in sizes:
        for strategy in args.strategies.split(","):
            if strategy == "semantic" and embedder is None:
                continue
            conversation_id = await seed(pool, user_id, size, strategy)
            if strategy == "semantic" and embedder is not None:
                await embed_all(pool, embedder, conversation_id)
            cold, warm = await measure(manager, pool, conversation_id, args.turns)
            p50 = percentile_ms(warm, 50) or 0.0
            p95 = percentile_ms(warm, 95) or 0.0
            print(
                f"{strategy:<14} {size:>8} {cold:>8.1f} {p50:>7.1f} {p95:>7.1f} "
                f"{p95 / TARGET_P95_MS:>10.2f}"
            )
    await manager.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="messages per conversation")
    parser.add_argument("--turns", type=int, default=50, help="timed turns per conversation")
    parser.add_argument("--counter", choices=("llama", "estimate"), default="llama")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="strategies to run")
    parser.add_argument("--database-url", default="", help="PostgreSQL server to use")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
