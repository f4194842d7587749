"""Pacing for outbound audio tracks: one 20 ms frame at a time, on an absolute schedule."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np

from media.frames import SAMPLES_PER_FRAME, WEBRTC_RATE_HZ, samples_to_frame

FRAME_S = SAMPLES_PER_FRAME / WEBRTC_RATE_HZ
# After a stall shorter than this (a busy loop, a starved process), the frames that fell
# due are sent at once, so the stream keeps its schedule: the receiver conceals the gap and
# then plays the backlog slightly faster, and no delay is left behind. Restarting the
# schedule instead would add the stall to the call's delay for good (measured: 0.5-0.7 s
# over 10 minutes at load 4-5). After a longer stall the schedule restarts.
MAX_LAG_S = 1.0
TIME_BASE = fractions.Fraction(1, WEBRTC_RATE_HZ)


class FrameClock:
    """A source of frame numbers that runs no faster than real time.

    Each frame is due at start + index * 20 ms, so rounding in sleep() never adds up to
    drift over a long call.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._index = 0
        # When the frame last returned by next_frame was due (monotonic seconds).
        self.due_at = 0.0

    async def next_frame(self) -> int:
        """Wait until the next frame is due and return its index."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._index * FRAME_S
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > MAX_LAG_S:
            self._start = now - self._index * FRAME_S
        index = self._index
        self.due_at = self._start + index * FRAME_S
        self._index += 1
        return index


def paced_frame(samples: np.ndarray, index: int) -> av.AudioFrame:
    """Wrap one frame of 48 kHz samples with the timestamps of frame number index."""
    frame = samples_to_frame(samples, WEBRTC_RATE_HZ, pts=index * SAMPLES_PER_FRAME)
    frame.time_base = TIME_BASE
    return frame
