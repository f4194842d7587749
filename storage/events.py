"""The conversation event log: every event the server emits, numbered per conversation."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg


async def append_event(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, event_type: str, data: dict[str, Any]
) -> int:
    """Store an event under the conversation's next `seq` and return that number."""
    async with pool.acquire() as connection, connection.transaction():
        seq: int | None = await connection.fetchval(
            """
            UPDATE conversations SET last_event_seq = last_event_seq + 1
            WHERE id = $1 RETURNING last_event_seq
            """,
            conversation_id,
        )
        if seq is None:
            raise LookupError(f"conversation {conversation_id} does not exist")
        await connection.execute(
            """
            INSERT INTO conversation_events (conversation_id, seq, event_type, event_data)
            VALUES ($1, $2, $3, $4)
            """,
            conversation_id,
            seq,
            event_type,
            data,
        )
    return seq


async def events_after(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, after_seq: int
) -> list[asyncpg.Record]:
    rows = await pool.fetch(
        """
        SELECT seq, event_type, event_data FROM conversation_events
        WHERE conversation_id = $1 AND seq > $2 ORDER BY seq
        """,
        conversation_id,
        after_seq,
    )
    return list(rows)
