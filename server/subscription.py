"""One connection's feed of one conversation: missed events replayed from the log, then the
live ones. _send_once delivers each seq at most once and in increasing order."""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Live events held while the log is replayed. Past this the buffered live events are dropped and
# the replay reads them from the log instead, so memory stays bounded.
MAX_HELD_EVENTS = 512


class Subscription:
    def __init__(self, send: Callable[[str], None], *, last_seq: int = 0, live: bool) -> None:
        self._send = send
        self.last_seq = last_seq
        # Live events that arrive during a replay wait here; None once live.
        self._live_backlog: list[tuple[int, str]] | None = None if live else []
        self.overflowed = False

    def deliver(self, seq: int | None, message: str) -> None:
        """Send a live event now, or hold it while the replay runs."""
        if seq is None:
            # Not a logged event (the conversation was deleted): nothing to order it by.
            self._send(message)
        elif self._live_backlog is not None:
            if len(self._live_backlog) >= MAX_HELD_EVENTS:
                self._live_backlog.clear()
                self.overflowed = True
            self._live_backlog.append((seq, message))
        else:
            self._send_once(seq, message)

    def replay(self, events: list[tuple[int, str]]) -> None:
        """Send events read from the log, oldest first, skipping any already sent."""
        for seq, message in events:
            self._send_once(seq, message)

    def go_live(self) -> bool:
        """Send the buffered live events and deliver live ones from now on.

        Returns False, and stays in replay, when buffered live events were dropped: the caller
        must replay from the log again from last_seq before it tries again.
        """
        if self._live_backlog is None:
            return True
        if self.overflowed:
            self.overflowed = False
            self._live_backlog = []
            return False
        backlog, self._live_backlog = self._live_backlog, None
        for seq, message in sorted(backlog, key=lambda item: item[0]):
            self._send_once(seq, message)
        return True

    def _send_once(self, seq: int, message: str) -> None:
        if seq > self.last_seq:
            self.last_seq = seq
            self._send(message)
