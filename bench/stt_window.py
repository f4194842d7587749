"""Compare Whisper's full 30 s window with the fitted window and the forced prefix.

    .venv/bin/python -m bench.stt_window [--audio-dir DIR] [--repeats N] [--sweep]

The utterances are the English sentences and short commands of the speech corpus's
MANIFEST.tsv, compared with their MANIFEST transcripts. The 60 s lecture, cut at its pauses,
adds more, compared with the full window's own transcripts because the corpus has none.
Each path transcribes every utterance --repeats times in turn, and the table shows the
median compute time of each. The prefix path gets the first 70% of the full window's words.
Pieces of the kitchen-noise recording then check that noise still gives no words.

--sweep instead transcribes the same utterances with other minimum windows and tail
margins, the measurement behind media/stt.py's MIN_WINDOW_S and TAIL_MARGIN_S.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from media.frames import read_audio_file
from media.stt import FULL_WINDOW_S, STT_RATE_HZ, SpeechToText, Transcript
from media.stt import default_model_path as default_stt_model

REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO_DIR = REPO_DIR.parent / "shared" / "audio"
MANIFEST = "MANIFEST.tsv"
LECTURE = "silero_lecture_60s_en.wav"
NOISE = "speechcommands_doing_the_dishes_noise.wav"
MANIFEST_CATEGORIES = ("sentence", "short_command")
PREFIX_SHARE = 0.7
# Lengths of the noise pieces, each cut every half length (every 1.5 s up to 3 s).
NOISE_PIECE_S = (1, 2, 3, 5, 8, 12)
SWEEP_TAIL_MARGINS_S = (0.0, 0.25, 0.5, 1.0, 1.5)
SWEEP_MIN_WINDOWS_S = (1.0, 2.0, 3.0)


@dataclass
class Utterance:
    name: str
    samples: np.ndarray
    # The MANIFEST transcript, or "" where the full window's transcript is the reference.
    manifest_text: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / STT_RATE_HZ


@dataclass
class PathResult:
    text: str = ""
    window_s: float = 0.0
    compute_s: list[float] = field(default_factory=list)

    def add(self, transcript: Transcript) -> None:
        self.text = transcript.text
        self.window_s = transcript.window_s
        self.compute_s.append(transcript.compute_s)

    @property
    def ms(self) -> float:
        return statistics.median(self.compute_s) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    audio_dir: Path = args.audio_dir
    if not (audio_dir / MANIFEST).is_file():
        sys.exit(f"{MANIFEST} not found in {audio_dir}; pass --audio-dir with the speech corpus")
    utterances = read_utterances(audio_dir)
    if args.sweep:
        asyncio.run(sweep(utterances))
    else:
        noise = read_audio_file(str(audio_dir / NOISE), STT_RATE_HZ)
        asyncio.run(compare(utterances, noise, args.repeats))
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=DEFAULT_AUDIO_DIR,
        help=f"folder with {MANIFEST} and its recordings (default: {DEFAULT_AUDIO_DIR})",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="transcriptions per path and utterance"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="compare minimum windows and tail margins instead"
    )
    return parser.parse_args(argv)


def read_utterances(audio_dir: Path) -> list[Utterance]:
    """Return the English MANIFEST utterances, then the lecture's pieces."""
    utterances = []
    with open(audio_dir / MANIFEST, newline="") as manifest:
        for row in csv.DictReader(manifest, delimiter="\t"):
            if row["language"] == "en" and row["category"] in MANIFEST_CATEGORIES:
                samples = read_audio_file(str(audio_dir / row["file"]), STT_RATE_HZ)
                utterances.append(Utterance(row["file"], samples, row["transcript"]))
    lecture = read_audio_file(str(audio_dir / LECTURE), STT_RATE_HZ)
    for start, end in lecture_pieces(lecture):
        name = f"lecture {start / STT_RATE_HZ:.1f}-{end / STT_RATE_HZ:.1f} s"
        utterances.append(Utterance(name, lecture[start:end], ""))
    return utterances


def lecture_pieces(samples: np.ndarray) -> list[tuple[int, int]]:
    """Return sample ranges of the lecture between pauses of 400 ms or more, as Silero
    finds them."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(min_silence_duration_ms=400, speech_pad_ms=100)
    chunks = get_speech_timestamps(samples.astype(np.float32) / 32768.0, options)
    return [(chunk["start"], chunk["end"]) for chunk in chunks]


def noise_pieces(noise: np.ndarray) -> list[np.ndarray]:
    pieces = []
    total_s = len(noise) / STT_RATE_HZ
    for length_s in NOISE_PIECE_S:
        step_s = length_s / 2 if length_s > 3 else 1.5
        for start_s in np.arange(0, total_s - length_s, step_s):
            start = int(start_s * STT_RATE_HZ)
            pieces.append(noise[start : start + length_s * STT_RATE_HZ])
    return pieces


# -- words


# Whisper writes numbers as words or digits by whim ("One, two, three." or "1, 2, 3"), so
# number words become digits before words are compared, as in Whisper's own English text
# normaliser, here only for zero to twenty.
# fmt: off
NUMBER_NAMES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen", "twenty",
)
# fmt: on
NUMBER_WORDS = {word: str(value) for value, word in enumerate(NUMBER_NAMES)}


def normalised_words(text: str) -> list[str]:
    """Return the words of text in lower case, without punctuation other than apostrophes,
    and with number words up to twenty as digits."""
    words = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()
    return [NUMBER_WORDS.get(word, word) for word in words]


def word_errors(reference: str, hypothesis: str) -> int:
    """Return the word-level edit distance: substitutions, deletions and insertions."""
    ref, hyp = normalised_words(reference), normalised_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, start=1):
            substitution = diagonal + (ref_word != hyp_word)
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, substitution)
    return row[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    return word_errors(reference, hypothesis) / max(1, len(normalised_words(reference)))


def prefix_of(text: str) -> str:
    """Return the first PREFIX_SHARE of text's words, or "" when that leaves no words
    before or after it."""
    words = text.split()
    count = round(len(words) * PREFIX_SHARE)
    if count == 0 or count == len(words):
        return ""
    return " ".join(words[:count])


# -- comparison


async def compare(utterances: list[Utterance], noise: np.ndarray, repeats: int) -> None:
    full = SpeechToText(default_stt_model(), fitted_window=False)
    fitted = SpeechToText(default_stt_model())
    await asyncio.gather(asyncio.to_thread(full.load), asyncio.to_thread(fitted.load))
    try:
        rows = [await _compare_one(full, fitted, item, repeats) for item in utterances]
        _print_summary(utterances, rows)
        await _compare_noise(full, fitted, noise_pieces(noise))
    finally:
        full.close()
        fitted.close()


async def _compare_one(
    full: SpeechToText, fitted: SpeechToText, item: Utterance, repeats: int
) -> dict[str, PathResult]:
    results = {"full": PathResult(), "fitted": PathResult(), "prefix": PathResult()}
    prefix = ""
    # Paths take turns, so that load from other processes spreads over all of them.
    for _ in range(repeats):
        results["full"].add(await full.transcribe(item.samples))
        prefix = prefix_of(results["full"].text)
        results["fitted"].add(await fitted.transcribe(item.samples))
        if prefix:
            results["prefix"].add(await fitted.transcribe(item.samples, prefix=prefix))
    _print_row(item, results, prefix)
    return results


def _print_row(item: Utterance, results: dict[str, PathResult], prefix: str) -> None:
    reference = item.manifest_text or results["full"].text
    cells = []
    for path, result in results.items():
        if not result.compute_s:
            cells.append(f"{path} -")
            continue
        error_rate = word_error_rate(reference, result.text)
        cells.append(
            f"{path} {result.ms:5.0f} ms WER {error_rate:4.2f} window {result.window_s:4.1f}"
        )
    print(f"{item.name:44} {item.duration_s:5.2f} s | " + " | ".join(cells))
    print(f"    reference: {reference!r}" + ("" if item.manifest_text else " (full window)"))
    for path, result in results.items():
        if result.compute_s and result.text != reference:
            print(f"    {path}: {result.text!r}")
    if prefix:
        print(f"    prefix given: {prefix!r}")


def _print_summary(utterances: list[Utterance], rows: list[dict[str, PathResult]]) -> None:
    print("\nsummary over", len(rows), "utterances (compute time per utterance, median of runs)")
    medians = {}
    for path in ("full", "fitted", "prefix"):
        times = [row[path].ms for row in rows if row[path].compute_s]
        medians[path] = float(np.percentile(times, 50))
        fallbacks = sum(1 for row in rows if row[path].window_s == FULL_WINDOW_S)
        print(
            f"  {path:6} p50 {medians[path]:5.0f} ms  p95 {np.percentile(times, 95):5.0f} ms  "
            f"({len(times)} utterances, {fallbacks} decoded on the 30 s window)"
        )
    print(f"  p50 ratio full / fitted: {medians['full'] / medians['fitted']:.2f}")
    _print_ratios(rows, "full", "fitted")
    _print_ratios(rows, "fitted", "prefix")
    _print_word_errors(utterances, rows)
    _print_token_rate(utterances, rows)


def _print_ratios(rows: list[dict[str, PathResult]], slower: str, faster: str) -> None:
    """Print the ratio of two paths' times per utterance, over the utterances both ran."""
    ratios = [
        row[slower].ms / row[faster].ms
        for row in rows
        if row[slower].compute_s and row[faster].compute_s
    ]
    print(
        f"  {slower} / {faster} per utterance ({len(ratios)}): median "
        f"{statistics.median(ratios):.2f}, range {min(ratios):.2f} to {max(ratios):.2f}"
    )


def _print_word_errors(utterances: list[Utterance], rows: list[dict[str, PathResult]]) -> None:
    for label, with_manifest in (("MANIFEST transcripts", True), ("full window (lecture)", False)):
        for path in ("full", "fitted", "prefix"):
            errors = words = count = 0
            for item, row in zip(utterances, rows, strict=True):
                if bool(item.manifest_text) != with_manifest or not row[path].compute_s:
                    continue
                reference = item.manifest_text or row["full"].text
                errors += word_errors(reference, row[path].text)
                words += len(normalised_words(reference))
                count += 1
            print(
                f"  WER against {label:21} {path:6} {errors / max(1, words):.3f} "
                f"({errors} errors in {words} words, {count} utterances)"
            )


def _print_token_rate(utterances: list[Utterance], rows: list[dict[str, PathResult]]) -> None:
    """Print the highest rate of Whisper tokens per second of audio, which bounds the
    fitted decode's token limit."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(default_stt_model()) / "tokenizer.json"))
    rates = [
        (len(tokenizer.encode(" " + row["full"].text).ids) / item.duration_s, item)
        for item, row in zip(utterances, rows, strict=True)
        if row["full"].text
    ]
    for label, min_duration_s in (("", 0.0), (" over 3 s", 3.0)):
        rate, item = max(
            (pair for pair in rates if pair[1].duration_s > min_duration_s),
            key=lambda pair: pair[0],
        )
        print(f"  most tokens per second of audio{label}: {rate:.1f} ({item.name})")


async def _compare_noise(
    full: SpeechToText, fitted: SpeechToText, pieces: list[np.ndarray]
) -> None:
    print(f"\nkitchen noise, {len(pieces)} pieces of {', '.join(map(str, NOISE_PIECE_S))} s")
    for path, stt in (("full", full), ("fitted", fitted)):
        transcripts = [await stt.transcribe(piece) for piece in pieces]
        worded = [transcript.text for transcript in transcripts if transcript.text]
        decoded = [transcript for transcript in transcripts if transcript.window_s > 0]
        decoded_ms = [transcript.compute_s * 1000 for transcript in decoded]
        print(
            f"  {path:6} pieces with words: {len(worded)} {worded[:3]}; "
            f"pieces Silero passed to Whisper: {len(decoded)}, "
            f"median {statistics.median(decoded_ms) if decoded_ms else 0:.0f} ms each"
        )


# -- sweep


async def sweep(utterances: list[Utterance]) -> None:
    """Print word errors, fallbacks and times for each minimum window and tail margin."""
    full = SpeechToText(default_stt_model(), fitted_window=False)
    await asyncio.to_thread(full.load)
    try:
        references = [
            item.manifest_text or (await full.transcribe(item.samples)).text for item in utterances
        ]
    finally:
        full.close()
    for tail_margin_s in SWEEP_TAIL_MARGINS_S:
        for min_window_s in SWEEP_MIN_WINDOWS_S:
            stt = SpeechToText(
                default_stt_model(), min_window_s=min_window_s, tail_margin_s=tail_margin_s
            )
            await asyncio.to_thread(stt.load)
            try:
                transcripts = [await stt.transcribe(item.samples) for item in utterances]
            finally:
                stt.close()
            _print_sweep_row(min_window_s, tail_margin_s, references, transcripts)


def _print_sweep_row(
    min_window_s: float, tail_margin_s: float, references: list[str], transcripts: list[Transcript]
) -> None:
    errors = sum(
        word_errors(reference, transcript.text)
        for reference, transcript in zip(references, transcripts, strict=True)
    )
    words = sum(len(normalised_words(reference)) for reference in references)
    fallbacks = sum(1 for transcript in transcripts if transcript.window_s == FULL_WINDOW_S)
    fitted = [transcript for transcript in transcripts if 0 < transcript.window_s < FULL_WINDOW_S]
    print(
        f"min window {min_window_s:3.1f} s, tail margin {tail_margin_s:4.2f} s: "
        f"WER {errors / words:.3f} ({errors} errors), {fallbacks} on the 30 s window, "
        f"mean fitted window {statistics.mean(t.window_s for t in fitted):.2f} s, "
        f"median {statistics.median(t.compute_s for t in transcripts) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
