"""REST routes of recorded calls: list, metadata and timeline, audio with ranges, export,
delete. Every route needs the user's token; the audio and export routes also take it as
?token=, because an <audio> element or a download link cannot send headers."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import IO

from aiohttp import web

from server import recordings
from server.auth import request_user
from server.http_range import byte_range
from server.json_body import parse_uuid


def _recording_id(request: web.Request) -> uuid.UUID:
    return parse_uuid(request.match_info["recording_id"], "recording id")


async def list_recordings(request: web.Request) -> web.Response:
    services, user_id = await request_user(request)
    conversation_id = parse_uuid(request.match_info["conversation_id"], "conversation id")
    return web.json_response(await recordings.list_for(services, user_id, conversation_id))


async def get_recording(request: web.Request) -> web.Response:
    services, user_id = await request_user(request)
    return web.json_response(
        await recordings.with_timeline(services, user_id, _recording_id(request))
    )


async def recording_audio(request: web.Request) -> web.StreamResponse:
    services, user_id = await request_user(request, allow_query=True)
    path = await recordings.audio_path(services, user_id, _recording_id(request))
    return await _send_file(request, path, "audio/ogg")


async def export_recording(request: web.Request) -> web.StreamResponse:
    services, user_id = await request_user(request, allow_query=True)
    recording_id = _recording_id(request)
    archive = await recordings.export_archive(services, user_id, recording_id)
    try:
        size = await asyncio.to_thread(_size_of, archive)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="recording-{recording_id}.zip"',
            }
        )
        response.content_length = size
        await response.prepare(request)
        if request.method != "HEAD":
            await _copy(archive, response, size)
        await response.write_eof()
        return response
    finally:
        archive.close()


async def delete_recording(request: web.Request) -> web.Response:
    services, user_id = await request_user(request)
    await recordings.delete(services, user_id, _recording_id(request))
    return web.Response(status=204)


async def _send_file(request: web.Request, path: Path, content_type: str) -> web.StreamResponse:
    """Send a file, or the single byte range the request names, read off the event loop.
    A recording still being written grows, so its size is taken once, when the request
    arrives."""
    size = (await asyncio.to_thread(path.stat)).st_size
    selected = byte_range(
        request.headers.get("Range"), size, if_range=request.headers.get("If-Range")
    )
    first, last = selected if selected is not None else (0, size - 1)
    response = web.StreamResponse(
        status=206 if selected is not None else 200,
        headers={"Content-Type": content_type, "Accept-Ranges": "bytes"},
    )
    if selected is not None:
        response.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    response.content_length = max(0, last - first + 1)
    await response.prepare(request)

    if request.method != "HEAD":
        file = await asyncio.to_thread(path.open, "rb")
        try:
            await asyncio.to_thread(file.seek, first)
            await _copy(file, response, last - first + 1)
        finally:
            await asyncio.to_thread(file.close)
    await response.write_eof()
    return response


async def _copy(file: IO[bytes], response: web.StreamResponse, count: int) -> None:
    """Write count bytes of file (fewer if it ends first) to response, reading off the
    event loop."""
    while count > 0:
        block = await asyncio.to_thread(file.read, min(recordings.READ_BLOCK_BYTES, count))
        if not block:
            return
        await response.write(block)
        count -= len(block)


def _size_of(archive: IO[bytes]) -> int:
    size = archive.seek(0, 2)
    archive.seek(0)
    return size


def add_recording_routes(app: web.Application) -> None:
    app.router.add_get("/api/conversations/{conversation_id}/recordings", list_recordings)
    app.router.add_get("/api/recordings/{recording_id}", get_recording)
    app.router.add_get("/api/recordings/{recording_id}/audio", recording_audio)
    app.router.add_get("/api/recordings/{recording_id}/export", export_recording)
    app.router.add_delete("/api/recordings/{recording_id}", delete_recording)
