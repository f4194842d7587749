"""Users, conversations and messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class StoredMessage:
    id: uuid.UUID
    conversation_id: uuid.UUID
    role: str
    content: str
    sequence_number: int
    created_at: Any


async def ensure_user(pool: asyncpg.Pool, name: str) -> uuid.UUID:
    """Return the id of the user called name, creating the row on first use."""
    user_id: uuid.UUID = await pool.fetchval(
        """
        INSERT INTO users (name) VALUES ($1)
        ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
        RETURNING id
        """,
        name,
    )
    return user_id


async def create_conversation(
    pool: asyncpg.Pool, user_id: uuid.UUID, *, title: str | None = None, level: str = "A1"
) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow(
        """
        INSERT INTO conversations (user_id, title, level) VALUES ($1, $2, $3)
        RETURNING id, user_id, title, level, status, created_at
        """,
        user_id,
        title,
        level,
    )
    return row


async def get_conversation(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT id, user_id, title, level, status, created_at FROM conversations WHERE id = $1",
        conversation_id,
    )
    return row


async def delete_conversation(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> None:
    """Delete a conversation and, by cascade, its messages, chunks and events."""
    await pool.execute("DELETE FROM conversations WHERE id = $1", conversation_id)


async def insert_message(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    role: str,
    content: str,
    *,
    stt_transcript: str | None = None,
    audio_file_id: str | None = None,
    audio_duration_s: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> StoredMessage:
    """Store a message under the next sequence number of its conversation.

    The counter update locks the conversation row until commit, so concurrent senders get
    consecutive numbers with no gaps and no duplicates.
    """
    async with pool.acquire() as connection, connection.transaction():
        sequence_number = await connection.fetchval(
            """
            UPDATE conversations
            SET last_message_seq = last_message_seq + 1,
                last_message_at = now(), updated_at = now()
            WHERE id = $1
            RETURNING last_message_seq
            """,
            conversation_id,
        )
        if sequence_number is None:
            raise LookupError(f"conversation {conversation_id} does not exist")
        row = await connection.fetchrow(
            """
            INSERT INTO messages (conversation_id, role, content, sequence_number, metadata,
                                  audio_file_id, audio_duration, stt_transcript)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            RETURNING id, created_at
            """,
            conversation_id,
            role,
            content,
            sequence_number,
            metadata,
            audio_file_id,
            audio_duration_s,
            stt_transcript,
        )
    return StoredMessage(
        id=row["id"],
        conversation_id=conversation_id,
        role=role,
        content=content,
        sequence_number=sequence_number,
        created_at=row["created_at"],
    )


async def finish_message(
    pool: asyncpg.Pool, message_id: uuid.UUID, content: str, metadata: dict[str, Any]
) -> None:
    """Set the final content and metadata of an assistant message built chunk by chunk."""
    await pool.execute(
        "UPDATE messages SET content = $2, metadata = $3 WHERE id = $1",
        message_id,
        content,
        metadata,
    )


async def recent_messages(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, limit: int
) -> list[asyncpg.Record]:
    """Return the newest `limit` messages with content, oldest first."""
    rows = await pool.fetch(
        """
        SELECT role, content, sequence_number FROM (
            SELECT role, content, sequence_number FROM messages
            WHERE conversation_id = $1 AND content <> ''
            ORDER BY sequence_number DESC LIMIT $2
        ) newest ORDER BY sequence_number
        """,
        conversation_id,
        limit,
    )
    return list(rows)
