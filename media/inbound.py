"""The caller's audio: frames off the track, resampled and segmented on a worker thread.

Receiving and segmenting are two tasks joined by a bounded queue, so a slow moment in
segmentation never delays reading the track: aiortc's jitter buffer holds only 16 packets
(320 ms) and drops the rest. The moment each frame arrived is kept, so an utterance's end
maps back to when the caller actually stopped speaking.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media.frames import MonoResampler
from media.silero import SileroModel
from media.vad import VAD_RATE_HZ, SegmenterConfig, SegmenterEvent, UtteranceSegmenter

logger = logging.getLogger(__name__)

# 10 s of 20 ms frames: far more than segmentation ever falls behind.
MAX_QUEUED_FRAMES = 500
# Arrival times are kept for the last 60 s of audio, enough for the longest utterance.
ARRIVALS_KEPT = 3000


class InboundEnded(Exception):
    """The track ended or went silent; the message names the reason."""


class InboundAudio:
    def __init__(
        self,
        name: str,
        config: SegmenterConfig,
        idle_timeout_s: float,
        speech_model: SileroModel | None = None,
    ) -> None:
        self.name = name
        self._idle_timeout_s = idle_timeout_s
        self._segmenter = UtteranceSegmenter(config, speech_model)
        self._resampler = MonoResampler(VAD_RATE_HZ)
        # The segmenter keeps state between frames, so one thread runs it, in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._frames: asyncio.Queue[tuple[av.AudioFrame, float]] = asyncio.Queue(
            maxsize=MAX_QUEUED_FRAMES
        )
        # (samples segmented so far, arrival time of the frame that ended there)
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=ARRIVALS_KEPT
        )
        self._samples = 0
        self._dropped_frames = 0
        # Sees every frame received, with its arrival time (a recording): must not block.
        self.on_frame: Callable[[av.AudioFrame, float], None] | None = None

    async def receive(self, track: MediaStreamTrack) -> None:
        """Read frames until the track ends; raise InboundEnded with the reason."""
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), self._idle_timeout_s)
            except MediaStreamError as exc:
                raise InboundEnded("caller hung up") from exc
            except TimeoutError as exc:
                raise InboundEnded(f"no audio for {self._idle_timeout_s:.0f} s") from exc
            if not isinstance(frame, av.AudioFrame):
                continue
            arrived_at = time.monotonic()
            if self.on_frame is not None:
                self.on_frame(frame, arrived_at)
            try:
                self._frames.put_nowait((frame, arrived_at))
            except asyncio.QueueFull:
                self._dropped_frames += 1
                if self._dropped_frames % 50 == 1:
                    logger.warning(
                        "%s: segmentation is %d frames behind; dropped %d frames so far",
                        self.name,
                        MAX_QUEUED_FRAMES,
                        self._dropped_frames,
                    )

    async def segment(self, on_event: Callable[[SegmenterEvent], Awaitable[None]]) -> None:
        """Segment received frames forever, passing each event to on_event in order."""
        loop = asyncio.get_running_loop()
        while True:
            frame, arrived_at = await self._frames.get()
            events = await loop.run_in_executor(self._executor, self._push, frame, arrived_at)
            for event in events:
                await on_event(event)

    async def snapshot(self) -> np.ndarray:
        """Return the utterance in progress so far, taken between two frames."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._segmenter.current_samples)

    def allow_quick_end(self, speech_end_s: float) -> None:
        """Let the pause at speech_end_s end the utterance at the quick end silence."""
        self._segmenter.allow_quick_end(speech_end_s)

    def arrival_time(self, stream_s: float) -> float:
        """Return the monotonic time at which stream position stream_s arrived."""
        if not self._arrivals:
            return time.monotonic()
        position = int(stream_s * VAD_RATE_HZ)
        index = bisect.bisect_left(self._arrivals, (position, 0.0))
        index = min(index, len(self._arrivals) - 1)
        samples_end, arrived_at = self._arrivals[index]
        # The position lies inside that frame; the frame's audio ends at samples_end.
        return arrived_at - max(0, samples_end - position) / VAD_RATE_HZ

    async def finish(self) -> list[SegmenterEvent]:
        """Segment the frames still queued, end the utterance in progress and stop the
        worker; return the events that produced."""
        loop = asyncio.get_running_loop()
        events: list[SegmenterEvent] = []
        while not self._frames.empty():
            frame, arrived_at = self._frames.get_nowait()
            events += await loop.run_in_executor(self._executor, self._push, frame, arrived_at)
        events += await loop.run_in_executor(self._executor, self._segmenter.flush)
        self.close()
        return events

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _push(self, frame: av.AudioFrame, arrived_at: float) -> list[SegmenterEvent]:
        """Resample one frame and run VAD on it. Runs on the worker thread."""
        samples = self._resampler.resample(frame)
        self._samples += len(samples)
        self._arrivals.append((self._samples, arrived_at))
        return self._segmenter.push(samples)
