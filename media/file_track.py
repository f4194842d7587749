"""An outbound track that plays a decoded audio file in real time, then silence."""

from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import webrtcvad
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media.frame_clock import FrameClock, paced_frame
from media.frames import SAMPLES_PER_FRAME, WEBRTC_RATE_HZ


class FileAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, samples: np.ndarray, speech_end_s: float) -> None:
        super().__init__()
        self._samples = np.ascontiguousarray(samples, dtype=np.int16)
        self._speech_end_sample = int(speech_end_s * WEBRTC_RATE_HZ)
        self._clock = FrameClock()
        # Monotonic time at which the frame holding the end of speech was handed to aiortc.
        self.speech_end_sent_at: float | None = None
        self.finished = asyncio.Event()
        self.finished_at: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._clock.next_frame()

        begin = index * SAMPLES_PER_FRAME
        end = begin + SAMPLES_PER_FRAME
        samples = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        available = self._samples[begin:end]
        samples[: len(available)] = available
        if self.speech_end_sent_at is None and end >= self._speech_end_sample:
            self.speech_end_sent_at = time.monotonic()
        if end >= len(self._samples) and not self.finished.is_set():
            self.finished_at = time.monotonic()
            self.finished.set()

        return paced_frame(samples, index)


def find_speech_end_s(samples_16k: np.ndarray, aggressiveness: int = 2) -> float:
    """Return the end of the last voiced 30 ms frame, or 0.0 when nothing is voiced."""
    vad = webrtcvad.Vad(aggressiveness)
    frame_len = 480
    end_s = 0.0
    for start in range(0, len(samples_16k) - frame_len + 1, frame_len):
        frame = samples_16k[start : start + frame_len]
        if vad.is_speech(frame.tobytes(), 16000):
            end_s = (start + frame_len) / 16000
    return end_s
