"""Recorded calls for their owners: listing, one recording with its timeline, deleting, the
export archive, and the start-up repair of recordings a dead server left running."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any

import asyncpg

from server.call_recording import clamp_timeline
from server.errors import NotFoundError, RecordingActiveError
from server.json_views import recording_json
from server.services import Services
from storage import recordings as store

logger = logging.getLogger(__name__)

# Bytes read from a recording file at a time when serving or archiving it.
READ_BLOCK_BYTES = 64 * 1024
# A running recording's file grows at least every 0.5 s (an Ogg page of at most 200 ms,
# written up to 300 ms late), so one written this recently is still being recorded.
LIVE_WRITE_S = 2.0


async def list_for(services: Services, user_id: uuid.UUID, conversation_id: uuid.UUID) -> Any:
    await services.conversations.owned(user_id, conversation_id)
    rows = await store.list_recordings(services.pool, conversation_id)
    return {
        "conversationId": str(conversation_id),
        "recordings": [recording_json(row) for row in rows],
    }


async def owned(
    services: Services, user_id: uuid.UUID, recording_id: uuid.UUID, *, with_timeline: bool
) -> asyncpg.Record:
    """Return the user's recording. Another user's recording raises NotFoundError, like a
    missing one."""
    row = await store.owned_recording(
        services.pool, recording_id, user_id, with_timeline=with_timeline
    )
    if row is None:
        raise NotFoundError(f"recording {recording_id} not found")
    return row


async def with_timeline(
    services: Services, user_id: uuid.UUID, recording_id: uuid.UUID
) -> dict[str, Any]:
    """Return the user's recording as JSON with its timeline. A running recording's
    timeline is read from its journal, so it shows what has happened so far."""
    row = await owned(services, user_id, recording_id, with_timeline=True)
    return await _json_with_timeline(services, row)


async def _json_with_timeline(services: Services, row: asyncpg.Record) -> dict[str, Any]:
    timeline = None
    if row["status"] == "recording":
        files = services.recording_files
        timeline = await asyncio.to_thread(files.read_journal, row["journal_path"])
    return recording_json(row, timeline)


async def audio_path(services: Services, user_id: uuid.UUID, recording_id: uuid.UUID) -> Path:
    row = await owned(services, user_id, recording_id, with_timeline=False)
    path = services.recording_files.resolve(row["audio_path"])
    if not await asyncio.to_thread(path.is_file):
        raise NotFoundError(f"the audio of recording {recording_id} is missing")
    return path


async def delete(services: Services, user_id: uuid.UUID, recording_id: uuid.UUID) -> None:
    row = await owned(services, user_id, recording_id, with_timeline=False)
    if row["status"] == "recording":
        raise RecordingActiveError(f"recording {recording_id} is still running: end the call first")
    deleted = await store.delete_recording(services.pool, recording_id)
    if deleted is None:
        raise NotFoundError(f"recording {recording_id} not found")
    files = [deleted["audio_path"], deleted["journal_path"]]
    removed = await asyncio.to_thread(services.recording_files.delete, files)
    logger.info("user %s deleted recording %s and %d files", user_id, recording_id, removed)


async def export_archive(
    services: Services, user_id: uuid.UUID, recording_id: uuid.UUID
) -> IO[bytes]:
    """Return a temporary file holding a ZIP of the recording's audio and its metadata and
    timeline as JSON; the caller closes it, which deletes it."""
    row = await owned(services, user_id, recording_id, with_timeline=True)
    path = services.recording_files.resolve(row["audio_path"])
    body = await _json_with_timeline(services, row)
    metadata = json.dumps(body, ensure_ascii=False, indent=2)
    return await asyncio.to_thread(_write_archive, path, metadata)


def _write_archive(audio: Path, metadata: str) -> IO[bytes]:
    # The caller gets the open file and closes it, so no with block here.
    archive = tempfile.TemporaryFile()  # noqa: SIM115
    try:
        # Opus does not compress further, so the audio is stored as it is.
        with zipfile.ZipFile(archive, "w") as zipped:
            if audio.is_file():
                zipped.write(audio, "recording.ogg", compress_type=zipfile.ZIP_STORED)
            zipped.writestr("timeline.json", metadata, compress_type=zipfile.ZIP_DEFLATED)
        archive.seek(0)
    except BaseException:
        archive.close()
        raise
    return archive


async def recover_recordings(services: Services) -> None:
    """Finish the recordings the last run left running: measure the audio written before it
    stopped and take the timeline from the journal. A failure is logged and leaves the row
    for the next start: it never stops this one."""
    for row in await store.unfinished_recordings(services.pool):
        try:
            await _recover(services, row)
        except Exception:
            logger.exception("recording %s: repairing it at start-up failed", row["id"])


async def _recover(services: Services, row: asyncpg.Record) -> None:
    files = services.recording_files
    if await asyncio.to_thread(files.written_within, row["audio_path"], LIVE_WRITE_S):
        # NOTE: one server per database is assumed. A file still growing belongs to a call
        # on another server sharing this database, so it is left alone here.
        logger.warning("recording %s: its file is still being written; left alone", row["id"])
        return
    duration_ms, size = await asyncio.to_thread(files.measure, row["audio_path"])
    if duration_ms == 0:
        # The server died before the first page of audio: nothing can be played.
        await store.discard_recording(services.pool, row["id"])
        await asyncio.to_thread(files.delete, [row["audio_path"], row["journal_path"]])
        logger.info("recording %s: left by the last run with no audio, deleted", row["id"])
        return
    timeline = await asyncio.to_thread(files.read_journal, row["journal_path"])
    # The journal may run ahead of the audio: the last Ogg page was lost.
    clamp_timeline(timeline, duration_ms)
    await store.finish_recording(
        services.pool,
        row["id"],
        status="interrupted",
        duration_ms=duration_ms,
        size_bytes=size,
        timeline=timeline,
    )
    await asyncio.to_thread(files.remove_journal, row["journal_path"])
    logger.info(
        "recording %s: left running by the last run, kept as interrupted (%d ms)",
        row["id"],
        duration_ms,
    )
