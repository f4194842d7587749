"""An outbound track that plays a decoded audio file in real time, then silence, and then
any clips queued on it later, each followed by silence again."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import numpy as np
import webrtcvad
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media.frame_clock import FrameClock, paced_frame
from media.frames import SAMPLES_PER_FRAME, WEBRTC_RATE_HZ

# webrtcvad takes frames of 10, 20 or 30 ms, and 30 ms at 16 kHz is 480 samples.
VAD_RATE_HZ = 16000
VAD_FRAME_SAMPLES = 480
# Clips wait here while an earlier one plays. The test caller queues one at a time.
MAX_QUEUED_CLIPS = 8


@dataclass(eq=False)
class AudioClip:
    """48 kHz mono int16 audio for the track, with the monotonic times at which frames were
    handed to aiortc: those holding its first sample, its speech onset, its speech end and
    its last sample."""

    samples: np.ndarray = field(repr=False)
    # Start of the first and end of the last voiced 30 ms frame. Onset is None without
    # speech.
    speech_onset_s: float | None = None
    speech_end_s: float = 0.0
    first_frame_sent_at: float | None = None
    speech_onset_sent_at: float | None = None
    speech_end_sent_at: float | None = None
    finished_at: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self.samples = np.ascontiguousarray(self.samples, dtype=np.int16)

    def note_sent(self, begin: int, end: int, now: float) -> None:
        """Note the times of the points inside samples[begin:end], just handed to aiortc."""
        if self.first_frame_sent_at is None:
            self.first_frame_sent_at = now
        onset = self.speech_onset_s
        if self.speech_onset_sent_at is None and onset is not None and end > onset * WEBRTC_RATE_HZ:
            self.speech_onset_sent_at = now
        # A clip without speech has its end at 0 s, so its first frame sets the time.
        if self.speech_end_sent_at is None and end >= int(self.speech_end_s * WEBRTC_RATE_HZ):
            self.speech_end_sent_at = now
        if end >= len(self.samples) and not self.finished.is_set():
            self.finished_at = now
            self.finished.set()


class FileAudioTrack(MediaStreamTrack):
    """Plays the file, then clips queued with play(), each from the start of a frame, and
    silence whenever nothing is queued."""

    kind = "audio"

    def __init__(
        self, samples: np.ndarray, speech_end_s: float, speech_onset_s: float | None = None
    ) -> None:
        super().__init__()
        self.file = AudioClip(samples, speech_onset_s, speech_end_s)
        self._clips: collections.deque[AudioClip] = collections.deque([self.file])
        self._current: AudioClip | None = None
        self._offset = 0
        self._clock = FrameClock()

    @property
    def speech_end_sent_at(self) -> float | None:
        """Monotonic time at which the frame holding the end of the file's speech was sent."""
        return self.file.speech_end_sent_at

    @property
    def finished(self) -> asyncio.Event:
        """Set once the file's last frame was sent."""
        return self.file.finished

    @property
    def finished_at(self) -> float | None:
        return self.file.finished_at

    def play(self, clip: AudioClip) -> None:
        """Queue clip after whatever is playing or queued. It starts at a frame boundary."""
        if len(self._clips) >= MAX_QUEUED_CLIPS:
            raise RuntimeError(
                f"{MAX_QUEUED_CLIPS} clips are already queued, so wait for clip.finished "
                "before queuing more"
            )
        self._clips.append(clip)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._clock.next_frame()
        return paced_frame(self._next_samples(time.monotonic()), index)

    def _next_samples(self, now: float) -> np.ndarray:
        samples = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        if self._current is None:
            if not self._clips:
                return samples
            self._current = self._clips.popleft()
            self._offset = 0

        clip = self._current
        begin = self._offset
        end = begin + SAMPLES_PER_FRAME
        available = clip.samples[begin:end]
        samples[: len(available)] = available
        self._offset = end
        clip.note_sent(begin, end, now)
        if clip.finished.is_set():
            self._current = None
        return samples


# A speech onset is at most this far below the clip's loud speech: 20 dB.
ONSET_BELOW_SPEECH = 0.1


def find_speech_start_s(samples_16k: np.ndarray, aggressiveness: int = 2) -> float | None:
    """Return the start of the first voiced 30 ms frame within 20 dB of the clip's loud
    speech (its 95th-percentile frame level), or None when nothing is voiced.

    webrtcvad alone calls the breath or hiss at the start of a clip voiced (the first frame
    of a LibriSpeech clip, at -58 dBFS, for one), which would date the onset too early.
    """
    starts = list(_voiced_frame_starts(samples_16k, aggressiveness))
    if not starts:
        return None
    levels = [_rms(samples_16k[start : start + VAD_FRAME_SAMPLES]) for start in starts]
    loud = float(np.percentile(levels, 95))
    for start, level in zip(starts, levels, strict=True):
        if level >= ONSET_BELOW_SPEECH * loud:
            return start / VAD_RATE_HZ
    return None


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def find_speech_end_s(samples_16k: np.ndarray, aggressiveness: int = 2) -> float:
    """Return the end of the last voiced 30 ms frame, or 0.0 when nothing is voiced."""
    end_s = 0.0
    for start in _voiced_frame_starts(samples_16k, aggressiveness):
        end_s = (start + VAD_FRAME_SAMPLES) / VAD_RATE_HZ
    return end_s


def _voiced_frame_starts(samples_16k: np.ndarray, aggressiveness: int) -> Iterator[int]:
    """Yield the first sample of each 30 ms frame that webrtcvad calls speech."""
    vad = webrtcvad.Vad(aggressiveness)
    for start in range(0, len(samples_16k) - VAD_FRAME_SAMPLES + 1, VAD_FRAME_SAMPLES):
        frame = samples_16k[start : start + VAD_FRAME_SAMPLES]
        if vad.is_speech(frame.tobytes(), VAD_RATE_HZ):
            yield start
