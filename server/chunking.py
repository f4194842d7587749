"""Cut a streamed reply into spoken chunks, each with emotion, icon, pause and emphasis.

The model is asked to open sentences with a feeling tag such as `[happy]`, to put *stars*
around a stressed word and, if it likes, to write `[pause 1.0]`. Small models often ignore
all of that, so every field has a fallback: the previous emotion (or `neutral`), the
emotion's icon, a pause from the punctuation, and emphasis for exclamations.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

EMOTIONS = ("happy", "encouraging", "neutral", "excited", "calm", "curious", "supportive")
EMOTION_ICONS = {
    "happy": "😊",
    "encouraging": "👍",
    "neutral": "💬",
    "excited": "🎉",
    "calm": "🌿",
    "curious": "🤔",
    "supportive": "🤗",
}
# Tags models write instead of the listed ones.
EMOTION_SYNONYMS = {
    "cheerful": "happy",
    "friendly": "happy",
    "joyful": "happy",
    "proud": "encouraging",
    "enthusiastic": "excited",
    "interested": "curious",
    "thoughtful": "calm",
    "sad": "supportive",
    "warm": "supportive",
    "kind": "supportive",
}

SENTENCE_PAUSES_S = {".": 0.35, "!": 0.4, "?": 0.5, "…": 0.6}
CLAUSE_PAUSE_S = 0.15
PARAGRAPH_PAUSE_S = 0.4
DEFAULT_TAG_PAUSE_S = 0.6
MAX_PAUSE_S = 2.0
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "e.g", "i.e", "etc", "vs"}
_MAX_TAG_CHARS = 24
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,!?;:…])")
_PAUSE_TAG = re.compile(r"^pause[\s:=]*([0-9]*\.?[0-9]+)?\s*s?$")


@dataclass
class ReplyChunk:
    index: int
    text: str
    emotion: str
    icon: str
    pause_after_s: float
    emphasis: bool


class ReplyChunker:
    """Feed it text as it streams; it returns chunks as soon as their boundary is certain."""

    def __init__(
        self, *, min_clause_words: int = 3, first_chunk_words: int = 4, max_chars: int = 220
    ) -> None:
        self.min_clause_words = min_clause_words
        # The first chunk is cut after this many words even mid-sentence, because the caller
        # hears nothing until it is synthesised. Later chunks are synthesised while earlier
        # ones play.
        self.first_chunk_words = first_chunk_words
        self.max_chars = max_chars
        self._raw = ""
        self._tag: str | None = None
        self._emotion = "neutral"
        self._icon: str | None = None
        # A finished chunk waits for the next visible character, since a [pause] tag
        # right after it still changes its pause.
        self._held: ReplyChunk | None = None
        self._out: list[ReplyChunk] = []
        self._count = 0

    def feed(self, text: str) -> list[ReplyChunk]:
        for char in text:
            self._feed_char(char)
        return self._take()

    def finish(self) -> list[ReplyChunk]:
        """End of the stream: flush what is left; the last chunk gets no pause."""
        if self._tag is not None:
            literal, self._tag = self._tag, None
            for char in literal:
                self._push_char(char)
        self._cut(pause_s=0.0)
        if self._held is not None:
            self._held.pause_after_s = 0.0
        self._release()
        return self._take()

    def _take(self) -> list[ReplyChunk]:
        out, self._out = self._out, []
        return out

    def _feed_char(self, char: str) -> None:
        if self._tag is None:
            if char == "[":
                self._tag = ""
            else:
                self._push_char(char)
            return

        if char == "]":
            tag, self._tag = self._tag, None
            self._handle_tag(tag)
        elif len(self._tag) >= _MAX_TAG_CHARS or char in "[\n":
            # Not a tag after all: keep its text as spoken text.
            literal, self._tag = self._tag, None
            for literal_char in literal:
                self._push_char(literal_char)
            self._feed_char(char)
        else:
            self._tag += char

    def _push_char(self, char: str) -> None:
        if self._held is not None and not char.isspace():
            self._release()
        if not char.isspace():
            self._raw += char
            if len(self._raw) >= self.max_chars:
                self._cut_long()
            return

        stripped = self._raw.rstrip()
        last = stripped[-1:] if stripped else ""
        if last in SENTENCE_PAUSES_S and not self._ends_with_abbreviation(stripped):
            self._cut(pause_s=SENTENCE_PAUSES_S[last])
        elif last in ",;:" and len(stripped.split()) >= self.min_clause_words:
            self._cut(pause_s=CLAUSE_PAUSE_S)
        elif char == "\n" and stripped:
            self._cut(pause_s=PARAGRAPH_PAUSE_S)
        elif self._count == 0 and _count_words(stripped) >= self.first_chunk_words:
            self._cut(pause_s=0.0)
        elif self._raw and not self._raw.endswith(" "):
            self._raw += " "

    def _handle_tag(self, tag: str) -> None:
        name = tag.strip().lower()
        emotion = name if name in EMOTIONS else EMOTION_SYNONYMS.get(name)
        if emotion is not None:
            # A feeling tag opens a new sentence: whatever came before it is a chunk.
            self._cut(pause_s=CLAUSE_PAUSE_S)
            self._emotion = emotion
            return

        match = _PAUSE_TAG.match(name)
        if match is None:
            return  # stage directions such as [laughs] are not spoken
        pause_s = float(match.group(1)) if match.group(1) else DEFAULT_TAG_PAUSE_S
        pause_s = min(max(pause_s, 0.0), MAX_PAUSE_S)
        if _has_words(self._raw):
            self._cut(pause_s=pause_s)
        elif self._held is not None:
            self._held.pause_after_s = pause_s

    def _cut(self, *, pause_s: float) -> None:
        raw, self._raw = self._raw, ""
        text, emphasis, icon = _clean(raw)
        if icon is not None:
            self._icon = icon
        if not _has_words(text):
            return  # nothing to speak; an emoji in it still becomes the next chunk's icon

        self._release()
        self._held = ReplyChunk(
            index=self._count,
            text=text,
            emotion=self._emotion,
            icon=self._icon or EMOTION_ICONS[self._emotion],
            pause_after_s=pause_s,
            emphasis=emphasis or text.endswith("!"),
        )
        self._count += 1
        self._icon = None

    def _cut_long(self) -> None:
        """Cut a run-on chunk at its last space so TTS can start."""
        head, _, tail = self._raw.rpartition(" ")
        if not head:
            head, tail = self._raw, ""
        self._raw = head
        self._cut(pause_s=CLAUSE_PAUSE_S)
        self._raw = tail

    def _release(self) -> None:
        if self._held is not None:
            self._out.append(self._held)
            self._held = None

    @staticmethod
    def _ends_with_abbreviation(text: str) -> bool:
        last_word = text.rsplit(None, 1)[-1].rstrip(".").lower()
        return last_word in ABBREVIATIONS


def _count_words(text: str) -> int:
    return sum(1 for word in text.split() if _has_words(word))


def _has_words(text: str) -> bool:
    return any(char.isalnum() for char in text)


def _clean(raw: str) -> tuple[str, bool, str | None]:
    """Strip markup from a chunk: return (spoken text, emphasis, first emoji)."""
    emphasis = raw.count("*") >= 2
    icon = None
    kept = []
    for char in raw:
        if _is_emoji(char):
            icon = icon or char
            continue
        if char in "*#`_~":
            continue
        kept.append(char)
    text = " ".join("".join(kept).split())
    # Removing an emoji can leave "a lot ." behind.
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    return text, emphasis, icon


def _is_emoji(char: str) -> bool:
    return unicodedata.category(char) == "So" or 0x1F000 <= ord(char) <= 0x1FAFF
