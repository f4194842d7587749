"""Recorded calls: the rows of the recordings table."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import asyncpg

RECORDING_COLUMNS = """
    recordings.id, recordings.conversation_id, call_id, recordings.status,
    started_at, ended_at, duration_ms, audio_path, journal_path, audio_format, size_bytes
"""


async def insert_recording(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    call_id: str,
    *,
    recording_id: uuid.UUID,
    audio_path: str,
    journal_path: str,
    started_at: datetime.datetime,
) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow(
        f"""
        INSERT INTO recordings (id, conversation_id, call_id, audio_path, journal_path, started_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING {RECORDING_COLUMNS}
        """,
        recording_id,
        conversation_id,
        call_id,
        audio_path,
        journal_path,
        started_at,
    )
    return row


async def finish_recording(
    pool: asyncpg.Pool,
    recording_id: uuid.UUID,
    *,
    status: str,
    duration_ms: int,
    size_bytes: int,
    timeline: list[dict[str, Any]],
) -> asyncpg.Record | None:
    """Store a recording's end; ended_at is its start plus its duration, so the two always
    agree. Returns None when the row is gone (its conversation was deleted meanwhile)."""
    row: asyncpg.Record | None = await pool.fetchrow(
        f"""
        UPDATE recordings
        SET status = $2, duration_ms = $3::integer, size_bytes = $4, timeline = $5,
            ended_at = started_at + $3::integer * interval '1 millisecond'
        WHERE id = $1
        RETURNING {RECORDING_COLUMNS}
        """,
        recording_id,
        status,
        duration_ms,
        size_bytes,
        timeline,
    )
    return row


async def list_recordings(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        f"""
        SELECT {RECORDING_COLUMNS} FROM recordings
        WHERE conversation_id = $1 ORDER BY started_at DESC
        """,
        conversation_id,
    )
    return rows


async def owned_recording(
    pool: asyncpg.Pool, recording_id: uuid.UUID, user_id: uuid.UUID, *, with_timeline: bool
) -> asyncpg.Record | None:
    """Return the recording if its conversation belongs to user_id, else None."""
    timeline = ", recordings.timeline" if with_timeline else ""
    row: asyncpg.Record | None = await pool.fetchrow(
        f"""
        SELECT {RECORDING_COLUMNS}{timeline} FROM recordings
        JOIN conversations ON conversations.id = recordings.conversation_id
        WHERE recordings.id = $1 AND conversations.user_id = $2
        """,
        recording_id,
        user_id,
    )
    return row


async def delete_recording(pool: asyncpg.Pool, recording_id: uuid.UUID) -> asyncpg.Record | None:
    """Delete a finished recording's row; return it, or None when it is missing or still
    recording."""
    row: asyncpg.Record | None = await pool.fetchrow(
        f"""
        DELETE FROM recordings WHERE id = $1 AND status <> 'recording'
        RETURNING {RECORDING_COLUMNS}
        """,
        recording_id,
    )
    return row


async def discard_recording(pool: asyncpg.Pool, recording_id: uuid.UUID) -> None:
    """Delete a recording's row whatever its status: one that recorded nothing."""
    await pool.execute("DELETE FROM recordings WHERE id = $1", recording_id)


async def unfinished_recordings(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Return recordings still marked as running: at start-up, those the last run left."""
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {RECORDING_COLUMNS} FROM recordings WHERE status = 'recording'"
    )
    return rows
