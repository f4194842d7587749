"""The aiohttp application: routes, error bodies, and the services' lifetime."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import WSCloseCode, web

from server import metrics
from server.app_keys import SERVICES_KEY
from server.auth import authenticate
from server.errors import ClientError, NotFoundError, ParleyError
from server.ice import restrict_host_addresses
from server.recordings_rest import add_recording_routes
from server.rest import add_routes
from server.services import open_services
from server.settings import Settings
from server.signalling import handle_offer
from server.websocket import handle_websocket
from storage.history import audio_owner

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
SETTINGS_KEY = web.AppKey("settings", Settings)

HTTP_ERROR_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Return every failure as a JSON body with a stable code."""
    try:
        return await handler(request)
    except ParleyError as exc:
        metrics.count_error(exc.code)
        return web.json_response(exc.to_json(), status=exc.http_status, headers=exc.headers())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_ERROR_CODES.get(exc.status, "invalid_field")
        metrics.count_error(code)
        # Keep headers such as Allow on a 405.
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
        return web.json_response(
            {"error": exc.reason, "code": code}, status=exc.status, headers=headers
        )
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        metrics.count_error("internal")
        return web.json_response(
            {"error": "internal server error; see the server log", "code": "internal"},
            status=500,
        )


async def handle_health(request: web.Request) -> web.Response:
    services = request.app[SERVICES_KEY]
    # Threads and tasks still named after a call show a session that did not clean up.
    call_threads = [t for t in threading.enumerate() if t.name.startswith("call-")]
    call_tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("call-")]
    return web.json_response(
        {
            # Calls still connect without a model, but every reply fails.
            "status": "degraded" if services.llm.name == "unavailable" else "ok",
            "calls": len(services.sessions),
            "websockets": len(services.websockets),
            "callThreads": len(call_threads),
            "callTasks": len(call_tasks),
            "llm": services.llm.name,
            "stt": services.stt.model_name,
            "tts": services.tts.voice_path,
            "memory": services.memory.status(),
        }
    )


async def handle_audio(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES_KEY]
    # An <audio> element cannot send headers, so the token may come as ?token=.
    user_id = await authenticate(services, request, allow_query=True)
    file_id = request.match_info["file_id"].lower()
    path = services.audio_files.path_for(file_id)
    if path is None:
        raise ClientError(f"audio id {file_id[:40]!r} is invalid: expected 32 hex digits")
    # Another user's audio gets the same 404 as a missing file.
    if await audio_owner(services.pool, file_id) != user_id:
        raise NotFoundError(f"audio {file_id} not found")
    if not await asyncio.to_thread(path.is_file):
        raise NotFoundError(f"audio {file_id} not found")
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


async def handle_index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def services_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    restrict_host_addresses(settings.effective_media_addresses)
    services = await open_services(settings)
    app[SERVICES_KEY] = services
    metrics.track_active_calls(lambda: len(services.sessions))
    yield
    await services.close()


async def close_websockets(app: web.Application) -> None:
    """Close open WebSockets at shutdown, so the server does not wait out their handlers."""
    services = app.get(SERVICES_KEY)
    if services is None:
        return
    for socket in list(services.websockets):
        await socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


def build_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=settings.max_offer_bytes)
    app[SETTINGS_KEY] = settings
    app.cleanup_ctx.append(services_context)
    app.on_shutdown.append(close_websockets)
    app.router.add_get("/healthz", handle_health)
    app.router.add_get("/metrics", metrics.handle_metrics)
    app.router.add_post("/api/rtc/offer", handle_offer)
    app.router.add_get("/ws", handle_websocket)
    add_routes(app)
    add_recording_routes(app)
    app.router.add_get("/api/audio/{file_id}", handle_audio)
    app.router.add_get("/", handle_index)
    app.router.add_static("/web/", WEB_DIR)
    return app
