"""Utterance segmentation of 16 kHz mono speech: webrtcvad proposes, Silero confirms.

webrtcvad is fast and frame-exact but calls any voice-band energy speech (a cough, a fan,
a door). When a Silero model is given, a frame counts as speech only if Silero does not
firmly call it noise, and soft speech that webrtcvad misses still counts when Silero is
sure of it. The segmenter is plain synchronous code with no I/O: a call session runs it on
its own worker thread, never on the event loop.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import webrtcvad

from media.silero import SileroModel

VAD_RATE_HZ = 16000


@dataclass(frozen=True)
class SegmenterConfig:
    aggressiveness: int = 2
    # 20 ms matches WebRTC's packets, so a frame is judged as soon as its packet arrives.
    frame_ms: int = 20
    # Speech must last this long (voiced frames in a row) before an utterance starts.
    onset_ms: int = 140
    # Audio kept from before the onset, so the first syllable is not clipped.
    preroll_ms: int = 500
    # Silence that ends the turn whatever the words: the longest pause a learner may take
    # in the middle of a sentence.
    end_silence_ms: int = 1000
    # Silence that ends the turn when the speech so far reads as a finished sentence
    # (the call session judges the early transcript and calls allow_quick_end).
    quick_end_ms: int = 300
    # Silence after which the speech so far is offered for early transcription.
    pause_ms: int = 160
    # Utterances with less speech than this are dropped as clicks or coughs.
    min_utterance_ms: int = 300
    # Longer speech is cut into several utterances, at a short pause when there is one.
    max_utterance_s: float = 15.0
    # Speech this long in a row is reported at once (VoiceOnset): a reply playing to the
    # caller pauses on it, so a barge-in is heard within 200 ms.
    quick_onset_ms: int = 40
    # Speech in one utterance that makes it a real interruption, not a cough or "mm-hm".
    confirm_speech_ms: int = 600
    # Silero's speech probability that marks speech, and the one below which a frame
    # webrtcvad calls voiced is noise (Silero's own defaults).
    silero_threshold: float = 0.5
    silero_noise_threshold: float = 0.35

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness {self.aggressiveness} is invalid: use 0-3")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"VAD frame of {self.frame_ms} ms is invalid: use 10, 20 or 30")
        for name in (
            "onset_ms",
            "preroll_ms",
            "end_silence_ms",
            "quick_end_ms",
            "pause_ms",
            "min_utterance_ms",
            "quick_onset_ms",
            "confirm_speech_ms",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is invalid: it cannot be negative")
        if not self.pause_ms < self.end_silence_ms:
            raise ValueError(
                f"pause_ms={self.pause_ms} must be shorter than end_silence_ms="
                f"{self.end_silence_ms}, or early transcription never starts"
            )
        if not self.pause_ms <= self.quick_end_ms <= self.end_silence_ms:
            raise ValueError(
                f"quick_end_ms={self.quick_end_ms} must lie between pause_ms={self.pause_ms} "
                f"and end_silence_ms={self.end_silence_ms}"
            )
        if not 0 < self.silero_noise_threshold <= self.silero_threshold < 1:
            raise ValueError(
                f"Silero thresholds {self.silero_noise_threshold} and {self.silero_threshold} "
                "are invalid: use 0 < noise threshold <= speech threshold < 1"
            )
        if self.max_utterance_s <= self.end_silence_ms / 1000:
            raise ValueError(f"max_utterance_s={self.max_utterance_s} is too short")


@dataclass(frozen=True)
class VoiceOnset:
    """Speech has just begun (quick_onset_ms of it), inside an utterance or not. It may
    still turn out to be a cough or a backchannel."""

    start_s: float


@dataclass(frozen=True)
class SpeechConfirmed:
    """Event: the utterance now contains confirm_speech_ms of speech, so it is a real turn."""

    speech_ms: int


@dataclass(frozen=True)
class SpeechFaded:
    """Speech since the last VoiceOnset stopped for pause_ms before it was confirmed."""


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
    # Milliseconds of frames that counted as speech.
    speech_ms: int = 0
    # True when it ended at quick_end_ms because its words read as finished.
    quick_end: bool = False

    @property
    def duration_s(self) -> float:
        return len(self.samples) / VAD_RATE_HZ


SegmenterEvent = (
    VoiceOnset | SpeechConfirmed | SpeechFaded | SpeechStarted | SpeechPaused | Utterance
)


class UtteranceSegmenter:
    """Turns a stream of 16 kHz int16 samples into utterances and speech-activity events."""

    def __init__(self, config: SegmenterConfig, speech_model: SileroModel | None = None) -> None:
        self.config = config
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._silero = speech_model.stream() if speech_model is not None else None
        # The latest Silero probability: its 32 ms windows do not line up with our frames.
        self._silero_probability = 0.0
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
        self._quick_onset_frames = max(1, config.quick_onset_ms // config.frame_ms)
        self._voiced_run = 0
        # webrtcvad's own run of voiced frames and its last one, whatever Silero thought.
        self._raw_run = 0
        self._last_raw_voiced = -1
        self._speech: list[np.ndarray] | None = None
        self._voiced_flags: list[bool] = []
        self._speech_start_frame = 0
        self._last_voiced = 0
        self._paused_at = -1
        # Whether the speech going on now was reported by a VoiceOnset, and whether the
        # utterance was reported by a SpeechConfirmed.
        self._onset_reported = False
        self._confirmed = False
        # The last voiced frame of the pause that may end the turn at quick_end_ms. Set
        # from another thread by allow_quick_end, which is safe: a plain int is replaced whole.
        self._quick_end_at = -1

    @property
    def in_speech(self) -> bool:
        return self._speech is not None

    def current_samples(self) -> np.ndarray:
        """Return the utterance so far (empty when no speech is going on)."""
        if self._speech is None:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._speech)

    def allow_quick_end(self, speech_end_s: float) -> None:
        """Let the pause that began at speech_end_s end the turn after quick_end_ms instead
        of end_silence_ms. Ignored when speech has resumed since; safe from any thread."""
        self._quick_end_at = round(speech_end_s * 1000 / self.config.frame_ms) - 1

    def push(self, samples: np.ndarray) -> list[SegmenterEvent]:
        """Feed samples and return the events they complete, in order."""
        samples = samples.astype(np.int16, copy=False)
        self._pending = np.concatenate([self._pending, samples])
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

    def _is_speech(self, frame: np.ndarray) -> tuple[bool, bool]:
        """Return webrtcvad's verdict on the frame, and the verdict overruled where Silero
        is sure otherwise."""
        voiced = self._vad.is_speech(frame.tobytes(), VAD_RATE_HZ)
        return voiced, self._confirmed_by_silero(frame, voiced)

    def _confirmed_by_silero(self, frame: np.ndarray, voiced: bool) -> bool:
        if self._silero is None:
            return voiced
        # Silero is fed frame by frame, so each frame is judged on the windows that ended
        # by its own end, however many frames one push holds.
        probabilities = self._silero.push(frame)
        if probabilities:
            self._silero_probability = max(probabilities)
        probability = self._silero_probability
        if voiced:
            return probability >= self.config.silero_noise_threshold
        return probability >= self.config.silero_threshold

    def _push_frame(self, frame: np.ndarray) -> list[SegmenterEvent]:
        index = self._frames_seen
        self._frames_seen += 1
        raw_voiced, voiced = self._is_speech(frame)
        events = self._track_activity(index, raw_voiced)
        self._voiced_run = self._voiced_run + 1 if voiced else 0

        if self._speech is None:
            return events + self._push_idle_frame(frame, index, voiced)

        self._speech.append(frame)
        self._voiced_flags.append(voiced)
        if voiced:
            self._last_voiced = index
            if not self._confirmed and self._speech_ms() >= self.config.confirm_speech_ms:
                self._confirmed = True
                events.append(SpeechConfirmed(self._speech_ms()))

        silence_ms = (index - self._last_voiced) * self.config.frame_ms
        quick = self._quick_end_at == self._last_voiced
        if silence_ms >= self.config.end_silence_ms or (
            quick and silence_ms >= self.config.quick_end_ms
        ):
            utterance = self._finish(truncated=False, quick_end=quick)
            return events + ([utterance] if utterance is not None else [])
        new_pause = self._paused_at != self._last_voiced
        has_speech = self._last_voiced >= self._speech_start_frame
        if not voiced and new_pause and has_speech and silence_ms >= self.config.pause_ms:
            self._paused_at = self._last_voiced
            end_s = self._frame_time_s(self._last_voiced + 1)
            return [*events, SpeechPaused(self._kept_samples(), end_s)]

        length_s = len(self._speech) * self.config.frame_ms / 1000
        if length_s >= self.config.max_utterance_s:
            return events + self._cut_long_utterance()
        return events

    def _track_activity(self, index: int, voiced: bool) -> list[SegmenterEvent]:
        """Report speech as soon as quick_onset_ms of it arrives, and report it fading when
        it stops before the utterance is confirmed. A paused reply waits on these.

        These follow webrtcvad alone: Silero needs up to 300 ms to grow sure of a word's
        start, too long for a barge-in. A noise that webrtcvad takes for speech pauses a
        reply for a moment, and the reply resumes when it fades, since only speech Silero
        confirmed can cut it.
        """
        self._raw_run = self._raw_run + 1 if voiced else 0
        if voiced:
            self._last_raw_voiced = index
        if voiced and not self._onset_reported and self._raw_run >= self._quick_onset_frames:
            self._onset_reported = True
            start = index + 1 - self._quick_onset_frames
            return [VoiceOnset(start_s=self._frame_time_s(start))]
        if voiced or not self._onset_reported or self._confirmed:
            return []
        if (index - self._last_raw_voiced) * self.config.frame_ms >= self.config.pause_ms:
            self._onset_reported = False
            return [SpeechFaded()]
        return []

    def _speech_ms(self) -> int:
        return sum(self._voiced_flags) * self.config.frame_ms

    def _push_idle_frame(self, frame: np.ndarray, index: int, voiced: bool) -> list[SegmenterEvent]:
        self._preroll.append(frame)
        self._preroll_flags.append(voiced)
        if self._voiced_run < self._onset_frames:
            return []

        # Onset confirmed: the utterance starts with the preroll, onset frames included.
        self._speech = list(self._preroll)
        self._voiced_flags = list(self._preroll_flags)
        self._preroll.clear()
        self._preroll_flags.clear()
        self._speech_start_frame = index + 1 - len(self._speech)
        self._last_voiced = index
        self._confirmed = False
        return [SpeechStarted(start_s=self._frame_time_s(index + 1 - self._onset_frames))]

    def _finish(self, *, truncated: bool, quick_end: bool = False) -> Utterance | None:
        speech = self._speech or []
        self._speech = None
        speech_ms = self._speech_ms()
        self._onset_reported = False
        self._confirmed = False
        if speech_ms < self.config.min_utterance_ms:
            return None

        return Utterance(
            samples=self._kept_samples(speech),
            start_s=self._frame_time_s(self._speech_start_frame),
            speech_end_s=self._frame_time_s(self._last_voiced + 1),
            truncated=truncated,
            speech_ms=speech_ms,
            quick_end=quick_end,
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
        silence_ms = (len(speech) - 1 - last_voiced) * self.config.frame_ms
        if last_voiced < half or silence_ms >= self.config.pause_ms:
            # Speech already stopped and only the trailing pause is left: end it whole.
            utterance = self._finish(truncated=silence_ms < self.config.pause_ms)
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
            speech_ms=sum(self._voiced_flags[:cut_at]) * self.config.frame_ms,
        )
        # The rest carries on as a new utterance that is already in speech.
        self._speech = tail
        self._voiced_flags = self._voiced_flags[cut_at:]
        self._speech_start_frame = start_frame + cut_at
        return [utterance, SpeechStarted(start_s=self._frame_time_s(self._speech_start_frame))]
