"""Keeping background memory work off the path to the next reply.

Replies, and turns from speech onset to the reply's end, hold the gate. Background work
starts only after the gate has been quiet for a while, and stops as soon as anything
holds or touches it, so it never competes with a caller's turn for the CPU or the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class Preempted(Exception):
    """Foreground work started, so the background step was stopped; it is tried again."""


class ForegroundGate:
    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self._holders = 0
        # When the quiet period began, or will begin for activity announced ahead.
        self._quiet_from = 0.0
        self._waiters: set[asyncio.Future[None]] = set()
        # Set whenever the last holder leaves.
        self._released = asyncio.Event()

    @property
    def busy(self) -> bool:
        return self._holders > 0 or time.monotonic() - self._quiet_from < self.quiet_s

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Mark foreground work for the duration of the block."""
        self._holders += 1
        self.touch()
        try:
            yield
        finally:
            self._holders -= 1
            self._quiet_from = max(self._quiet_from, time.monotonic())
            if self._holders == 0:
                self._released.set()

    def touch(self, lasting_s: float = 0.0) -> None:
        """Mark foreground activity from now for lasting_s seconds, replacing any earlier
        mark: a caller who starts speaking marks the longest utterance, and the end of the
        utterance shortens that mark to now."""
        self._quiet_from = time.monotonic() + lasting_s
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_quiet(self) -> None:
        """Return once nothing has held or touched the gate for quiet_s seconds."""
        while True:
            if self._holders:
                self._released.clear()
                await self._released.wait()
                continue
            remaining = self.quiet_s - (time.monotonic() - self._quiet_from)
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)

    async def run_unless_preempted(self, work: Awaitable[T]) -> T:
        """Run work, cancelling it and raising Preempted when foreground work starts."""
        task = asyncio.ensure_future(work)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            racing: set[asyncio.Future[Any]] = {task, waiter}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiters.discard(waiter)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise Preempted
        return task.result()
