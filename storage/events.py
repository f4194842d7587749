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
