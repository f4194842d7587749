"""The conversation event log: every event the server emits, numbered per conversation."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg


async def append_event(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, event_type: str, data: dict[str, Any]
) -> int:
    """Store an event under the conversation's next `seq` and return that number.

    One statement, so one round trip: the counter update locks the conversation's row until
    the statement commits, which keeps seqs gap-free under concurrent publishers.
    """
    seq: int | None = await pool.fetchval(
        """
        WITH next AS (
            UPDATE conversations SET last_event_seq = last_event_seq + 1
            WHERE id = $1 RETURNING last_event_seq
        )
        INSERT INTO conversation_events (conversation_id, seq, event_type, event_data)
        SELECT $1, last_event_seq, $2, $3 FROM next
        RETURNING seq
        """,
        conversation_id,
        event_type,
        data,
    )
    if seq is None:
        raise LookupError(f"conversation {conversation_id} does not exist")
    return seq


async def write_with_event(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    event_type: str,
    data: dict[str, Any],
    row_sql: str,
    *row_args: Any,
) -> int:
    """Run a row write and append its event in one statement; return the event's seq.

    One round trip and one commit instead of two, on the path of every streamed chunk.
    row_sql (an INSERT or UPDATE with parameters $1..$n) must not update the conversation's
    row, since one statement cannot update a row twice.
    """
    first = len(row_args) + 1
    seq: int | None = await pool.fetchval(
        f"""
        WITH written AS ({row_sql} RETURNING 1),
        next AS (
            UPDATE conversations SET last_event_seq = last_event_seq + 1
            WHERE id = ${first} RETURNING last_event_seq
        )
        INSERT INTO conversation_events (conversation_id, seq, event_type, event_data)
        SELECT ${first}, last_event_seq, ${first + 1}, ${first + 2} FROM next, written
        RETURNING seq
        """,
        *row_args,
        conversation_id,
        event_type,
        data,
    )
    if seq is None:
        raise LookupError(f"conversation {conversation_id} or the written row does not exist")
    return seq


async def events_after(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, after_seq: int, limit: int | None = None
) -> list[asyncpg.Record]:
    rows = await pool.fetch(
        """
        SELECT seq, event_type, event_data FROM conversation_events
        WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
        """,
        conversation_id,
        after_seq,
        limit,
    )
    return list(rows)
