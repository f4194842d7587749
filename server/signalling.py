"""`POST /api/rtc/offer`: negotiate a call and start its session."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from aiohttp import web
from aiortc import RTCSessionDescription

from server.call_session import CallSession
from server.errors import ClientError, NotFoundError, PayloadTooLargeError
from server.ice import filter_remote_candidates
from server.prompts import LEVELS
from server.services import Services
from storage.conversations import create_conversation, get_conversation

logger = logging.getLogger(__name__)

SERVICES_KEY = web.AppKey("services", Services)


async def handle_offer(request: web.Request) -> web.Response:
    services = request.app[SERVICES_KEY]
    body = await _read_json(request, services.settings.max_offer_bytes)
    sdp, conversation_id, level = await _parse_offer(services, body)

    session = CallSession(services, conversation_id, level)
    services.sessions[session.id] = session
    try:
        offer = RTCSessionDescription(
            sdp=filter_remote_candidates(sdp, services.settings.media_addresses), type="offer"
        )
        answer = await session.accept(offer)
    except Exception as exc:
        # aiortc raises ValueError, KeyError or IndexError on SDP it cannot parse.
        await session.close("offer rejected")
        logger.info("rejected offer for conversation %s: %r", conversation_id, exc)
        raise ClientError(f"the SDP offer could not be applied: {exc}", code="invalid_sdp") from exc

    logger.info("call %s: started for conversation %s", session.id, conversation_id)
    return web.json_response(
        {
            "sdp": answer.sdp,
            "type": answer.type,
            "conversationId": str(conversation_id),
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
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError("request body is not valid JSON", code="bad_json") from exc
    if not isinstance(body, dict):
        raise ClientError("request body must be a JSON object", code="bad_json")
    return body


async def _parse_offer(services: Services, body: dict[str, Any]) -> tuple[str, uuid.UUID, str]:
    """Validate the offer body; return (sdp, conversation id, level), creating a conversation
    when none is given."""
    unknown = set(body) - {"sdp", "type", "conversationId", "level", "title"}
    if unknown:
        raise ClientError(f"unknown fields in offer: {sorted(unknown)}")
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ClientError("field 'sdp' is missing or not a string")
    if body.get("type") != "offer":
        raise ClientError(f"field 'type' must be 'offer', not {body.get('type')!r}")
    if not sdp.lstrip().startswith("v=0"):
        raise ClientError("field 'sdp' is not an SDP session description", code="invalid_sdp")
    if "\nm=audio " not in sdp.replace("\r\n", "\n"):
        raise ClientError("the offer has no audio media section", code="invalid_sdp")

    raw_id = body.get("conversationId")
    if raw_id is not None:
        try:
            conversation_id = uuid.UUID(str(raw_id))
        except ValueError as exc:
            raise ClientError(f"conversationId {raw_id!r} is not a UUID") from exc
        row = await get_conversation(services.pool, conversation_id)
        if row is None or row["user_id"] != services.local_user_id:
            raise NotFoundError(f"conversation {conversation_id} not found")
        return sdp, conversation_id, row["level"]

    level = body.get("level", "A1")
    if level not in LEVELS:
        raise ClientError(f"level {level!r} is invalid: use one of {', '.join(LEVELS)}")
    title = body.get("title")
    if title is not None and (not isinstance(title, str) or len(title) > 255):
        raise ClientError("field 'title' must be a string of at most 255 characters")
    row = await create_conversation(
        services.pool, services.local_user_id, title=title or "Voice call", level=level
    )
    return sdp, row["id"], level
