"""Queries of conversation memory: context sources, summaries, key facts and message
embeddings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np


@dataclass(frozen=True)
class ContextMessage:
    id: uuid.UUID
    role: str
    content: str
    sequence_number: int


@dataclass(frozen=True)
class Summary:
    id: uuid.UUID
    text: str
    start: int
    end: int
    token_count: int | None
    created_at: datetime
    facts_extracted: bool


@dataclass(frozen=True)
class KeyFact:
    id: uuid.UUID
    fact_type: str
    text: str
    confidence: float
    extracted_at: datetime


def _context_message(row: asyncpg.Record) -> ContextMessage:
    return ContextMessage(row["id"], row["role"], row["content"], row["sequence_number"])


async def messages_in_range(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, start: int, end: int, limit: int
) -> list[ContextMessage]:
    """Return up to `limit` messages with content whose sequence numbers lie in [start, end]."""
    rows = await pool.fetch(
        """
        SELECT id, role, content, sequence_number FROM messages
        WHERE conversation_id = $1 AND sequence_number BETWEEN $2 AND $3 AND content <> ''
        ORDER BY sequence_number LIMIT $4
        """,
        conversation_id,
        start,
        end,
        limit,
    )
    return [_context_message(row) for row in rows]


async def messages_by_sequence(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, sequences: list[int]
) -> list[ContextMessage]:
    rows = await pool.fetch(
        """
        SELECT id, role, content, sequence_number FROM messages
        WHERE conversation_id = $1 AND sequence_number = ANY($2::int[])
        ORDER BY sequence_number
        """,
        conversation_id,
        sequences,
    )
    return [_context_message(row) for row in rows]


async def context_sources(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, limit: int, *, with_summary: bool
) -> tuple[list[ContextMessage], Summary | None, list[KeyFact]]:
    """Return what a context is built from, in one round trip: the newest `limit` messages
    with content (oldest first), the latest summary (when asked for) and the key facts
    (most confident and newest first)."""
    row = await pool.fetchrow(
        """
        SELECT
            ARRAY(SELECT ROW(id, role, content, sequence_number) FROM messages
                  WHERE conversation_id = $1 AND content <> ''
                  ORDER BY sequence_number DESC LIMIT $2) AS recent,
            (SELECT ROW(id, summary_text, message_range_start, message_range_end,
                        token_count, created_at, facts_extracted_at IS NOT NULL)
             FROM conversation_summaries WHERE conversation_id = $1 AND $3
             ORDER BY message_range_end DESC LIMIT 1) AS summary,
            ARRAY(SELECT ROW(id, fact_type, fact_text, confidence, extracted_at)
                  FROM conversation_key_facts WHERE conversation_id = $1
                  ORDER BY confidence DESC, extracted_at DESC) AS facts
        """,
        conversation_id,
        limit,
        with_summary,
    )
    assert row is not None
    recent = [ContextMessage(*fields) for fields in reversed(row["recent"])]
    summary = Summary(*row["summary"]) if row["summary"] is not None else None
    facts = [
        KeyFact(fact_id, kind, text, float(confidence), extracted)
        for fact_id, kind, text, confidence, extracted in row["facts"]
    ]
    return recent, summary, facts


# -- summaries


def _summary(row: asyncpg.Record) -> Summary:
    return Summary(
        id=row["id"],
        text=row["summary_text"],
        start=row["message_range_start"],
        end=row["message_range_end"],
        token_count=row["token_count"],
        created_at=row["created_at"],
        facts_extracted=row["facts_extracted_at"] is not None,
    )


_SUMMARY_COLUMNS = """id, summary_text, message_range_start, message_range_end, token_count,
    created_at, facts_extracted_at"""


async def latest_summary(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> Summary | None:
    row = await pool.fetchrow(
        f"""
        SELECT {_SUMMARY_COLUMNS} FROM conversation_summaries WHERE conversation_id = $1
        ORDER BY message_range_end DESC LIMIT 1
        """,
        conversation_id,
    )
    return _summary(row) if row is not None else None


async def list_summaries(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> list[Summary]:
    rows = await pool.fetch(
        f"""
        SELECT {_SUMMARY_COLUMNS} FROM conversation_summaries WHERE conversation_id = $1
        ORDER BY message_range_start
        """,
        conversation_id,
    )
    return [_summary(row) for row in rows]


async def summaries_without_facts(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> list[Summary]:
    rows = await pool.fetch(
        f"""
        SELECT {_SUMMARY_COLUMNS} FROM conversation_summaries
        WHERE conversation_id = $1 AND facts_extracted_at IS NULL
        ORDER BY message_range_start
        """,
        conversation_id,
    )
    return [_summary(row) for row in rows]


async def insert_summary(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    text: str,
    start: int,
    end: int,
    token_count: int,
) -> Summary | None:
    """Store the summary of messages start..end if it continues the chain: the previous
    summary ends at start - 1, or none exists and start is 1 (sequence numbers start at 1).
    Return None when another summary got there first, so a range is never covered twice
    or skipped."""
    row = await pool.fetchrow(
        f"""
        INSERT INTO conversation_summaries
            (conversation_id, summary_text, message_range_start, message_range_end, token_count)
        SELECT $1, $2, $3, $4, $5
        WHERE (SELECT coalesce(max(message_range_end), 0) FROM conversation_summaries
               WHERE conversation_id = $1) = $3 - 1
        ON CONFLICT (conversation_id, message_range_start) DO NOTHING
        RETURNING {_SUMMARY_COLUMNS}
        """,
        conversation_id,
        text,
        start,
        end,
        token_count,
    )
    return _summary(row) if row is not None else None


async def mark_facts_extracted(pool: asyncpg.Pool, summary_id: uuid.UUID) -> None:
    await pool.execute(
        "UPDATE conversation_summaries SET facts_extracted_at = now() WHERE id = $1", summary_id
    )


async def last_summarised(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> int:
    """Return the sequence number of the last summarised message; 0 when there is none."""
    end: int = await pool.fetchval(
        """
        SELECT coalesce(max(message_range_end), 0) FROM conversation_summaries
        WHERE conversation_id = $1
        """,
        conversation_id,
    )
    return end


async def conversations_with_memory_work(pool: asyncpg.Pool) -> list[uuid.UUID]:
    """Return the conversations whose memory may be behind: those that keep summaries or
    embeddings and have messages newer than their last summary, or summaries without facts.
    The memory worker checks each one; a restart resumes from here."""
    rows = await pool.fetch(
        """
        SELECT conversations.id FROM conversations
        WHERE (memory_strategy <> 'sliding' OR auto_summarize)
          AND (last_message_seq > coalesce((
                   SELECT max(message_range_end) FROM conversation_summaries
                   WHERE conversation_id = conversations.id), 0)
               OR EXISTS (SELECT 1 FROM conversation_summaries
                          WHERE conversation_id = conversations.id
                            AND facts_extracted_at IS NULL))
        ORDER BY updated_at DESC
        """
    )
    return [row["id"] for row in rows]


# -- key facts


def _key_fact(row: asyncpg.Record) -> KeyFact:
    return KeyFact(
        id=row["id"],
        fact_type=row["fact_type"],
        text=row["fact_text"],
        confidence=float(row["confidence"]),
        extracted_at=row["extracted_at"],
    )


async def list_key_facts(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> list[KeyFact]:
    """Return the conversation's key facts, most confident and newest first."""
    rows = await pool.fetch(
        """
        SELECT id, fact_type, fact_text, confidence, extracted_at
        FROM conversation_key_facts WHERE conversation_id = $1
        ORDER BY confidence DESC, extracted_at DESC
        """,
        conversation_id,
    )
    return [_key_fact(row) for row in rows]


async def upsert_key_facts(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    facts: list[tuple[str, str, float]],
) -> list[KeyFact]:
    """Store (type, text, confidence) facts; a fact already known keeps the higher
    confidence and takes the new extraction time. Return the stored rows."""
    async with pool.acquire() as connection, connection.transaction():
        stored = []
        for fact_type, text, confidence in facts:
            row = await connection.fetchrow(
                """
                INSERT INTO conversation_key_facts
                    (conversation_id, fact_type, fact_text, confidence)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (conversation_id, fact_type, lower(fact_text)) DO UPDATE
                SET confidence = greatest(conversation_key_facts.confidence,
                                          excluded.confidence),
                    extracted_at = now()
                RETURNING id, fact_type, fact_text, confidence, extracted_at
                """,
                conversation_id,
                fact_type,
                text,
                confidence,
            )
            assert row is not None
            stored.append(_key_fact(row))
    return stored


# -- embeddings


async def messages_without_embedding(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, model: str, limit: int
) -> list[ContextMessage]:
    """Return up to `limit` messages with content that have no embedding from `model`,
    oldest first.

    NOTE: with stale table statistics PostgreSQL may plan the anti-join as a rescan of the
    embeddings per message. A backlog of 5,000 messages then took 0.5-0.8 s per batch.
    """
    rows = await pool.fetch(
        """
        SELECT messages.id, messages.role, messages.content, messages.sequence_number
        FROM messages
        WHERE messages.conversation_id = $1 AND messages.content <> ''
          AND messages.metadata->>'status' IS DISTINCT FROM 'generating'
          AND NOT EXISTS (SELECT 1 FROM message_embeddings embeddings
                          WHERE embeddings.message_id = messages.id AND embeddings.model = $2)
        ORDER BY messages.sequence_number LIMIT $3
        """,
        conversation_id,
        model,
        limit,
    )
    return [_context_message(row) for row in rows]


async def store_embeddings(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    model: str,
    message_ids: list[uuid.UUID],
    vectors: np.ndarray,
) -> None:
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    await pool.executemany(
        """
        INSERT INTO message_embeddings (message_id, conversation_id, model, dimensions, embedding)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (message_id, model) DO NOTHING
        """,
        [
            (message_id, conversation_id, model, vectors.shape[1], vector.tobytes())
            for message_id, vector in zip(message_ids, vectors, strict=True)
        ],
    )


async def load_embeddings(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, model: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return (sequence numbers, matrix with one unit vector per row) of every stored
    embedding of the conversation from `model`. Should the model have returned vectors of
    several sizes, only those of its most common size are returned."""
    rows = await pool.fetch(
        """
        WITH stored AS (
            SELECT message_id, dimensions, embedding FROM message_embeddings
            WHERE conversation_id = $1 AND model = $2
        ),
        usual AS (
            SELECT dimensions FROM stored GROUP BY dimensions ORDER BY count(*) DESC LIMIT 1
        )
        SELECT messages.sequence_number, stored.embedding
        FROM stored JOIN usual USING (dimensions) JOIN messages ON messages.id = stored.message_id
        ORDER BY messages.sequence_number
        """,
        conversation_id,
        model,
    )
    sequences = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return sequences, np.zeros((0, 0), dtype=np.float32)
    matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4")
    return sequences, matrix.reshape(len(rows), -1).astype(np.float32, copy=False)


async def embedding_count(pool: asyncpg.Pool, conversation_id: uuid.UUID, model: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM message_embeddings WHERE conversation_id = $1 AND model = $2",
        conversation_id,
        model,
    )
    return count
