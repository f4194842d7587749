"""The outbound audio track of a call: queued speech, paced in exact 20 ms frames."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media.frame_clock import FrameClock, paced_frame
from media.frames import SAMPLES_PER_FRAME, WEBRTC_RATE_HZ

logger = logging.getLogger(__name__)


@dataclass
class QueuedSpeech:
    """One chunk's audio at 48 kHz, followed by its pause."""

    samples: np.ndarray
    pause_after_s: float
    on_start: Callable[[float], None] | None = None
    on_end: Callable[[float], None] | None = None
    _silence_left: int = field(default=-1, repr=False)


class ReplyAudioTrack(MediaStreamTrack):
    """Plays queued speech in order, and silence while the queue is empty."""

    kind = "audio"

    def __init__(self, max_queued: int = 64) -> None:
        super().__init__()
        self._queue: collections.deque[QueuedSpeech] = collections.deque()
        self._max_queued = max_queued
        self._space = asyncio.Event()
        self._space.set()
        self._current: QueuedSpeech | None = None
        self._offset = 0
        self._clock = FrameClock()

    @property
    def idle(self) -> bool:
        return self._current is None and not self._queue

    async def enqueue(self, speech: QueuedSpeech) -> None:
        """Queue a chunk's audio, waiting while the queue is full."""
        while len(self._queue) >= self._max_queued:
            self._space.clear()
            await self._space.wait()
        self._queue.append(speech)

    def clear(self) -> int:
        """Drop everything not yet played; return how many chunks were dropped."""
        dropped = len(self._queue) + (1 if self._current is not None else 0)
        self._queue.clear()
        self._current = None
        self._space.set()
        return dropped

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError

        index = await self._clock.next_frame()
        return paced_frame(self._next_samples(SAMPLES_PER_FRAME), index)

    def _next_samples(self, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.int16)
        filled = 0
        while filled < count:
            speech = self._current or self._start_next()
            if speech is None:
                break
            filled += self._fill_from(speech, out[filled:])
        return out

    def _start_next(self) -> QueuedSpeech | None:
        if not self._queue:
            return None
        speech = self._queue.popleft()
        self._space.set()
        self._current = speech
        self._offset = 0
        if speech.on_start is not None:
            speech.on_start(time.monotonic())
        return speech

    def _fill_from(self, speech: QueuedSpeech, out: np.ndarray) -> int:
        """Copy speech, then its pause as silence, into out; return samples written."""
        remaining = len(speech.samples) - self._offset
        if remaining > 0:
            taken = min(remaining, len(out))
            out[:taken] = speech.samples[self._offset : self._offset + taken]
            self._offset += taken
            return taken

        if speech._silence_left < 0:
            speech._silence_left = round(speech.pause_after_s * WEBRTC_RATE_HZ)
            if speech.on_end is not None:
                speech.on_end(time.monotonic())
        taken = min(speech._silence_left, len(out))
        speech._silence_left -= taken
        if speech._silence_left <= 0:
            self._current = None
        return taken
