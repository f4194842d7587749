"""The call's data channel: JSON events out, client messages in, in order and rate-limited.

Events produced before the channel opens wait in a bounded buffer. Client messages are
size-checked and rate-limited where they arrive, then handled one at a time by a single
worker, so the responses keep the order the client sent them in.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCDataChannel

logger = logging.getLogger(__name__)

# Events produced before the data channel opens wait here; older ones are dropped past this.
MAX_BUFFERED_EVENTS = 256
MAX_MESSAGE_BYTES = 16 * 1024
MAX_QUEUED_MESSAGES = 64
# A client may send this many messages a second on average, in bursts of up to BURST.
MESSAGES_PER_S = 20.0
BURST = 40

ErrorSender = Callable[[str, str], Coroutine[Any, Any, None]]
EventHandler = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


class EventChannel:
    def __init__(self, name: str, on_event: EventHandler, send_error: ErrorSender) -> None:
        self.name = name
        self._on_event = on_event
        self._send_error = send_error
        self._channel: RTCDataChannel | None = None
        self._pending: collections.deque[str] = collections.deque(maxlen=MAX_BUFFERED_EVENTS)
        self._incoming: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=MAX_QUEUED_MESSAGES)
        self._tokens = float(BURST)
        self._refilled_at = time.monotonic()
        self._limited_since: float | None = None
        self._error_tasks: set[asyncio.Task[None]] = set()

    def attach(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    def send(self, message: str) -> None:
        """Send an event now, or keep it until the channel opens."""
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(message)
        else:
            self._pending.append(message)

    async def serve(self) -> None:
        """Handle queued client messages one at a time, forever."""
        while True:
            message = await self._incoming.get()
            try:
                await self._handle(message)
            except Exception:
                logger.exception("%s: handling a data channel message failed", self.name)
                await self._send_error("internal", "the server failed to handle the message")

    def _flush(self) -> None:
        while self._pending and self._channel is not None:
            self._channel.send(self._pending.popleft())

    def _on_message(self, message: str | bytes) -> None:
        # Runs inside aiortc's transport callbacks: nothing may raise from here, or the
        # exception would tear down the whole connection.
        if not self._take_token():
            return
        try:
            self._incoming.put_nowait(message)
        except asyncio.QueueFull:
            self._limit("too many messages are waiting; slow down")

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._refilled_at) * MESSAGES_PER_S)
        self._refilled_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._limited_since = None
            return True
        self._limit(f"more than {MESSAGES_PER_S:.0f} messages a second; slow down")
        return False

    def _limit(self, reason: str) -> None:
        """Drop a message; tell the client once per burst rather than once per message."""
        if self._limited_since is not None:
            return
        self._limited_since = time.monotonic()
        logger.warning("%s: rate limiting data channel messages", self.name)
        # The error jumps the queue on purpose: the queue is what is full.
        task = asyncio.create_task(
            self._send_error("rate_limited", reason), name=f"{self.name}-rate-limited"
        )
        self._error_tasks.add(task)
        task.add_done_callback(self._error_tasks.discard)

    async def close(self) -> None:
        for task in list(self._error_tasks):
            task.cancel()
        await asyncio.gather(*self._error_tasks, return_exceptions=True)

    async def _handle(self, message: str | bytes) -> None:
        size = len(message.encode() if isinstance(message, str) else message)
        if size > MAX_MESSAGE_BYTES:
            await self._send_error(
                "too_large", f"message of {size} bytes is over the {MAX_MESSAGE_BYTES} limit"
            )
            return
        try:
            event = json.loads(message)
        except (ValueError, RecursionError):
            await self._send_error("bad_json", "data channel message is not valid JSON")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self._send_error("bad_json", "an event must be an object with a string type")
            return
        await self._on_event(event)
