"""Users, conversations and messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from storage.events import write_with_event


@dataclass(frozen=True)
class StoredMessage:
    id: uuid.UUID
    conversation_id: uuid.UUID
    role: str
    content: str
    sequence_number: int
    created_at: Any


# Every column a client may see.
CONVERSATION_COLUMNS = """
    id, user_id, title, level, status, metadata, created_at, updated_at, last_message_at,
    memory_strategy, max_context_messages, max_context_tokens, auto_summarize,
    summarize_threshold, ai_settings, record_calls, last_message_seq, last_event_seq
"""

# Settings a client may change with conversation:update, by column name.
SETTINGS_COLUMNS = (
    "title",
    "level",
    "ai_settings",
    "memory_strategy",
    "max_context_messages",
    "max_context_tokens",
    "auto_summarize",
    "summarize_threshold",
    "record_calls",
)


async def create_conversation(
    pool: asyncpg.Pool,
    user_id: uuid.UUID,
    *,
    title: str | None = None,
    level: str = "A1",
    metadata: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> asyncpg.Record:
    """Insert a conversation; `settings` sets SETTINGS_COLUMNS other than their defaults."""
    settings = settings or {}
    unknown = set(settings) - set(SETTINGS_COLUMNS)
    if unknown:
        raise ValueError(f"not a settings column: {sorted(unknown)}")
    columns = ["user_id", "title", "level", "metadata", *settings]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    row: asyncpg.Record = await pool.fetchrow(
        f"""
        INSERT INTO conversations ({", ".join(columns)}) VALUES ({placeholders})
        RETURNING {CONVERSATION_COLUMNS}
        """,
        user_id,
        title,
        level,
        metadata,
        *settings.values(),
    )
    return row


async def get_conversation(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1", conversation_id
    )
    return row


async def list_conversations(
    pool: asyncpg.Pool, user_id: uuid.UUID, *, status: str | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """Return one page of the user's conversations, most recently updated first, and how
    many match in all."""
    async with pool.acquire() as connection:
        rows = await connection.fetch(
            f"""
            SELECT {CONVERSATION_COLUMNS} FROM conversations
            WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)
            ORDER BY updated_at DESC, id LIMIT $3 OFFSET $4
            """,
            user_id,
            status,
            limit,
            offset,
        )
        total = await connection.fetchval(
            """
            SELECT count(*) FROM conversations
            WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)
            """,
            user_id,
            status,
        )
    return list(rows), int(total)


async def change_status(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, status: str, allowed_from: tuple[str, ...]
) -> asyncpg.Record | None:
    """Set the status if the current one is in allowed_from; return the updated row, or
    None when the conversation has another status or no longer exists."""
    row: asyncpg.Record | None = await pool.fetchrow(
        f"""
        UPDATE conversations SET status = $2, updated_at = now()
        WHERE id = $1 AND status = ANY($3::text[])
        RETURNING {CONVERSATION_COLUMNS}
        """,
        conversation_id,
        status,
        list(allowed_from),
    )
    return row


async def update_settings(
    pool: asyncpg.Pool, conversation_id: uuid.UUID, changes: dict[str, Any]
) -> asyncpg.Record | None:
    """Set the given SETTINGS_COLUMNS; return the updated row, or None if it is gone."""
    unknown = set(changes) - set(SETTINGS_COLUMNS)
    if unknown:
        raise ValueError(f"not a settings column: {sorted(unknown)}")
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=2))
    row: asyncpg.Record | None = await pool.fetchrow(
        f"""
        UPDATE conversations SET {assignments}, updated_at = now() WHERE id = $1
        RETURNING {CONVERSATION_COLUMNS}
        """,
        conversation_id,
        *changes.values(),
    )
    return row


async def delete_conversation(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> list[str]:
    """Delete a conversation and, by cascade, its messages, chunks and events.

    Returns the ids of the audio files they referred to, for the caller to remove from disk.
    """
    async with pool.acquire() as connection, connection.transaction():
        rows = await connection.fetch(
            """
            SELECT audio_file_id FROM messages
            WHERE conversation_id = $1 AND audio_file_id IS NOT NULL
            UNION
            SELECT chunks.audio_file_id FROM message_chunks chunks
            JOIN messages ON messages.id = chunks.message_id
            WHERE messages.conversation_id = $1 AND chunks.audio_file_id IS NOT NULL
            """,
            conversation_id,
        )
        await connection.execute("DELETE FROM conversations WHERE id = $1", conversation_id)
    return [row["audio_file_id"] for row in rows]


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

    One statement, so one round trip: the counter update locks the conversation's row
    until the statement commits, so concurrent senders get consecutive numbers with no
    gaps and no duplicates.
    """
    row = await pool.fetchrow(
        """
        WITH next AS (
            UPDATE conversations
            SET last_message_seq = last_message_seq + 1,
                last_message_at = now(), updated_at = now()
            WHERE id = $1
            RETURNING last_message_seq
        )
        INSERT INTO messages (conversation_id, role, content, sequence_number, metadata,
                              audio_file_id, audio_duration, stt_transcript)
        SELECT $1, $2, $3, last_message_seq, $4, $5, $6, $7 FROM next
        RETURNING id, sequence_number, created_at
        """,
        conversation_id,
        role,
        content,
        metadata,
        audio_file_id,
        audio_duration_s,
        stt_transcript,
    )
    if row is None:
        raise LookupError(f"conversation {conversation_id} does not exist")
    return StoredMessage(
        id=row["id"],
        conversation_id=conversation_id,
        role=role,
        content=content,
        sequence_number=row["sequence_number"],
        created_at=row["created_at"],
    )


async def insert_message_with_event(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    role: str,
    content: str,
    *,
    event_type: str,
    data: dict[str, Any],
    message_id: uuid.UUID,
    metadata: dict[str, Any] | None = None,
) -> tuple[StoredMessage, int]:
    """Store a message and append its event in one statement; return the message and the
    event's seq. The stored event's data gets the message's sequenceNumber added.

    One UPDATE bumps both counters of the conversation's row, since one statement cannot
    update a row twice; its row lock keeps both sequences gap-free.
    """
    row = await pool.fetchrow(
        """
        WITH next AS (
            UPDATE conversations
            SET last_message_seq = last_message_seq + 1,
                last_event_seq = last_event_seq + 1,
                last_message_at = now(), updated_at = now()
            WHERE id = $1
            RETURNING last_message_seq, last_event_seq
        ),
        message AS (
            INSERT INTO messages (id, conversation_id, role, content, sequence_number, metadata)
            SELECT $2, $1, $3, $4, last_message_seq, $5 FROM next
            RETURNING sequence_number, created_at
        ),
        event AS (
            INSERT INTO conversation_events (conversation_id, seq, event_type, event_data)
            SELECT $1, last_event_seq, $6,
                   $7::jsonb || jsonb_build_object('sequenceNumber', last_message_seq)
            FROM next
            RETURNING seq
        )
        SELECT message.sequence_number, message.created_at, event.seq FROM message, event
        """,
        conversation_id,
        message_id,
        role,
        content,
        metadata,
        event_type,
        data,
    )
    if row is None:
        raise LookupError(f"conversation {conversation_id} does not exist")
    message = StoredMessage(
        id=message_id,
        conversation_id=conversation_id,
        role=role,
        content=content,
        sequence_number=row["sequence_number"],
        created_at=row["created_at"],
    )
    return message, row["seq"]


async def finish_message_with_event(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    content: str,
    metadata: dict[str, Any],
    *,
    event_type: str,
    data: dict[str, Any],
) -> int:
    """Set an assistant message's final content and metadata and append its event in one
    statement; return the event's seq."""
    return await write_with_event(
        pool,
        conversation_id,
        event_type,
        data,
        "UPDATE messages SET content = $2, metadata = $3 WHERE id = $1",
        message_id,
        content,
        metadata,
    )
