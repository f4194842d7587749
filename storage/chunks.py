"""Message chunks: the spoken pieces of an assistant reply and their TTS status."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from storage.events import write_with_event

TTS_STATUSES = ("pending", "processing", "completed", "failed")

INSERT_CHUNK = """
    INSERT INTO message_chunks
        (id, message_id, chunk_index, text, emotion, icon, pause_after, emphasis)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


async def insert_chunk(
    pool: asyncpg.Pool,
    chunk_id: uuid.UUID,
    message_id: uuid.UUID,
    chunk_index: int,
    *,
    text: str,
    emotion: str,
    icon: str,
    pause_after_s: float,
    emphasis: bool,
) -> None:
    await pool.execute(
        INSERT_CHUNK,
        chunk_id,
        message_id,
        chunk_index,
        text,
        emotion,
        icon,
        pause_after_s,
        emphasis,
    )


async def insert_chunk_with_event(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    event_type: str,
    data: dict[str, Any],
    chunk_id: uuid.UUID,
    message_id: uuid.UUID,
    chunk_index: int,
    *,
    text: str,
    emotion: str,
    icon: str,
    pause_after_s: float,
    emphasis: bool,
) -> int:
    """Insert a chunk and append its event in one statement; return the event's seq."""
    return await write_with_event(
        pool,
        conversation_id,
        event_type,
        data,
        INSERT_CHUNK,
        chunk_id,
        message_id,
        chunk_index,
        text,
        emotion,
        icon,
        pause_after_s,
        emphasis,
    )


async def set_tts_status(
    pool: asyncpg.Pool,
    chunk_id: uuid.UUID,
    status: str,
    *,
    audio_file_id: str | None = None,
    audio_duration_s: float | None = None,
) -> None:
    if status not in TTS_STATUSES:
        raise ValueError(f"invalid tts_status {status!r}: expected one of {TTS_STATUSES}")
    await pool.execute(
        """
        UPDATE message_chunks
        SET tts_status = $2,
            audio_file_id = coalesce($3, audio_file_id),
            audio_duration = coalesce($4, audio_duration)
        WHERE id = $1
        """,
        chunk_id,
        status,
        audio_file_id,
        audio_duration_s,
    )


async def reset_unfinished_chunks(pool: asyncpg.Pool, message_id: uuid.UUID) -> int:
    """Put chunks whose synthesis was abandoned mid-way back to `pending`; return how many."""
    result: str = await pool.execute(
        """
        UPDATE message_chunks SET tts_status = 'pending'
        WHERE message_id = $1 AND tts_status = 'processing'
        """,
        message_id,
    )
    return int(result.split()[-1])


async def recover_interrupted_replies(pool: asyncpg.Pool) -> int:
    """Close replies that a previous run left generating; return how many.

    A server that stopped mid-reply (killed, crashed) left its message `generating` with
    empty content and chunks `processing`. Each becomes `interrupted`, with the text of
    the chunks it stored, and its chunks can be synthesised again on request.
    NOTE: this assumes one server per database; a second live server's replies in
    progress would be closed too.
    """
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(
            """
            UPDATE message_chunks SET tts_status = 'pending'
            WHERE tts_status = 'processing' AND message_id IN (
                SELECT id FROM messages WHERE metadata->>'status' = 'generating'
            )
            """
        )
        result: str = await connection.execute(
            """
            UPDATE messages SET
                metadata = jsonb_set(metadata, '{status}', '"interrupted"'),
                content = coalesce((
                    SELECT string_agg(text, ' ' ORDER BY chunk_index) FROM message_chunks
                    WHERE message_id = messages.id
                ), '')
            WHERE metadata->>'status' = 'generating'
            """
        )
    return int(result.split()[-1])


async def set_playout(
    pool: asyncpg.Pool, rows: list[tuple[uuid.UUID, str, int, str]]
) -> None:
    """Store how each chunk was heard: rows of (chunk id, playout status, played ms,
    heard text)."""
    await pool.executemany(
        """
        UPDATE message_chunks
        SET playout_status = $2, played_ms = $3, heard_text = $4
        WHERE id = $1
        """,
        rows,
    )
