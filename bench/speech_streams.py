"""The shared speech recordings as a call would stream them: between stretches of their
own noise floor, and with pauses inserted between their words."""

from __future__ import annotations

import csv
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.turn_replay import PIECE_SAMPLES
from media.frames import read_audio_file
from media.vad import VAD_RATE_HZ

# Floor before the speech, and after it for longer than end_silence_ms (1000 ms by
# default), so that every turn ends inside the stream.
LEAD_S = 0.5
TAIL_S = 2.0
FLOOR_MS = 200
# Joins fade over 10 ms (160 samples) so that no click reads as speech.
FADE_SAMPLES = 160


@dataclass(frozen=True)
class SpeechFile:
    name: str
    samples: np.ndarray = field(repr=False)
    floor: np.ndarray = field(repr=False)
    # Midpoints between consecutive words, in file time.
    word_gaps_s: tuple[float, ...]

    def stream(self, inserted: tuple[float, float] | None = None) -> np.ndarray:
        """Return the file between LEAD_S and TAIL_S of its floor, with a pause of
        inserted[1] seconds at file time inserted[0] when given."""
        pieces = [silence(self.floor, LEAD_S, joins=1)]
        if inserted is None:
            pieces.append(self.samples)
        else:
            at = round(inserted[0] * VAD_RATE_HZ)
            pause = silence(self.floor, inserted[1], joins=2)
            pieces += [self.samples[:at], pause, self.samples[at:]]
        pieces.append(silence(self.floor, TAIL_S, joins=1))
        stream = pieces[0]
        for piece in pieces[1:]:
            stream = crossfade(stream, piece)
        return stream


def silence(floor: np.ndarray, seconds: float, *, joins: int) -> np.ndarray:
    """Return seconds of the floor, mirrored at each repeat, plus the samples that its
    crossfades take back. The file thus starts at LEAD_S and an inserted pause adds
    exactly its length."""
    count = round(seconds * VAD_RATE_HZ) + joins * FADE_SAMPLES
    cycle = np.concatenate([floor, floor[::-1]])
    return np.resize(cycle, count)


def crossfade(head: np.ndarray, tail: np.ndarray) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, FADE_SAMPLES)
    mixed = head[-FADE_SAMPLES:] * (1 - ramp) + tail[:FADE_SAMPLES] * ramp
    return np.concatenate([head[:-FADE_SAMPLES], mixed.astype(np.int16), tail[FADE_SAMPLES:]])


def quietest_stretch(samples: np.ndarray) -> np.ndarray:
    """Return the FLOOR_MS stretch with the lowest energy, aligned to 20 ms frames."""
    frames = len(samples) // PIECE_SAMPLES
    energy = np.mean(
        samples[: frames * PIECE_SAMPLES].astype(np.float64).reshape(frames, -1) ** 2, axis=1
    )
    width = FLOOR_MS * VAD_RATE_HZ // 1000 // PIECE_SAMPLES
    sums = np.convolve(energy, np.ones(width), mode="valid")
    start = int(np.argmin(sums)) * PIECE_SAMPLES
    return samples[start : start + width * PIECE_SAMPLES]


def load_sentence_files(audio_dir: Path) -> list[tuple[str, np.ndarray]]:
    """Return the English sentence recordings listed in audio_dir's MANIFEST.tsv.
    Exit with a message when the folder, the manifest or a listed file is missing."""
    manifest = audio_dir / "MANIFEST.tsv"
    if not manifest.is_file():
        sys.exit(f"{manifest} not found: pass --audio-dir with the shared speech recordings")
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    names = [
        row["file"] for row in rows if row["category"] == "sentence" and row["language"] == "en"
    ]
    if not names:
        sys.exit(f"{manifest} lists no English files of category 'sentence'")
    missing = [name for name in names if not (audio_dir / name).is_file()]
    if missing:
        sys.exit(f"speech files not found in {audio_dir}: {', '.join(missing)}")
    return [(name, read_audio_file(str(audio_dir / name), VAD_RATE_HZ)) for name in names]


def word_gaps_s(model: Any, samples: np.ndarray) -> tuple[float, ...]:
    """Return the midpoints between consecutive words that a faster_whisper.WhisperModel
    finds in samples."""
    segments, _info = model.transcribe(
        samples.astype(np.float32) / 32768.0,
        language="en",
        beam_size=1,
        word_timestamps=True,
        condition_on_previous_text=False,
    )
    words = [word for segment in segments for word in (segment.words or [])]
    return tuple((before.end + after.start) / 2 for before, after in itertools.pairwise(words))
