"""Bearer tokens on HTTP requests: `Authorization: Bearer TOKEN`, or `?token=` where a
browser cannot set headers (WebSocket upgrades and audio elements)."""

from __future__ import annotations

import logging
import uuid

from aiohttp import web

from server.app_keys import SERVICES_KEY
from server.errors import UnauthorizedError
from server.services import Services
from storage.users import user_for_token

logger = logging.getLogger(__name__)

# Longer strings are not tokens; rejecting them early keeps them out of the database.
MAX_TOKEN_CHARS = 128


async def authenticate(
    services: Services, request: web.Request, *, allow_query: bool = False
) -> uuid.UUID:
    """Return the id of the user whose token the request carries, or raise 401."""
    token = _bearer_token(request)
    if token is None and allow_query:
        token = request.query.get("token")
    if not token:
        raise UnauthorizedError(
            "a bearer token is required: send 'Authorization: Bearer TOKEN' "
            "(create one with `parley user create NAME`)"
        )
    row = await user_for_token(services.pool, token) if len(token) <= MAX_TOKEN_CHARS else None
    if row is None:
        # The token itself is never logged.
        logger.info("rejected an unknown token on %s %s", request.method, request.path)
        raise UnauthorizedError("the bearer token is not valid")
    user_id: uuid.UUID = row["id"]
    return user_id


def _bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise UnauthorizedError("the Authorization header must use the Bearer scheme")
    return token.strip()


async def request_user(
    request: web.Request, *, allow_query: bool = False
) -> tuple[Services, uuid.UUID]:
    """Return the app's services and the id of the user the request's token names."""
    services = request.app[SERVICES_KEY]
    return services, await authenticate(services, request, allow_query=allow_query)
