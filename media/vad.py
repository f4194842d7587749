"""Utterance segmentation of 16 kHz mono speech with webrtcvad.

The segmenter is plain synchronous code with no I/O: a call session runs it on its own
worker thread, never on the event loop.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import webrtcvad

VAD_RATE_HZ = 16000


@dataclass(frozen=True)
class SegmenterConfig:
    aggressiveness: int = 2
    frame_ms: int = 30
    # Speech must last this long (voiced frames in a row) before an utterance starts.
    onset_ms: int = 150
    # Audio kept from before the onset, so the first syllable is not clipped.
    preroll_ms: int = 300
    # Silence after speech that ends the utterance.
    end_silence_ms: int = 550
    # Silence after which the speech so far is offered for early transcription, so the
    # transcript is ready by the time the end-of-turn silence has passed.
    pause_ms: int = 210
    # Utterances with less voiced audio than this are dropped as clicks or coughs.
    min_utterance_ms: int = 300
    # Longer speech is cut into several utterances, at a short pause when there is one.
    max_utterance_s: float = 15.0

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness {self.aggressiveness} is invalid: use 0-3")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"VAD frame of {self.frame_ms} ms is invalid: use 10, 20 or 30")
        for name in ("onset_ms", "preroll_ms", "end_silence_ms", "pause_ms", "min_utterance_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is invalid: it cannot be negative")
        if not self.pause_ms < self.end_silence_ms:
            raise ValueError(
                f"pause_ms={self.pause_ms} must be shorter than end_silence_ms="
                f"{self.end_silence_ms}, or early transcription never starts"
            )
        if self.max_utterance_s <= self.end_silence_ms / 1000:
            raise ValueError(f"max_utterance_s={self.max_utterance_s} is too short")


@dataclass(frozen=True)
class SpeechStarted:
    start_s: float


@dataclass(frozen=True)
class SpeechPaused:
    """Speech has paused: samples contains the utterance as it would end here."""

    samples: np.ndarray
    speech_end_s: float


@dataclass(frozen=True)
class Utterance:
    samples: np.ndarray
    start_s: float
    # Stream time of the end of the last voiced frame.
    speech_end_s: float
    # True when the utterance was cut at the maximum length rather than ended by silence.
    truncated: bool

    @property
    def duration_s(self) -> float:
        return len(self.samples) / VAD_RATE_HZ


SegmenterEvent = SpeechStarted | SpeechPaused | Utterance


class UtteranceSegmenter:
    """Turns a stream of 16 kHz int16 samples into utterances."""

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._frame_len = VAD_RATE_HZ * config.frame_ms // 1000
        self._pending = np.zeros(0, dtype=np.int16)
        self._frames_seen = 0
        # The onset frames sit in the same buffer, so it is longer than the preroll by them.
        self._preroll: collections.deque[np.ndarray] = collections.deque(
            maxlen=max(1, (config.preroll_ms + config.onset_ms) // config.frame_ms)
        )
        self._preroll_flags: collections.deque[bool] = collections.deque(
            maxlen=self._preroll.maxlen
        )
        self._onset_frames = max(1, config.onset_ms // config.frame_ms)
        self._voiced_run = 0
        self._speech: list[np.ndarray] | None = None
        self._voiced_flags: list[bool] = []
        self._speech_start_frame = 0
        self._last_voiced = 0
        self._paused_at = -1

    @property
    def in_speech(self) -> bool:
        return self._speech is not None

    def push(self, samples: np.ndarray) -> list[SegmenterEvent]:
        """Feed samples; return the speech starts and finished utterances they complete."""
        self._pending = np.concatenate([self._pending, samples.astype(np.int16, copy=False)])
        events: list[SegmenterEvent] = []
        while len(self._pending) >= self._frame_len:
            frame = self._pending[: self._frame_len]
            self._pending = self._pending[self._frame_len :]
            events.extend(self._push_frame(frame))
        return events

    def flush(self) -> list[SegmenterEvent]:
        """End the stream: an utterance in progress is finished as if silence followed."""
        if self._speech is None:
            return []
        utterance = self._finish(truncated=False)
        return [utterance] if utterance is not None else []

    def _frame_time_s(self, frame_index: int) -> float:
        return frame_index * self.config.frame_ms / 1000

    def _push_frame(self, frame: np.ndarray) -> list[SegmenterEvent]:
        index = self._frames_seen
        self._frames_seen += 1
        voiced = self._vad.is_speech(frame.tobytes(), VAD_RATE_HZ)

        if self._speech is None:
            return self._push_idle_frame(frame, index, voiced)

        self._speech.append(frame)
        self._voiced_flags.append(voiced)
        if voiced:
            self._last_voiced = index

        silence_ms = (index - self._last_voiced) * self.config.frame_ms
        if silence_ms >= self.config.end_silence_ms:
            utterance = self._finish(truncated=False)
            return [utterance] if utterance is not None else []
        new_pause = self._paused_at != self._last_voiced
        has_speech = self._last_voiced >= self._speech_start_frame
        if not voiced and new_pause and has_speech and silence_ms >= self.config.pause_ms:
            self._paused_at = self._last_voiced
            end_s = self._frame_time_s(self._last_voiced + 1)
            return [SpeechPaused(self._kept_samples(), end_s)]

        length_s = len(self._speech) * self.config.frame_ms / 1000
        if length_s >= self.config.max_utterance_s:
            return self._cut_long_utterance()
        return []

    def _push_idle_frame(self, frame: np.ndarray, index: int, voiced: bool) -> list[SegmenterEvent]:
        self._preroll.append(frame)
        self._preroll_flags.append(voiced)
        self._voiced_run = self._voiced_run + 1 if voiced else 0
        if self._voiced_run < self._onset_frames:
            return []

        # Onset confirmed: the utterance starts with the preroll, onset frames included.
        self._speech = list(self._preroll)
        self._voiced_flags = list(self._preroll_flags)
        self._preroll.clear()
        self._preroll_flags.clear()
        self._speech_start_frame = index + 1 - len(self._speech)
        self._last_voiced = index
        self._voiced_run = 0
        return [SpeechStarted(start_s=self._frame_time_s(index + 1 - self._onset_frames))]

    def _finish(self, *, truncated: bool) -> Utterance | None:
        speech = self._speech or []
        self._speech = None
        voiced_ms = sum(self._voiced_flags) * self.config.frame_ms
        if voiced_ms < self.config.min_utterance_ms:
            return None

        return Utterance(
            samples=self._kept_samples(speech),
            start_s=self._frame_time_s(self._speech_start_frame),
            speech_end_s=self._frame_time_s(self._last_voiced + 1),
            truncated=truncated,
        )

    def _kept_samples(self, speech: list[np.ndarray] | None = None) -> np.ndarray:
        """Return the speech up to the last voiced frame plus 150 ms: enough trailing
        silence for Whisper, and no more worth storing."""
        frames = (self._speech if speech is None else speech) or []
        keep = self._last_voiced - self._speech_start_frame + 1 + 150 // self.config.frame_ms
        return np.concatenate(frames[: max(keep, 1)]) if frames else np.zeros(0, np.int16)

    def _cut_long_utterance(self) -> list[SegmenterEvent]:
        """Cut after the quietest frame of the second half, the likeliest gap between words,
        so the words on both sides of the cut stay whole."""
        speech = self._speech or []
        start_frame = self._speech_start_frame
        last_voiced = self._last_voiced - start_frame
        half = len(speech) // 2
        if last_voiced < half:
            # Speech already stopped and only the trailing pause is left: end it whole.
            utterance = self._finish(truncated=True)
            return [utterance] if utterance is not None else []

        # Search up to the last voiced frame only, so the rest always contains speech.
        energies = [
            float(np.mean(frame.astype(np.float32) ** 2)) for frame in speech[half:last_voiced]
        ]
        cut_at = half + int(np.argmin(energies)) + 1 if energies else last_voiced
        head, tail = speech[:cut_at], speech[cut_at:]

        utterance = Utterance(
            samples=np.concatenate(head),
            start_s=self._frame_time_s(start_frame),
            speech_end_s=self._frame_time_s(start_frame + cut_at),
            truncated=True,
        )
        # The rest carries on as a new utterance that is already in speech.
        self._speech = tail
        self._voiced_flags = self._voiced_flags[cut_at:]
        self._speech_start_frame = start_frame + cut_at
        return [utterance, SpeechStarted(start_s=self._frame_time_s(self._speech_start_frame))]
