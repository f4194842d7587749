"""A test client for the event protocol on `/ws`: sends events, collects every event the
server sends, and waits for the ones a test expects."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

Event = dict[str, Any]
_request_ids = itertools.count(1)


class EventClient:
    def __init__(self, http: aiohttp.ClientSession, socket: aiohttp.ClientWebSocketResponse):
        self._http = http
        self.socket = socket
        self.events: list[Event] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, server_url: str, token: str) -> EventClient:
        http = aiohttp.ClientSession()
        try:
            socket = await http.ws_connect(f"{server_url}/ws?token={token}")
        except BaseException:
            await http.close()
            raise
        client = cls(http, socket)
        await client.wait_for(lambda e: e["type"] == "connection:ready")
        return client

    async def close(self) -> None:
        await self.socket.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._http.close()

    async def _read(self) -> None:
        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            async with self._arrived:
                self.events.append(json.loads(message.data))
                self._arrived.notify_all()

    async def send_raw(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            await self.socket.send_bytes(raw)
        else:
            await self.socket.send_str(raw)

    async def send(self, event_type: str, data: dict[str, Any] | None = None) -> str:
        """Send an event with a fresh requestId; return that id."""
        request_id = f"r{next(_request_ids)}"
        event: Event = {"type": event_type, "requestId": request_id}
        if data is not None:
            event["data"] = data
        await self.socket.send_str(json.dumps(event))
        return request_id

    async def request(
        self, event_type: str, data: dict[str, Any] | None = None, timeout_s: float = 30.0
    ) -> Event:
        """Send an event and return the first response to it (the same requestId)."""
        request_id = await self.send(event_type, data)
        return await self.wait_for(lambda e: e.get("requestId") == request_id, timeout_s)

    async def wait_for(
        self, predicate: Callable[[Event], bool], timeout_s: float = 30.0, *, start: int = 0
    ) -> Event:
        """Return the first event from index start on that matches predicate."""
        deadline = time.monotonic() + timeout_s
        async with self._arrived:
            while True:
                for event in self.events[start:]:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    types = [e["type"] for e in self.events[-10:]]
                    raise TimeoutError(f"no matching event within {timeout_s} s; last: {types}")
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    continue

    async def wait_for_reply(self, conversation_id: str, timeout_s: float = 60.0) -> Event:
        """Return the next finished assistant message of the conversation."""
        return await self.wait_for(
            lambda e: (
                e["type"] == "message:received"
                and e["data"]["role"] == "assistant"
                and e["data"]["conversationId"] == conversation_id
            ),
            timeout_s,
        )

    def of_type(self, event_type: str) -> list[Event]:
        return [event for event in self.events if event["type"] == event_type]

    async def is_open(self) -> bool:
        """Check the connection still responds: a ping gets its pong."""
        answer = await self.request("connection:ping", timeout_s=10)
        return answer["type"] == "connection:pong"
