"""`POST /api/rtc/offer`: negotiate a call and start its session."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiortc import RTCSessionDescription

from server import metrics
from server.app_keys import SERVICES_KEY
from server.auth import authenticate
from server.call_session import CallSession
from server.errors import ClientError, ConflictError
from server.ice import filter_remote_candidates
from server.json_body import parse_uuid, read_body
from server.prompts import LEVELS
from server.protocol import CreateConversation
from server.services import Services
from storage.conversations import delete_conversation

logger = logging.getLogger(__name__)

OFFER_FIELDS = {"sdp", "type", "conversationId", "level", "title"}


@dataclass
class Offer:
    sdp: str
    conversation_id: uuid.UUID
    # The call's data channel starts with the logged events after this seq.
    after_seq: int
    # True when this offer created the conversation, so a failed offer removes it again.
    created: bool


async def handle_offer(request: web.Request) -> web.Response:
    services = request.app[SERVICES_KEY]
    user_id = await authenticate(services, request)
    body = await _read_json(request, services.settings.max_offer_bytes)
    offer = await _parse_offer(services, user_id, body)

    session = CallSession(services, offer.conversation_id, user_id)
    services.sessions[session.id] = session
    try:
        sdp = filter_remote_candidates(offer.sdp, services.settings.effective_media_addresses)
        answer = await session.accept(
            RTCSessionDescription(sdp=sdp, type="offer"), after_seq=offer.after_seq
        )
        metrics.CALLS.inc()
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
    raw = await read_body(request, max_bytes)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ClientError("request body is not valid JSON", code="bad_json") from exc
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object", code="bad_json")
    return body


async def _parse_offer(services: Services, user_id: uuid.UUID, body: dict[str, Any]) -> Offer:
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
    conversation_id = parse_uuid(raw_id, "conversationId") if raw_id is not None else None
    level = body.get("level", "A1")
    if isinstance(level, str):
        level = level.upper()
    if level not in LEVELS:
        raise ClientError(f"level {str(level)[:10]!r} is invalid: use one of {', '.join(LEVELS)}")
    title = _check_text(body.get("title"), "title", 255)
    _check_sdp(sdp)

    if conversation_id is not None:
        # A paused conversation is resumed by the call; a closed one takes no call.
        row = await services.conversations.open_for_messages(user_id, conversation_id)
        if services.call_for(conversation_id) is not None:
            raise ConflictError(f"conversation {conversation_id} already has a call")
        return Offer(sdp, conversation_id, after_seq=row["last_event_seq"], created=False)

    created = await services.conversations.create(
        user_id, CreateConversation(title=title or "Voice call", level=level)
    )
    # The caller gets the whole log of a conversation its offer created, from seq 1.
    return Offer(sdp, uuid.UUID(created["conversationId"]), after_seq=0, created=True)


def _check_sdp(sdp: str) -> None:
    lines = sdp.replace("\r\n", "\n").split("\n")
    if lines[0].strip() != "v=0":
        raise ClientError("field 'sdp' is not an SDP session description", code="invalid_sdp")
    if not any(line.startswith("m=audio ") for line in lines):
        raise ClientError("the offer has no audio media section", code="invalid_sdp")
    # aiortc accepts an offer without a fingerprint, then fails inside DTLS later.
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise ClientError("the offer has no DTLS fingerprint", code="invalid_sdp")


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
