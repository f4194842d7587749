"""Keys of the objects the aiohttp application holds for its handlers."""

from __future__ import annotations

from aiohttp import web

from server.services import Services

SERVICES_KEY = web.AppKey("services", Services)
