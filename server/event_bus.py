"""Backend event bus: stores each conversation event, then sends it to every subscriber.

An event reaches subscribers as `{"type", "seq", "data"}`, where `seq` is its number in the
conversation's event log, so a client that reconnects can ask for what it missed. Fan-out is
local to this process. The interface (publish, subscribe) is what a bus across several
server nodes would keep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import asyncpg

from server import metrics
from storage.events import append_event

logger = logging.getLogger(__name__)


class Subscriber(Protocol):
    def deliver(self, seq: int | None, message: str) -> None:
        """Take one event (seq None: not in the log); must not block, because it runs
        under the publish lock."""


# Writes an event's row and the event itself together; returns the event's seq.
EventStore = Callable[[dict[str, Any]], Awaitable[int]]


def event_json(
    event_type: str, data: dict[str, Any], *, seq: int | None = None, request_id: str | None = None
) -> str:
    event: dict[str, Any] = {"type": event_type}
    if seq is not None:
        event["seq"] = seq
    if request_id is not None:
        event["requestId"] = request_id
    event["data"] = data
    return json.dumps(event, ensure_ascii=False, default=str)


class EventBus:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._subscribers: dict[uuid.UUID, list[Subscriber]] = {}
        # One lock per conversation keeps storing and sending in seq order. A lock lives
        # only while some publisher holds a reference to it.
        self._locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def subscribe(self, conversation_id: uuid.UUID, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; return the function that removes it."""
        self._subscribers.setdefault(conversation_id, []).append(subscriber)

        def unsubscribe() -> None:
            subscribers = self._subscribers.get(conversation_id, [])
            if subscriber in subscribers:
                subscribers.remove(subscriber)
            if not subscribers:
                self._subscribers.pop(conversation_id, None)

        return unsubscribe

    def subscriber_count(self, conversation_id: uuid.UUID) -> int:
        return len(self._subscribers.get(conversation_id, ()))

    async def publish(
        self,
        conversation_id: uuid.UUID,
        event_type: str,
        data: dict[str, Any],
        *,
        origin: Subscriber | None = None,
        request_id: str | None = None,
        store: EventStore | None = None,
    ) -> int:
        """Store the event in the log, then send it; return its seq.

        The origin subscriber (the connection whose request caused the event) gets its
        copy with the request's requestId. store, when given, writes the event together
        with the row it is about and returns its seq; it may add fields to data.
        """
        data = {"conversationId": str(conversation_id), **data}
        lock = self._locks.setdefault(conversation_id, asyncio.Lock())
        async with lock:
            if store is None:
                seq = await append_event(self._pool, conversation_id, event_type, data)
            else:
                seq = await store(data)
            message = event_json(event_type, data, seq=seq)
            for subscriber in list(self._subscribers.get(conversation_id, [])):
                if subscriber is origin and request_id is not None:
                    copy = event_json(event_type, data, seq=seq, request_id=request_id)
                else:
                    copy = message
                try:
                    subscriber.deliver(seq, copy)
                except Exception:
                    # One broken connection must not keep the event from the others.
                    logger.exception(
                        "sending %s to a subscriber of %s failed", event_type, conversation_id
                    )
        return seq

    async def publish_error(
        self, conversation_id: uuid.UUID, code: str, message: str, **extra: Any
    ) -> int:
        logger.warning("conversation %s: %s: %s", conversation_id, code, message)
        metrics.count_error(code)
        return await self.publish(
            conversation_id, "conversation:error", {"code": code, "error": message, **extra}
        )

    def broadcast(self, conversation_id: uuid.UUID, event_type: str, data: dict[str, Any]) -> None:
        """Send an event that is not worth logging (an interim transcript) to the current
        subscribers only; a client that reconnects later does not get it."""
        message = event_json(event_type, {"conversationId": str(conversation_id), **data})
        for subscriber in list(self._subscribers.get(conversation_id, [])):
            try:
                subscriber.deliver(None, message)
            except Exception:
                logger.exception(
                    "sending %s to a subscriber of %s failed", event_type, conversation_id
                )

    def notify(self, conversation_id: uuid.UUID, event_type: str, data: dict[str, Any]) -> None:
        """Send an event that cannot be logged, because its conversation is gone, then drop
        the conversation's subscribers: no event can follow it."""
        message = event_json(event_type, {"conversationId": str(conversation_id), **data})
        for subscriber in self._subscribers.pop(conversation_id, []):
            try:
                subscriber.deliver(None, message)
            except Exception:
                logger.exception("notifying a subscriber of %s failed", conversation_id)
