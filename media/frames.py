"""Conversions between av audio frames and mono int16 sample arrays."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import IO

import av
import numpy as np

# Rate of WebRTC's Opus audio; 20 ms at 48 kHz is 960 samples.
WEBRTC_RATE_HZ = 48000
FRAME_MS = 20
SAMPLES_PER_FRAME = WEBRTC_RATE_HZ * FRAME_MS // 1000


class MonoResampler:
    """Resamples a stream of av.AudioFrame of any format and layout to mono int16."""

    def __init__(self, rate_hz: int) -> None:
        self.rate_hz = rate_hz
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_hz)

    def resample(self, frame: av.AudioFrame | None) -> np.ndarray:
        """Return the samples ready after this frame; pass None at the end to flush."""
        out = self._resampler.resample(frame)
        if not out:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([piece.to_ndarray().reshape(-1) for piece in out])


def resample_samples(samples: np.ndarray, from_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    """Resample a whole mono int16 array (for example one synthesised chunk)."""
    if from_rate_hz == to_rate_hz or len(samples) == 0:
        return np.ascontiguousarray(samples, dtype=np.int16)
    frame = samples_to_frame(samples, from_rate_hz)
    resampler = MonoResampler(to_rate_hz)
    head = resampler.resample(frame)
    tail = resampler.resample(None)
    return np.concatenate([head, tail])


def samples_to_frame(samples: np.ndarray, rate_hz: int, pts: int | None = None) -> av.AudioFrame:
    pcm = np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = rate_hz
    if pts is not None:
        frame.pts = pts
    return frame


def read_audio_file(
    source: str | IO[bytes],
    rate_hz: int,
    *,
    max_seconds: float | None = None,
    format: str | None = None,
) -> np.ndarray:
    """Decode a file (path or open binary file) that av can read into mono int16 at rate_hz.

    Raises ValueError when it has no audio stream or, with max_seconds, when it is longer:
    decoding stops there, so a small file that expands to hours never fills memory.
    format names the FFmpeg demuxer; without it FFmpeg probes the input.
    """
    with av.open(source, "r", format=format) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise ValueError("the file contains no audio stream")
        resampler = MonoResampler(rate_hz)
        pieces = []
        samples = 0
        for frame in container.decode(stream):
            if not isinstance(frame, av.AudioFrame):
                continue
            pieces.append(resampler.resample(frame))
            samples += len(pieces[-1])
            if max_seconds is not None and samples > max_seconds * rate_hz:
                raise ValueError(f"the audio is longer than {max_seconds:g} s")
        pieces.append(resampler.resample(None))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


def write_wav(path: str | Path, samples: np.ndarray, rate_hz: int) -> None:
    """Write mono int16 samples as a 16-bit WAV file. Blocking."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(np.ascontiguousarray(samples, dtype=np.int16).tobytes())


def peak_level(samples: np.ndarray) -> int:
    return int(np.max(np.abs(samples.astype(np.int32)))) if len(samples) else 0
