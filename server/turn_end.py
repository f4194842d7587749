"""Reading an early transcript: does the speech so far end a sentence, and which of its
words will not change as more speech arrives."""

from __future__ import annotations

import re

# A sentence that stops on one of these words is almost never finished ("I went to the",
# "because", "and"), whatever punctuation Whisper gave it.
CONTINUATION_WORDS = frozenset(
    (
        # articles and possessives: a noun must follow
        *("a", "an", "the", "my", "your", "his", "her", "our", "their"),
        # conjunctions: a clause must follow
        *("and", "but", "or", "so", "because", "if", "when", "while", "than", "that", "which"),
        # prepositions
        *("to", "of", "in", "on", "at", "for", "with", "from", "by", "about", "into", "like"),
        # subject pronouns: a verb must follow
        *("i", "we", "they", "he", "she"),
        # hesitations
        *("um", "uh", "er", "erm", "hmm"),
    )
)
_FINAL_MARK = re.compile(r"[.!?][\"')\]]*$")


def looks_finished(text: str) -> bool:
    """Return True when text reads as a finished sentence: it ends with . ! or ? (not an
    ellipsis, which Whisper writes for trailing-off speech) on a word that can end one."""
    text = text.strip()
    if not text or text.endswith(("...", "…")) or not _FINAL_MARK.search(text):
        return False
    words = re.findall(r"[a-z']+", text.lower())
    return bool(words) and words[-1] not in CONTINUATION_WORDS


def stable_prefix(earlier: str, later: str) -> str:
    """Return the words two successive interim transcripts agree on, less the last of
    them, whose punctuation may still change: text Whisper will very likely produce again
    for the start of the same audio."""
    agreed = []
    for before, after in zip(earlier.split(), later.split(), strict=False):
        if before != after:
            break
        agreed.append(after)
    return " ".join(agreed[:-1])
