"""`POST /api/rtc/offer`: negotiate a call and start its session."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiortc import RTCSessionDescription

from server.call_session import CallSession
from server.errors import ClientError, ConflictError, NotFoundError, PayloadTooLargeError
from server.ice import filter_remote_candidates
from server.prompts import LEVELS
from server.services import Services
from storage.conversations import create_conversation, delete_conversation, get_conversation

logger = logging.getLogger(__name__)

SERVICES_KEY = web.AppKey("services", Services)
OFFER_FIELDS = {"sdp", "type", "conversationId", "level", "title"}


@dataclass
class Offer:
    sdp: str
    conversation_id: uuid.UUID
    level: str
    # True when this offer created the conversation, so a failed offer removes it again.
    created: bool


async def handle_offer(request: web.Request) -> web.Response:
    services = request.app[SERVICES_KEY]
    body = await _read_json(request, services.settings.max_offer_bytes)
    offer = await _parse_offer(services, body)

    session = CallSession(services, offer.conversation_id, offer.level)
    services.sessions[session.id] = session
    try:
        sdp = filter_remote_candidates(offer.sdp, services.settings.effective_media_addresses)
        answer = await session.accept(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:
        # aiortc raises many kinds of errors (ValueError, KeyError, AssertionError, ...) on
        # SDP it cannot use. Each is the caller's bad offer, so each gets a 400.
        await session.close("offer rejected")
        if offer.created:
            await delete_conversation(services.pool, offer.conversation_id)
        logger.info("rejected offer for conversation %s: %r", offer.conversation_id, exc)
        detail = str(exc) if isinstance(exc, ValueError) and str(exc) else "unsupported SDP"
        raise ClientError(f"the SDP offer is invalid: {detail}", code="invalid_sdp") from exc

    logger.info("call %s: started for conversation %s", session.id, offer.conversation_id)
    return web.json_response(
        {
            "sdp": answer.sdp,
            "type": answer.type,
            "conversationId": str(offer.conversation_id),
            "sessionId": session.id,
        }
    )


async def _read_json(request: web.Request, max_bytes: int) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLargeError(f"request body is over {max_bytes} bytes")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(f"request body is over {max_bytes} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ClientError("request body is not valid JSON", code="bad_json") from exc
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object", code="bad_json")
    return body


async def _parse_offer(services: Services, body: dict[str, Any]) -> Offer:
    """Validate the offer body, creating a conversation when none is named.

    Plain fields are checked first and the SDP's structure last, so each bad request gets
    the error of its simplest mistake.
    """
    unknown = set(body) - OFFER_FIELDS
    if unknown:
        raise ClientError(f"unknown fields in offer: {sorted(unknown)[:5]}")
    if body.get("type") != "offer":
        raise ClientError(f"field 'type' must be 'offer', not {str(body.get('type'))[:20]!r}")
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ClientError("field 'sdp' is missing or not a string")
    raw_id = body.get("conversationId")
    conversation_id = _parse_uuid(raw_id) if raw_id is not None else None
    level = body.get("level", "A1")
    if isinstance(level, str):
        level = level.upper()
    if level not in LEVELS:
        raise ClientError(f"level {str(level)[:10]!r} is invalid: use one of {', '.join(LEVELS)}")
    title = _check_text(body.get("title"), "title", 255)
    _check_sdp(sdp)

    if conversation_id is not None:
        row = await get_conversation(services.pool, conversation_id)
        if row is None or row["user_id"] != services.local_user_id:
            raise NotFoundError(f"conversation {conversation_id} not found")
        if any(s.conversation_id == conversation_id for s in services.sessions.values()):
            raise ConflictError(f"conversation {conversation_id} already has a call")
        return Offer(sdp, conversation_id, row["level"], created=False)

    row = await create_conversation(
        services.pool, services.local_user_id, title=title or "Voice call", level=level
    )
    return Offer(sdp, row["id"], level, created=True)


def _check_sdp(sdp: str) -> None:
    lines = sdp.replace("\r\n", "\n").split("\n")
    if lines[0].strip() != "v=0":
        raise ClientError("field 'sdp' is not an SDP session description", code="invalid_sdp")
    if not any(line.startswith("m=audio ") for line in lines):
        raise ClientError("the offer has no audio media section", code="invalid_sdp")
    # aiortc accepts an offer without a fingerprint, then fails inside DTLS later.
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise ClientError("the offer has no DTLS fingerprint", code="invalid_sdp")


def _parse_uuid(raw: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError as exc:
        raise ClientError(f"conversationId {str(raw)[:40]!r} is not a UUID") from exc


def _check_text(value: Any, name: str, max_chars: int) -> str | None:
    """Return value if it is a storable string of at most max_chars, or None if absent."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_chars:
        raise ClientError(f"field {name!r} must be a string of at most {max_chars} characters")
    # PostgreSQL text cannot contain NUL, and lone surrogates cannot be encoded as UTF-8.
    if "\x00" in value:
        raise ClientError(f"field {name!r} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ClientError(f"field {name!r} is not valid Unicode text") from exc
    return value
