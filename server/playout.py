"""Playout of a reply in a call: per chunk, spoken in full, cut, or never spoken."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from media.tracks import QueuedSpeech


@dataclass(frozen=True)
class ChunkPlayout:
    # "spoken" (in full), "cut" (partly) or "unspoken" (never started).
    status: str
    played_ms: int
    heard_text: str

    def json(self) -> dict[str, Any]:
        return {"status": self.status, "playedMs": self.played_ms, "heardText": self.heard_text}


def playout_of(text: str, speech: QueuedSpeech | None) -> ChunkPlayout:
    """Judge one chunk from the audio the track played of it (None: never queued)."""
    if speech is None or speech.played == 0:
        return ChunkPlayout("unspoken", 0, "")
    if speech.finished:
        return ChunkPlayout("spoken", speech.played_ms, text)
    fraction = speech.played / len(speech.samples)
    return ChunkPlayout("cut", speech.played_ms, heard_words(text, fraction))


def heard_words(text: str, fraction: float) -> str:
    """Return the words of text whose end falls within the first fraction of it.

    piper gives no word timings for this voice, so the estimate assumes speech runs evenly
    through the text's characters. A word the cut fell inside is not counted as heard.
    """
    words = text.split()
    total = len(text)
    if not words or total == 0:
        return ""
    heard: list[str] = []
    position = 0
    for word in words:
        start = text.index(word, position)
        position = start + len(word)
        if position > fraction * total:
            break
        heard.append(word)
    return " ".join(heard)


def heard_content(playouts: list[ChunkPlayout]) -> str:
    """Join what was heard of each chunk, in order: the message as the caller heard it."""
    return " ".join(p.heard_text for p in playouts if p.heard_text)
