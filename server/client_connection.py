"""One client's event connection, whatever carries it: a call's data channel or a WebSocket.

Messages are size-checked and rate-limited where they arrive, then handled one at a time
by a single worker, so responses keep the order the client sent its requests in. Each answer
echoes the request's requestId. Errors go to this connection only and never close it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from server import metrics
from server.errors import ClientError, NotFoundError, ParleyError
from server.event_bus import event_json
from server.protocol import (
    PROTOCOL_VERSION,
    ClientEvent,
    ConversationRef,
    CreateConversationEvent,
    DeleteEvent,
    ListConversationsEvent,
    ListTemplatesEvent,
    LoadConversationEvent,
    MessageHistoryEvent,
    PingEvent,
    RequestAudioEvent,
    SearchEvent,
    SendMessageEvent,
    SetStatusEvent,
    UnsubscribeEvent,
    UpdateSettingsEvent,
    parse_event,
)
from server.services import Services
from server.subscription import Subscription
from storage.events import events_after

logger = logging.getLogger(__name__)

# Client messages waiting for the worker; past this the connection is rate limited.
MAX_QUEUED_MESSAGES = 64
# Commas and colons a large voice event may contain outside its base64 audio.
MAX_LARGE_EVENT_SEPARATORS = 64
# Events read from the log per query while replaying; the replay waits for the transport
# to drain between pages.
REPLAY_PAGE = 256

Handler = Callable[[Any], Coroutine[Any, Any, None]]


class ClientConnection:
    def __init__(
        self,
        services: Services,
        user_id: uuid.UUID,
        name: str,
        send: Callable[[str], None],
        writable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """send queues one event without blocking; writable, if given, returns once the
        transport has room for more, so a long replay never overruns it."""
        self.name = name
        self.user_id = user_id
        self._services = services
        self._send = send
        self._writable = writable
        self._incoming: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=MAX_QUEUED_MESSAGES)
        self._subscriptions: dict[uuid.UUID, tuple[Subscription, Callable[[], None]]] = {}
        settings = services.settings
        self._rate = settings.client_events_per_s
        self._burst = float(settings.client_event_burst)
        self._tokens = self._burst
        self._refilled_at = time.monotonic()
        self._limited = False
        self._handlers: dict[type[Any], Handler] = {
            CreateConversationEvent: self._create,
            LoadConversationEvent: self._load,
            ListConversationsEvent: self._list,
            MessageHistoryEvent: self._history,
            SearchEvent: self._search,
            SetStatusEvent: self._set_status,
            UpdateSettingsEvent: self._update,
            UnsubscribeEvent: self._unsubscribe,
            DeleteEvent: self._delete,
            ListTemplatesEvent: self._templates,
            SendMessageEvent: self._send_message,
            RequestAudioEvent: self._request_audio,
            PingEvent: self._ping,
        }

    # -- transport side

    def greet(self) -> None:
        self.send_event(
            "connection:ready",
            {"protocolVersion": PROTOCOL_VERSION, "userId": str(self.user_id), "name": self.name},
        )

    def receive(self, message: str | bytes) -> None:
        """Queue a client message. It runs in transport callbacks, so it only queues or
        drops, and raises nothing."""
        if not self._take_token():
            self._limit(f"more than {self._rate:g} events a second; slow down")
            return
        try:
            self._incoming.put_nowait(message)
        except asyncio.QueueFull:
            self._limit("too many events are waiting; slow down")

    async def serve(self) -> None:
        """Handle queued client messages one at a time, until cancelled."""
        while True:
            message = await self._incoming.get()
            await self.handle(message)

    async def close(self) -> None:
        for _subscription, unsubscribe in self._subscriptions.values():
            unsubscribe()
        self._subscriptions.clear()

    def send_event(
        self, event_type: str, data: dict[str, Any], *, request_id: str | None = None
    ) -> None:
        """Send a response to this connection only. It is not stored in any log."""
        self._send(event_json(event_type, data, request_id=request_id))

    def send_error(
        self,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        conversation_id: uuid.UUID | None = None,
    ) -> None:
        metrics.count_error(code)
        data: dict[str, Any] = {"code": code, "error": message}
        if conversation_id is not None:
            data["conversationId"] = str(conversation_id)
        self.send_event("conversation:error", data, request_id=request_id)

    def subscribe(self, conversation_id: uuid.UUID, *, live: bool = True) -> Subscription:
        """Subscribe to a conversation's events, replacing an earlier subscription."""
        self._drop_subscription(conversation_id)
        subscription = Subscription(self._send, live=live)
        unsubscribe = self._services.bus.subscribe(conversation_id, subscription)
        self._subscriptions[conversation_id] = (subscription, unsubscribe)
        return subscription

    def _drop_subscription(self, conversation_id: uuid.UUID) -> bool:
        entry = self._subscriptions.pop(conversation_id, None)
        if entry is not None:
            entry[1]()
        return entry is not None

    def _origin(self, conversation_id: uuid.UUID) -> Subscription | None:
        entry = self._subscriptions.get(conversation_id)
        return entry[0] if entry is not None else None

    # -- limits

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._limited = False
            return True
        return False

    def _limit(self, reason: str) -> None:
        """Drop a message; tell the client once per burst rather than once per message."""
        if self._limited:
            return
        self._limited = True
        logger.warning("%s: rate limiting client events: %s", self.name, reason)
        # Sent at once rather than queued: the queue is what is full.
        self.send_error("rate_limited", reason)

    # -- dispatch

    async def handle(self, message: str | bytes) -> None:
        """Validate one client message and run its handler. Every failure gets an error
        response."""
        event: ClientEvent | None = None
        try:
            event = self._parse(message)
            await self._handlers[type(event)](event)
        except ParleyError as exc:
            self._answer_error(exc, event)
        except LookupError as exc:
            # The storage layer raises it when a conversation was deleted mid-request.
            logger.info("%s: %s: %s", self.name, _describe(event), exc)
            self._answer_error(NotFoundError(str(exc)), event)
        except Exception:
            logger.exception("%s: handling %s failed", self.name, _describe(event))
            self._answer_error(ParleyError("the server failed to handle the event"), event)

    def _parse(self, message: str | bytes) -> ClientEvent:
        settings = self._services.settings
        if isinstance(message, bytes):
            raise ClientError(
                "binary messages are not accepted: send each event as JSON text",
                code="bad_json",
            )
        size = len(message.encode("utf-8", "surrogatepass"))
        # A voice message:send may be larger than other events; its type is checked below.
        limit = max(settings.max_event_bytes, settings.max_voice_event_bytes)
        if size > limit:
            raise ClientError(f"event of {size} bytes is over the {limit} limit", code="too_large")
        if size > settings.max_event_bytes and _separators(message) > MAX_LARGE_EVENT_SEPARATORS:
            # Only a voice message may be large, and its size is one base64 string, which
            # has no commas or colons. Anything else that large is rejected unparsed,
            # since validating megabytes of keys would stall the event loop.
            raise ClientError(
                f"event of {size} bytes is over the {settings.max_event_bytes} limit",
                code="too_large",
            )
        event = parse_event(message, max_chars=settings.max_message_chars)
        is_voice = isinstance(event, SendMessageEvent) and event.data.inputMethod == "voice"
        if size > settings.max_event_bytes and not is_voice:
            error = ClientError(
                f"event of {size} bytes is over the {settings.max_event_bytes} limit",
                code="too_large",
            )
            error.request_id = event.requestId
            raise error
        return event

    def _answer_error(self, exc: ParleyError, event: ClientEvent | None) -> None:
        conversation_id = getattr(event.data, "conversationId", None) if event else None
        if exc.code == "internal" or not isinstance(exc, ClientError):
            logger.warning("%s: %s: %s", self.name, exc.code, exc.message)
        self.send_error(
            exc.code,
            exc.message,
            request_id=event.requestId if event is not None else exc.request_id,
            conversation_id=conversation_id,
        )

    # -- handlers, one per client event type

    async def _create(self, event: CreateConversationEvent) -> None:
        await self._services.conversations.create(
            self.user_id, event.data, subscribe=self.subscribe, request_id=event.requestId
        )

    async def _load(self, event: LoadConversationEvent) -> None:
        request = event.data
        conversations = self._services.conversations
        row = await conversations.owned(self.user_id, request.conversationId)
        if request.afterSeq is not None and request.afterSeq > row["last_event_seq"]:
            # Checked before subscribing, so a subscription already in place stays.
            raise ClientError(
                f"afterSeq {request.afterSeq} is past the conversation's last seq "
                f"{row['last_event_seq']}; load without afterSeq to start over"
            )
        # Subscribed before the conversation is read, so no event falls between the two.
        subscription = self.subscribe(request.conversationId, live=False)
        try:
            body = await conversations.load(
                self.user_id, request.conversationId, request.messageLimit
            )
        except BaseException:
            self._drop_subscription(request.conversationId)
            raise
        last_seq = body["conversation"]["lastSeq"]
        self.send_event("conversation:loaded", body, request_id=event.requestId)
        subscription.last_seq = last_seq if request.afterSeq is None else request.afterSeq
        await self._replay(request.conversationId, subscription)

    async def follow(self, conversation_id: uuid.UUID, after_seq: int) -> None:
        """Subscribe to a conversation, sending its logged events after after_seq first."""
        subscription = self.subscribe(conversation_id, live=False)
        subscription.last_seq = after_seq
        await self._replay(conversation_id, subscription)

    async def _replay(self, conversation_id: uuid.UUID, subscription: Subscription) -> None:
        pool = self._services.pool
        while True:
            rows = await events_after(pool, conversation_id, subscription.last_seq, REPLAY_PAGE)
            subscription.replay(
                [
                    (row["seq"], event_json(row["event_type"], row["event_data"], seq=row["seq"]))
                    for row in rows
                ]
            )
            # No await between the last read and go_live, so no live event slips past.
            if len(rows) < REPLAY_PAGE and subscription.go_live():
                return
            if self._writable is not None:
                await self._writable()

    async def _list(self, event: ListConversationsEvent) -> None:
        body = await self._services.conversations.list(self.user_id, event.data)
        self.send_event("conversation:listed", body, request_id=event.requestId)

    async def _history(self, event: MessageHistoryEvent) -> None:
        body = await self._services.conversations.history(self.user_id, event.data)
        self.send_event("conversation:history-loaded", body, request_id=event.requestId)

    async def _search(self, event: SearchEvent) -> None:
        body = await self._services.conversations.search(self.user_id, event.data)
        self.send_event("conversation:search-results", body, request_id=event.requestId)

    async def _templates(self, event: ListTemplatesEvent) -> None:
        body = await self._services.conversations.templates()
        self.send_event("template:listed", body, request_id=event.requestId)

    async def _set_status(self, event: SetStatusEvent) -> None:
        conversation_id = event.data.conversationId
        origin = self._origin(conversation_id)
        body, changed = await self._services.conversations.set_status(
            self.user_id,
            conversation_id,
            event.data.status,
            origin=origin,
            request_id=event.requestId,
        )
        if origin is None or not changed:
            # The published event did not reach this connection: answer directly.
            self.send_event("conversation:status-changed", body, request_id=event.requestId)

    async def _update(self, event: UpdateSettingsEvent) -> None:
        origin = self._origin(event.data.conversationId)
        body = await self._services.conversations.update(
            self.user_id,
            event.data.conversationId,
            event.data,
            origin=origin,
            request_id=event.requestId,
        )
        if origin is None:
            self.send_event("conversation:updated", body, request_id=event.requestId)

    async def _unsubscribe(self, event: UnsubscribeEvent) -> None:
        self._answer_ref(event.data, "conversation:unsubscribed", event.requestId)
        self._drop_subscription(event.data.conversationId)

    async def _delete(self, event: DeleteEvent) -> None:
        conversation_id = event.data.conversationId
        # Dropped first, so this connection gets one answer, the one with its requestId.
        self._drop_subscription(conversation_id)
        await self._services.conversations.delete(self.user_id, conversation_id)
        self._answer_ref(event.data, "conversation:deleted", event.requestId)

    def _answer_ref(self, ref: ConversationRef, event_type: str, request_id: str | None) -> None:
        self.send_event(
            event_type, {"conversationId": str(ref.conversationId)}, request_id=request_id
        )

    async def _send_message(self, event: SendMessageEvent) -> None:
        conversation_id = event.data.conversationId
        origin = self._origin(conversation_id)
        if origin is None:
            # Sending implies interest in the reply, so its events come here too.
            await self._services.conversations.owned(self.user_id, conversation_id)
            origin = self.subscribe(conversation_id)
        await self._services.messages.send(
            self.user_id, event.data, origin=origin, request_id=event.requestId
        )

    async def _request_audio(self, event: RequestAudioEvent) -> None:
        body = await self._services.messages.request_audio(
            self.user_id, event.data, subscriptions=self._origin, request_id=event.requestId
        )
        if body is not None:
            self.send_event("chunk:audio-ready", body, request_id=event.requestId)

    async def _ping(self, event: PingEvent) -> None:
        self.send_event("connection:pong", {"serverTime": time.time()}, request_id=event.requestId)


def _separators(message: str) -> int:
    return message.count(",") + message.count(":")


def _describe(event: ClientEvent | None) -> str:
    return event.type if event is not None else "a message"
