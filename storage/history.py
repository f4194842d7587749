"""Reading a conversation back: message pages with their chunks, and audio ownership."""

from __future__ import annotations

import uuid

import asyncpg

# Each message comes with its chunks as a JSON array in chunk order (empty for user turns).
_MESSAGE_SELECT = """
    SELECT messages.id, messages.role, messages.content, messages.sequence_number,
           messages.metadata, messages.audio_file_id, messages.audio_duration,
           messages.stt_transcript, messages.created_at,
           coalesce((
               SELECT jsonb_agg(jsonb_build_object(
                   'chunkId', chunks.id, 'chunkIndex', chunks.chunk_index,
                   'text', chunks.text, 'emotion', chunks.emotion, 'icon', chunks.icon,
                   'pause', chunks.pause_after, 'emphasis', chunks.emphasis,
                   'audioFileId', chunks.audio_file_id,
                   'audioDuration', chunks.audio_duration,
                   'ttsStatus', chunks.tts_status,
                   'playout', CASE WHEN chunks.playout_status IS NULL THEN NULL
                       ELSE jsonb_build_object(
                           'status', chunks.playout_status,
                           'playedMs', chunks.played_ms,
                           'heardText', chunks.heard_text
                       ) END
               ) ORDER BY chunks.chunk_index)
               FROM message_chunks chunks WHERE chunks.message_id = messages.id
           ), '[]'::jsonb) AS chunks
    FROM messages
"""


async def message_page(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
) -> tuple[list[asyncpg.Record], bool]:
    """Return up to limit messages and whether more exist in the same direction.

    With `after`, the page runs forward from that sequence number, oldest first. Otherwise
    it runs back from `before` (or from the newest message), newest first.
    """
    if after is not None:
        rows = await pool.fetch(
            _MESSAGE_SELECT
            + """
            WHERE conversation_id = $1 AND sequence_number > $2
            ORDER BY sequence_number LIMIT $3
            """,
            conversation_id,
            after,
            limit + 1,
        )
    else:
        rows = await pool.fetch(
            _MESSAGE_SELECT
            + """
            WHERE conversation_id = $1 AND ($2::int IS NULL OR sequence_number < $2)
            ORDER BY sequence_number DESC LIMIT $3
            """,
            conversation_id,
            before,
            limit + 1,
        )
    return list(rows[:limit]), len(rows) > limit


async def get_chunk(pool: asyncpg.Pool, chunk_id: uuid.UUID) -> asyncpg.Record | None:
    """Return a chunk with its message's conversation and that conversation's owner."""
    row: asyncpg.Record | None = await pool.fetchrow(
        """
        SELECT chunks.id, chunks.message_id, chunks.chunk_index, chunks.text,
               chunks.audio_file_id, chunks.audio_duration, chunks.tts_status,
               messages.conversation_id, conversations.user_id,
               messages.metadata->>'status' AS message_status
        FROM message_chunks chunks
        JOIN messages ON messages.id = chunks.message_id
        JOIN conversations ON conversations.id = messages.conversation_id
        WHERE chunks.id = $1
        """,
        chunk_id,
    )
    return row


async def audio_owner(pool: asyncpg.Pool, file_id: str) -> uuid.UUID | None:
    """Return the user whose message or chunk refers to the audio file, if any."""
    owner: uuid.UUID | None = await pool.fetchval(
        """
        SELECT conversations.user_id FROM messages
        JOIN conversations ON conversations.id = messages.conversation_id
        WHERE messages.audio_file_id = $1
        UNION ALL
        SELECT conversations.user_id FROM message_chunks chunks
        JOIN messages ON messages.id = chunks.message_id
        JOIN conversations ON conversations.id = messages.conversation_id
        WHERE chunks.audio_file_id = $1
        LIMIT 1
        """,
        file_id,
    )
    return owner
