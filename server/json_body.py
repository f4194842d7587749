"""Reading JSON request bodies and path ids, with the errors clients see."""

from __future__ import annotations

import uuid

from aiohttp import web

from server.errors import ClientError, PayloadTooLargeError


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """Return the raw body, or raise 413 when it is over max_bytes."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLargeError(f"request body is over {max_bytes} bytes")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(f"request body is over {max_bytes} bytes")
    return raw


def parse_uuid(raw: object, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError as exc:
        raise ClientError(f"{name} {str(raw)[:40]!r} is not a UUID") from exc
