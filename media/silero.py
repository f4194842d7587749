"""Silero VAD, streamed: a speech probability for every 32 ms of 16 kHz audio.

The model is the ONNX file faster-whisper ships (`silero_vad_v6.onnx`), run with
onnxruntime, so it needs no download. It separates speech from noise, coughs and breaths far
better than webrtcvad, which reacts to any energy in the voice band. webrtcvad stays the
fast first check, and Silero confirms what it proposes.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SILERO_RATE_HZ = 16000
WINDOW_SAMPLES = 512
# Each window is fed with the 64 samples before it, as the model was trained.
CONTEXT_SAMPLES = 64


def default_model_path() -> str:
    from faster_whisper.utils import get_assets_path

    return os.path.join(get_assets_path(), "silero_vad_v6.onnx")


class SileroModel:
    """One ONNX session shared by every stream. Each stream keeps its own state."""

    _shared: SileroModel | None = None
    _shared_lock = threading.Lock()

    def __init__(self, path: str) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One window at a time is a tiny job: more threads only add hand-over costs.
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self.path = path
        self._session: Any = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"], sess_options=options
        )

    @classmethod
    def shared(cls) -> SileroModel:
        """Return the process's model, loading it on first use. Blocking: call it in a thread."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls(default_model_path())
                logger.info("loaded Silero VAD from %s", cls._shared.path)
            return cls._shared

    def stream(self) -> SileroStream:
        return SileroStream(self)

    def run(
        self, windows: np.ndarray, state: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Run consecutive windows (n, CONTEXT + WINDOW) from state, and return the speech
        probabilities and the state after the last window."""
        h, c = state
        out, h, c = self._session.run(None, {"input": windows, "h": h, "c": c})
        return np.asarray(out, dtype=np.float32).reshape(-1), (h, c)


class SileroStream:
    """Speech probabilities of one audio stream, window by window. Not thread-safe: one
    stream belongs to one segmenter, which runs on one thread."""

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self._pending = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._state = _zero_state()

    def push(self, samples: np.ndarray) -> list[float]:
        """Feed 16 kHz int16 samples and return one probability per window they complete."""
        audio = samples.astype(np.float32) / 32768.0
        self._pending = np.concatenate([self._pending, audio])
        count = len(self._pending) // WINDOW_SAMPLES
        if count == 0:
            return []
        body = self._pending[: count * WINDOW_SAMPLES].reshape(count, WINDOW_SAMPLES)
        self._pending = self._pending[count * WINDOW_SAMPLES :]
        # The model is recurrent, so windows run one after another, each with its context.
        probabilities = []
        for window in body:
            framed = np.concatenate([self._context, window])[None, :]
            out, self._state = self._model.run(framed, self._state)
            self._context = window[-CONTEXT_SAMPLES:]
            probabilities.append(float(out[0]))
        return probabilities

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._state = _zero_state()


def _zero_state() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((1, 1, 128), dtype=np.float32), np.zeros((1, 1, 128), dtype=np.float32)
