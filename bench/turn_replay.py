"""A call's turn-taking replayed in stream time: the segmenter fed in 20 ms pieces, and
early transcription run as CallSession runs it, with Whisper's measured compute time.

Nothing here sleeps: each transcription runs at once, and its result is handed to the
segmenter at the first frame after the stream time at which it would have finished.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from media.silero import SileroModel
from media.stt import SpeechToText
from media.vad import VAD_RATE_HZ, SegmenterConfig, SpeechPaused, Utterance, UtteranceSegmenter
from server.turn_end import looks_finished

# 20 ms at 16 kHz: one WebRTC packet, and one segmenter frame at the default frame_ms.
PIECE_SAMPLES = 320


@dataclass(frozen=True)
class TurnEnd:
    utterance: Utterance
    # Stream time of the frame that ended the turn.
    decided_s: float
    # Stream time at which the turn's transcript is ready: the early one of its last
    # pause, or a transcription started when the turn ended.
    transcript_ready_s: float


class TimedTranscriber:
    """Whisper through SpeechToText, each result cached by its samples together with the
    compute time of its first run."""

    def __init__(self, stt: SpeechToText) -> None:
        self._stt = stt
        self._cache: dict[bytes, tuple[str, float]] = {}
        self.compute_s: list[float] = []

    def transcribe(self, samples: np.ndarray) -> tuple[str, float]:
        key = hashlib.sha1(samples.tobytes()).digest()
        if key not in self._cache:
            started = time.perf_counter()
            text = self._stt._transcribe_blocking(samples).text
            self._cache[key] = (text, time.perf_counter() - started)
            self.compute_s.append(self._cache[key][1])
        return self._cache[key]

    def clear(self) -> None:
        self._cache.clear()
        self.compute_s.clear()


@dataclass
class EarlyJob:
    pause: SpeechPaused
    text: str
    finish_s: float
    delivered: bool = False


class CallReplay:
    """One call's inbound audio through the segmenter, with early transcription in stream
    time as CallSession runs it. One Whisper worker runs one early transcription at a
    time. A later pause waits for it, and only the newest waiting pause runs. A turn whose
    last pause has no early transcription is transcribed when it ends. stt_compute_s, when
    given, replaces every transcription's measured compute time."""

    def __init__(
        self,
        config: SegmenterConfig,
        transcriber: TimedTranscriber,
        *,
        quick_end: bool,
        stt_compute_s: float | None = None,
    ) -> None:
        self.segmenter = UtteranceSegmenter(config, SileroModel.shared())
        self._transcriber = transcriber
        self._quick_end = quick_end
        self._stt_compute_s = stt_compute_s
        self._worker_free_s = 0.0
        self._jobs: list[EarlyJob] = []
        self._early: EarlyJob | None = None
        self._next_pause: SpeechPaused | None = None
        self.turns: list[TurnEnd] = []

    def run(self, stream: np.ndarray) -> list[TurnEnd]:
        for start in range(0, len(stream), PIECE_SAMPLES):
            now_s = min(start + PIECE_SAMPLES, len(stream)) / VAD_RATE_HZ
            self._deliver(now_s)
            for event in self.segmenter.push(stream[start : start + PIECE_SAMPLES]):
                if isinstance(event, SpeechPaused):
                    self._on_pause(event, now_s)
                elif isinstance(event, Utterance):
                    self._on_utterance(event, now_s)
        return self.turns

    def _submit(self, samples: np.ndarray, at_s: float) -> tuple[str, float]:
        """Queue a transcription on the one worker; return its text and finish time."""
        text, compute_s = self._transcriber.transcribe(samples)
        if self._stt_compute_s is not None:
            compute_s = self._stt_compute_s
        start_s = max(at_s, self._worker_free_s)
        self._worker_free_s = start_s + compute_s
        return text, self._worker_free_s

    def _on_pause(self, pause: SpeechPaused, at_s: float) -> None:
        if self._early is not None and not self._early.delivered:
            self._next_pause = pause
            return
        self._next_pause = None
        text, finish_s = self._submit(pause.samples, at_s)
        self._early = EarlyJob(pause, text, finish_s)
        self._jobs.append(self._early)

    def _deliver(self, now_s: float) -> None:
        """Hand over the early transcripts finished by now, before the frame is judged."""
        while self._jobs and self._jobs[0].finish_s <= now_s:
            job = self._jobs.pop(0)
            job.delivered = True
            if self._quick_end and looks_finished(job.text):
                self.segmenter.allow_quick_end(job.pause.speech_end_s)
            pending, self._next_pause = self._next_pause, None
            if pending is not None:
                self._on_pause(pending, job.finish_s)

    def _on_utterance(self, utterance: Utterance, now_s: float) -> None:
        early = self._early
        if early is not None and early.pause.speech_end_s == utterance.speech_end_s:
            ready_s = max(now_s, early.finish_s)
        else:
            _text, ready_s = self._submit(utterance.samples, now_s)
        self.turns.append(TurnEnd(utterance, now_s, ready_s))
        self._early = None
