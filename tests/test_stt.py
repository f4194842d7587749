"""SpeechToText with the real tiny.en model on real recordings: the fitted window, the forced
prefix, noise, and the fallback to the 30 s window."""

from __future__ import annotations

import csv
from collections.abc import Iterator

import numpy as np
import pytest

from bench.stt_window import normalised_words, word_error_rate
from media.frames import read_audio_file
from media.stt import (
    FULL_WINDOW_S,
    STT_RATE_HZ,
    FittedWindowDecoder,
    SpeechToText,
    default_model_path,
)
from tests.conftest import speech_file

SENTENCES = [
    "librispeech_251-137823-0002_en.wav",
    "librispeech_251-137823-0003_en.wav",
    "jfk_inaugural_1961_male_en.wav",
    "ljspeech_lj050-0131_female_en.wav",
    "cmu_arctic_aew_a0001_male_us_en.wav",
    "cmu_arctic_axb_a0006_female_indian_en.wav",
]
JFK = "jfk_inaugural_1961_male_en.wav"
LECTURE = "silero_lecture_60s_en.wav"
NOISE = "speechcommands_doing_the_dishes_noise.wav"
SILENCE = "generated_silence_10s_16k.wav"

# Pieces of the lecture, in seconds, whose fitted decode repeats a phrase until the token
# limit ("the day for the day for ...", "So I, when I, when I, ...").
REPEATING_CUTS_S = [(28.75, 31.75), (53.75, 57.25)]
# Pieces of kitchen noise, in seconds. In the first five Silero finds speech, so Whisper
# decodes them, and on the fitted window it wrote "you" with a high no-speech probability.
NOISE_CUTS_S = [(51, 52), (10.5, 12.5), (22.5, 25.5), (25, 30), (48, 56), (0, 12), (30, 42)]


@pytest.fixture(scope="module")
def stt() -> Iterator[SpeechToText]:
    stt = SpeechToText(default_model_path())
    stt.load()
    yield stt
    stt.close()


@pytest.fixture(scope="module")
def full_window_stt() -> Iterator[SpeechToText]:
    stt = SpeechToText(default_model_path(), fitted_window=False)
    stt.load()
    yield stt
    stt.close()


@pytest.fixture(scope="module")
def window_decoder() -> FittedWindowDecoder:
    from faster_whisper import WhisperModel

    model = WhisperModel(default_model_path(), device="cpu", compute_type="int8")
    return FittedWindowDecoder(
        model, language="en", beam_size=1, min_window_s=2.0, tail_margin_s=1.0
    )


def load(name: str, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    samples = read_audio_file(str(speech_file(name)), STT_RATE_HZ)
    end = None if end_s is None else int(end_s * STT_RATE_HZ)
    return samples[int(start_s * STT_RATE_HZ) : end]


def manifest_row(name: str) -> dict[str, str]:
    with open(speech_file("MANIFEST.tsv"), newline="") as manifest:
        for row in csv.DictReader(manifest, delimiter="\t"):
            if row["file"] == name:
                return row
    raise LookupError(f"{name} is not in MANIFEST.tsv")


def repeated_phrase(text: str, times: int = 3) -> str | None:
    """Return a phrase of one to four words that text repeats times in a row, or None."""
    words = normalised_words(text)
    for size in range(1, 5):
        for start in range(len(words) - size * times + 1):
            phrase = words[start : start + size]
            runs = [words[start + k * size : start + (k + 1) * size] for k in range(times)]
            if all(run == phrase for run in runs):
                return " ".join(phrase)
    return None


@pytest.mark.parametrize("name", SENTENCES)
async def test_fitted_window_gives_manifest_words(stt: SpeechToText, name: str) -> None:
    row = manifest_row(name)
    transcript = await stt.transcribe(load(name))

    assert transcript.window_s < FULL_WINDOW_S, "a sentence decodes on a fitted window"
    # tiny.en's known errors, as MANIFEST records its output, are allowed.
    allowed = word_error_rate(row["transcript"], row["tiny_en_output"])
    error_rate = word_error_rate(row["transcript"], transcript.text)
    assert error_rate <= allowed, f"{transcript.text!r} for {row['transcript']!r}"


@pytest.mark.parametrize("name", [JFK, "librispeech_251-137823-0003_en.wav"])
async def test_prefix_continues_to_whole_sentence(stt: SpeechToText, name: str) -> None:
    samples = load(name)
    plain = await stt.transcribe(samples)
    words = plain.text.split()
    prefix = " ".join(words[: round(len(words) * 0.7)])

    transcript = await stt.transcribe(samples, prefix=prefix)

    assert transcript.window_s < FULL_WINDOW_S
    assert transcript.text.startswith(prefix)
    assert normalised_words(transcript.text) == normalised_words(plain.text)


async def test_prefix_not_in_audio_is_dropped(stt: SpeechToText) -> None:
    samples = load(JFK)
    plain = await stt.transcribe(samples)

    transcript = await stt.transcribe(
        samples, prefix="Completely unrelated words about the weather today"
    )

    assert "unrelated" not in transcript.text
    assert transcript.text == plain.text


@pytest.mark.parametrize(("start_s", "end_s"), NOISE_CUTS_S)
async def test_kitchen_noise_gives_no_words(
    stt: SpeechToText, start_s: float, end_s: float
) -> None:
    transcript = await stt.transcribe(load(NOISE, start_s, end_s))
    assert transcript.text == ""


async def test_silence_gives_no_words(stt: SpeechToText) -> None:
    transcript = await stt.transcribe(load(SILENCE))
    assert transcript.text == ""
    assert transcript.window_s == 0.0, "Silero finds no speech, so nothing is decoded"


@pytest.mark.parametrize(("start_s", "end_s"), REPEATING_CUTS_S)
async def test_repeating_decode_falls_back(
    stt: SpeechToText,
    full_window_stt: SpeechToText,
    window_decoder: FittedWindowDecoder,
    start_s: float,
    end_s: float,
) -> None:
    samples = load(LECTURE, start_s, end_s)
    fitted = window_decoder.decode(samples.astype(np.float32) / 32768.0)
    assert repeated_phrase(fitted.text) is not None, f"no repetition in {fitted.text!r}"
    assert fitted.rejection() is not None

    transcript = await stt.transcribe(samples)

    assert transcript.window_s == FULL_WINDOW_S
    assert repeated_phrase(transcript.text) is None, transcript.text
    assert transcript.text == (await full_window_stt.transcribe(samples)).text


async def test_speech_over_30_s_uses_full_window(stt: SpeechToText) -> None:
    transcript = await stt.transcribe(load(LECTURE))

    assert transcript.window_s == FULL_WINDOW_S
    assert "political philosophy" in transcript.text
    assert "global wealth tax" in transcript.text.lower()
