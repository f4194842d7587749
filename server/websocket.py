"""`GET /ws`: the event protocol over a WebSocket, for text chat without a call."""

from __future__ import annotations

import asyncio
import logging
import uuid

from aiohttp import WSMsgType, web

from server.app_keys import SERVICES_KEY
from server.auth import authenticate
from server.client_connection import ClientConnection

logger = logging.getLogger(__name__)

# A frame past this size makes aiohttp close the connection: with aiohttp 3.14 the client
# sees close code 1009 or, when the reset comes first, 1006. Smaller events over the
# protocol's limits get a too_large error and the socket stays open.
FRAME_MARGIN_BYTES = 64 * 1024
# WebSocket close code for a client that reads events slower than they are produced.
CLOSE_TRY_AGAIN_LATER = 1013


async def handle_websocket(request: web.Request) -> web.WebSocketResponse:
    services = request.app[SERVICES_KEY]
    settings = services.settings
    # Checked before the upgrade, so a bad token gets a plain 401 with a JSON body.
    user_id = await authenticate(services, request, allow_query=True)
    socket = web.WebSocketResponse(
        heartbeat=30.0,
        max_msg_size=max(settings.max_event_bytes, settings.max_voice_event_bytes)
        + FRAME_MARGIN_BYTES,
    )
    await socket.prepare(request)

    name = f"ws-{uuid.uuid4().hex[:12]}"
    outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=settings.client_outbox_size)
    closing: list[asyncio.Task[bool]] = []

    def send(message: str) -> None:
        if closing:
            return
        try:
            outbox.put_nowait(message)
        except asyncio.QueueFull:
            logger.warning("%s: client reads too slowly; closing", name)
            closing.append(
                asyncio.create_task(
                    socket.close(
                        code=CLOSE_TRY_AGAIN_LATER, message=b"too slow: reconnect with afterSeq"
                    )
                )
            )

    async def writable() -> None:
        # Polled, because asyncio.Queue has no wait-until-below-a-size.
        while outbox.qsize() > outbox.maxsize // 2 and not socket.closed:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    connection = ClientConnection(services, user_id, name, send, writable)
    services.websockets.add(socket)
    writer = asyncio.create_task(_write(socket, outbox), name=f"{name}-writer")
    worker = asyncio.create_task(connection.serve(), name=f"{name}-worker")
    logger.info("%s: opened for user %s", name, user_id)
    connection.greet()
    try:
        async for message in socket:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                connection.receive(message.data)
            elif message.type == WSMsgType.ERROR:
                logger.info("%s: closed with an error: %s", name, socket.exception())
    finally:
        worker.cancel()
        writer.cancel()
        await asyncio.gather(worker, writer, *closing, return_exceptions=True)
        await connection.close()
        services.websockets.discard(socket)
        logger.info("%s: closed (code %s)", name, socket.close_code)
    return socket


async def _write(socket: web.WebSocketResponse, outbox: asyncio.Queue[str]) -> None:
    """Write queued events in order until the socket closes."""
    while not socket.closed:
        message = await outbox.get()
        try:
            await socket.send_str(message)
        except ConnectionResetError:
            return
