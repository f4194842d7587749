"""The call's data channel as a transport for a ClientConnection.

Events produced before the channel opens wait in a bounded buffer and are sent when it
opens. Client messages go to the connection, which checks and handles them.
"""

from __future__ import annotations

import collections
import logging

from aiortc import RTCDataChannel

from server.client_connection import ClientConnection

logger = logging.getLogger(__name__)

# Events produced before the data channel opens wait here, and older ones are dropped past
# this. The client can read dropped ones back with conversation:load and afterSeq.
MAX_BUFFERED_EVENTS = 256


class DataChannelTransport:
    def __init__(self, name: str) -> None:
        self.name = name
        self._channel: RTCDataChannel | None = None
        self._pending: collections.deque[str] = collections.deque(maxlen=MAX_BUFFERED_EVENTS)

    def attach(self, channel: RTCDataChannel, connection: ClientConnection) -> None:
        self._channel = channel
        channel.on("message", connection.receive)
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    def send(self, message: str) -> None:
        """Send an event now, or keep it until the channel opens."""
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(message)
        elif channel is None or channel.readyState == "connecting":
            self._pending.append(message)
        # A closing or closed channel drops the event: the call is ending.

    def _flush(self) -> None:
        while self._pending and self._channel is not None:
            self._channel.send(self._pending.popleft())
