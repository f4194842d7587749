"""Reading early transcripts: looks_finished and stable_prefix on Whisper tiny.en's own
output for the shared recordings, whole and cut between words."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from media.frames import read_audio_file
from media.stt import STT_RATE_HZ, SpeechToText, default_model_path
from server.turn_end import looks_finished, stable_prefix
from tests.conftest import speech_file

# tiny.en's transcripts of the shared recordings, whole or cut at a word boundary, and a
# few written cases, each marked.
FINISHED = [
    "This isn't part of your testing routine, is it?",
    "Another engineer rushed toward the door to see what was happening outside.",
    "God bless him. I hope I'll go on seeing them forever.",
    "Author of the Danger Trail, Philip Steels, etc.",
    "And so my fellow Americans ask not what your country can do for you. Ask what you can "
    "do for your country.",
    "Yes.",
    "One, two, three.",
    # Written: a full stop inside closing quotes, and two marks, still end the sentence.
    'She said "no."',
    "Really?!",
]
UNFINISHED = [
    # JFK cut at 0.74 s: Whisper marks speech that trails off with an ellipsis.
    "And so...",
    "This isn't part of your...",
    "Another engineer rushed toward the door to see what was...",
    "I hope I'll go on…",
    # No final mark at all.
    "Author of the",
    "And so my fellow Americans ask not",
    "This isn't part of your testing routine as-",
    # The last word needs another word after it, whatever the punctuation.
    "Author of the Danger Trail, fill in.",
    # Written: a possessive, a conjunction and a hesitation before the full stop.
    "Can you help me with my.",
    "I went there because.",
    "Um.",
    "",
    "   ",
]


@pytest.mark.parametrize("text", FINISHED)
def test_looks_finished_accepts_whole_sentence(text: str) -> None:
    assert looks_finished(text) is True


@pytest.mark.parametrize("text", UNFINISHED)
def test_looks_finished_rejects_unfinished(text: str) -> None:
    assert looks_finished(text) is False


@pytest.mark.parametrize(
    ("earlier", "later", "expected"),
    [
        # LibriSpeech 251-137823-0003 cut at 1.58 s and 1.82 s.
        (
            "Another engineer rushed to...",
            "Another engineer rushed toward the...",
            "Another engineer",
        ),
        # The earlier text's last word changes its punctuation, so it is not agreed.
        ("This isn't part of your...", "This isn't part of your tip.", "This isn't part"),
        (
            "And so my fellow Americans asked...",
            "And so my fellow Americans ask not",
            "And so my fellow",
        ),
        # Whisper rewrote the start ("my" was "am I"), so only what comes before counts.
        ("And so am I fellow Americans.", "And so my fellow Americans asked...", "And"),
        ("God bless you.", "God bless him.", "God"),
        ("Go ahead, B.", "God bless you.", ""),
        ("Yes.", "Yes.", ""),
        ("", "Another engineer", ""),
        ("Another engineer", "", ""),
    ],
)
def test_stable_prefix_keeps_agreed_words(earlier: str, later: str, expected: str) -> None:
    assert stable_prefix(earlier, later) == expected


def test_stable_prefix_drops_last_agreed_word() -> None:
    earlier = "unless a system is established for the"
    later = "unless a system is established for the frequent formal review."

    assert stable_prefix(earlier, later) == "unless a system is established for"


# -- the real model on the shared recordings

WHOLE_SENTENCES = (
    "librispeech_251-137823-0002_en.wav",
    "librispeech_251-137823-0003_en.wav",
    "jfk_inaugural_1961_male_en.wav",
    "cmu_arctic_aew_a0001_male_us_en.wav",
    "cmu_arctic_axb_a0006_female_indian_en.wav",
)
# The recording and the time just after a word that needs another word after it.
CUT_AFTER_ARTICLE = (
    ("cmu_arctic_aew_a0001_male_us_en.wav", 0.88),  # "Author of the"
    ("librispeech_251-137823-0002_en.wav", 1.12),  # "This isn't part of your"
)


@pytest.fixture(scope="module")
def stt() -> Iterator[SpeechToText]:
    model = SpeechToText(default_model_path())
    model.load()
    yield model
    model.close()


def speech(name: str) -> np.ndarray:
    return read_audio_file(str(speech_file(name)), STT_RATE_HZ)


def with_pause_tail(samples: np.ndarray) -> np.ndarray:
    """Return samples followed by the 150 ms of silence a SpeechPaused keeps."""
    return np.concatenate([samples, np.zeros(STT_RATE_HZ * 150 // 1000, dtype=np.int16)])


@pytest.mark.parametrize("name", WHOLE_SENTENCES)
async def test_whole_sentence_transcript_looks_finished(stt: SpeechToText, name: str) -> None:
    transcript = await stt.transcribe(with_pause_tail(speech(name)))

    assert transcript.text
    assert looks_finished(transcript.text) is True


@pytest.mark.parametrize(("name", "cut_s"), CUT_AFTER_ARTICLE)
async def test_transcript_cut_after_article_looks_unfinished(
    stt: SpeechToText, name: str, cut_s: float
) -> None:
    samples = speech(name)[: round(cut_s * STT_RATE_HZ)]

    transcript = await stt.transcribe(with_pause_tail(samples))

    assert transcript.text
    assert looks_finished(transcript.text) is False
