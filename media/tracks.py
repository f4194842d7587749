"""The outbound audio track of a call: queued speech, paced in exact 20 ms frames."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media.frame_clock import FrameClock, paced_frame
from media.frames import SAMPLES_PER_FRAME, WEBRTC_RATE_HZ

logger = logging.getLogger(__name__)


@dataclass
class QueuedSpeech:
    """One chunk's audio at 48 kHz, followed by its pause, and how much of it was played."""

    samples: np.ndarray
    pause_after_s: float
    on_start: Callable[[float], None] | None = None
    on_end: Callable[[float], None] | None = None
    # Describes the chunk for a track observer (a recording's timeline), on request.
    details: Callable[[], dict[str, Any]] | None = None
    # Speech samples handed to the connection so far.
    played: int = 0
    _silence_left: int = field(default=-1, repr=False)

    @property
    def finished(self) -> bool:
        return self.played >= len(self.samples)

    @property
    def played_ms(self) -> int:
        return self.played * 1000 // WEBRTC_RATE_HZ


class TrackObserver(Protocol):
    """Watches what a track sends, with the monotonic time each sample was due."""

    def frame_sent(self, samples: np.ndarray, due_at: float) -> None: ...

    def speech_started(self, speech: QueuedSpeech, at: float) -> None: ...

    def speech_ended(self, speech: QueuedSpeech, at: float) -> None:
        """Called when speech's last sample is sent, or when an interrupt cuts it."""


class ReplyAudioTrack(MediaStreamTrack):
    """Plays queued speech in order, and silence while the queue is empty or paused.

    A call pauses the track the moment the caller starts to speak, then either resumes it
    (a cough, an "mm-hm") or interrupts it, which drops everything not yet played and
    tells the listeners, so the reply that queued the audio stops too.
    """

    kind = "audio"

    def __init__(self, max_queued: int = 64) -> None:
        super().__init__()
        self._queue: collections.deque[QueuedSpeech] = collections.deque()
        self._max_queued = max_queued
        self._space = asyncio.Event()
        self._space.set()
        self._current: QueuedSpeech | None = None
        self._clock = FrameClock()
        self._paused = False
        self._listeners: list[Callable[[str], None]] = []
        # Speech samples played over the whole call, pauses not counted.
        self.played_samples = 0
        # Asked before speech starts on a silent track. False keeps the track silent for
        # this frame (the caller is talking), and the callback may interrupt the reply.
        self.may_start: Callable[[], bool] | None = None
        self.observer: TrackObserver | None = None
        # When the frame being filled was due, and when the last sent frame ended.
        self._frame_due_at = 0.0
        self._sent_until = 0.0

    @property
    def idle(self) -> bool:
        return self._current is None and not self._queue

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def active(self) -> bool:
        """True while a reply is playing or being prepared for this track."""
        return not self.idle or bool(self._listeners)

    async def enqueue(self, speech: QueuedSpeech) -> None:
        """Queue a chunk's audio, waiting while the queue is full."""
        while len(self._queue) >= self._max_queued:
            self._space.clear()
            await self._space.wait()
        self._queue.append(speech)

    def clear(self) -> int:
        """Drop everything not yet played; return how many chunks were dropped."""
        dropped = len(self._queue) + (1 if self._current is not None else 0)
        current = self._current
        if current is not None and not current.finished and self.observer is not None:
            self.observer.speech_ended(current, self._sent_until)
        self._queue.clear()
        self._current = None
        self._space.set()
        return dropped

    def pause(self) -> None:
        """Send silence from the next frame on, keeping the place in the speech."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def interrupt(self, reason: str) -> int:
        """Drop everything not yet played, unpause, tell each listener why, and return how
        many chunks were dropped."""
        dropped = self.clear()
        self._paused = False
        for listener in list(self._listeners):
            listener(reason)
        return dropped

    def watch_interrupts(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call listener(reason) on every interrupt, and return the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError

        index = await self._clock.next_frame()
        self._frame_due_at = self._clock.due_at
        if self._paused or not self._may_start():
            samples = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        else:
            samples = self._next_samples(SAMPLES_PER_FRAME)
        self._sent_until = self._frame_due_at + SAMPLES_PER_FRAME / WEBRTC_RATE_HZ
        if self.observer is not None:
            self.observer.frame_sent(samples, self._frame_due_at)
        return paced_frame(samples, index)

    def _may_start(self) -> bool:
        """Ask may_start before speech starts on a silent track. It may interrupt the reply."""
        if self._current is not None or not self._queue or self.may_start is None:
            return True
        return self.may_start()

    def _next_samples(self, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.int16)
        filled = 0
        while filled < count:
            speech = self._current or self._start_next(filled)
            if speech is None:
                break
            filled += self._fill_from(speech, out[filled:], filled)
        return out

    def _due_at(self, offset: int) -> float:
        """Return when the sample at offset in the frame being filled is due."""
        return self._frame_due_at + offset / WEBRTC_RATE_HZ

    def _start_next(self, offset: int) -> QueuedSpeech | None:
        if not self._queue:
            return None
        speech = self._queue.popleft()
        self._space.set()
        self._current = speech
        if speech.on_start is not None:
            speech.on_start(time.monotonic())
        if self.observer is not None:
            self.observer.speech_started(speech, self._due_at(offset))
        return speech

    def _fill_from(self, speech: QueuedSpeech, out: np.ndarray, offset: int) -> int:
        """Copy speech, then its pause as silence, into out, which starts at offset in the
        frame; return samples written."""
        remaining = len(speech.samples) - speech.played
        if remaining > 0:
            taken = min(remaining, len(out))
            out[:taken] = speech.samples[speech.played : speech.played + taken]
            speech.played += taken
            self.played_samples += taken
            if speech.finished and self.observer is not None:
                self.observer.speech_ended(speech, self._due_at(offset + taken))
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
