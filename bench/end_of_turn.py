"""Measure end-of-turn detection on real speech: how soon a finished sentence ends the
turn, and how often a pause inside a sentence ends it too early.

    .venv/bin/python -m bench.end_of_turn [--audio-dir DIR] [--repeats N] [--stt-ms MS]
        [--parts abc]

Each English sentence file of MANIFEST.tsv is replayed through UtteranceSegmenter with the
shared Silero model in 20 ms pieces, as a call delivers them, and the call session's early
transcription is simulated in stream time (bench/turn_replay.py). Whisper (built as the
server builds it) runs on each SpeechPaused's samples, one transcription at a time, and
its result lands at the first frame after its measured compute time. A transcript that
looks_finished then calls allow_quick_end. Silence, before and after the speech and inside
it, repeats the file's quietest 200 ms, mirrored at each join, with 10 ms crossfades
(bench/speech_streams.py).

The script prints numbers and ratios only, and its exit code does not depend on them.

NOTE: Whisper runs here without the server's other work and without the interim prefix
that the call session passes it. Each result is cached by its samples, so a prefix that
recurs (the speech before an inserted pause) reuses the compute time of its first run.
Compute times follow the machine's load, so part c compares the settings at one fixed
compute time (part a's p50, or --stt-ms) and at none. The "instant STT" column of part b
shows how much of the cut rate Whisper's speed alone decides.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import webrtcvad
from faster_whisper import WhisperModel

from bench.latency_report import percentile_ms
from bench.speech_streams import (
    FLOOR_MS,
    LEAD_S,
    TAIL_S,
    SpeechFile,
    load_sentence_files,
    quietest_stretch,
    word_gaps_s,
)
from bench.turn_replay import CallReplay, TimedTranscriber, TurnEnd
from media.file_track import find_speech_end_s
from media.silero import SileroModel
from media.stt import SpeechToText
from media.stt import default_model_path as default_stt_model
from media.vad import VAD_RATE_HZ, SegmenterConfig
from server.services import segmenter_config_from
from server.settings import Settings

REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO_DIR = REPO_DIR.parent / "shared" / "audio"
INSERTED_PAUSES_MS = (400, 600, 800)
QUICK_END_CHOICES_MS = (250, 300, 400)
PAUSE_CHOICES_MS = (120, 160, 200)
# A turn that ends with its speech this close after the insertion point ends at the
# inserted pause: Whisper's word boundaries are only accurate to a frame or two.
CUT_TOLERANCE_S = 0.05


def speech_frames(samples: np.ndarray, config: SegmenterConfig) -> list[bool]:
    """Return the segmenter's verdict per frame: webrtcvad voiced and Silero at least
    silero_noise_threshold, or Silero at least silero_threshold. The rule is
    UtteranceSegmenter._is_speech's, repeated because the segmenter reports no frames."""
    vad = webrtcvad.Vad(config.aggressiveness)
    stream = SileroModel.shared().stream()
    frame_len = VAD_RATE_HZ * config.frame_ms // 1000
    probability = 0.0
    verdicts = []
    for start in range(0, len(samples) - frame_len + 1, frame_len):
        frame = samples[start : start + frame_len]
        probabilities = stream.push(frame)
        probability = max(probabilities) if probabilities else probability
        voiced = vad.is_speech(frame.tobytes(), VAD_RATE_HZ)
        noise_ok = probability >= config.silero_noise_threshold
        verdicts.append((voiced and noise_ok) or probability >= config.silero_threshold)
    return verdicts


def inner_pauses(verdicts: list[bool], frame_ms: int) -> list[tuple[float, int]]:
    """Return (start_s, length_ms) of each run of non-speech frames between speech."""
    speech = [index for index, verdict in enumerate(verdicts) if verdict]
    pauses = []
    for before, after in itertools.pairwise(speech):
        if after - before > 1:
            pauses.append(((before + 1) * frame_ms / 1000, (after - before - 1) * frame_ms))
    return pauses


# -- measurements


def cut_at(turns: list[TurnEnd], at_s: float) -> bool:
    """Return True when a turn ended during the silence at at_s, its speech ending there."""
    return any(
        turn.decided_s >= at_s and turn.utterance.speech_end_s <= at_s + CUT_TOLERANCE_S
        for turn in turns
    )


@dataclass
class SettingResult:
    config: SegmenterConfig
    # Per sentence file: the turns the file alone gives.
    sentence_turns: dict[str, list[TurnEnd]] = field(default_factory=dict)
    # Per inserted pause length: (cuts, gaps counted). Gaps where the file alone already
    # ends a turn are left out and counted in naturally_cut.
    cuts: dict[int, tuple[int, int]] = field(default_factory=dict)
    naturally_cut: int = 0


def measure_setting(
    files: list[SpeechFile],
    config: SegmenterConfig,
    transcriber: TimedTranscriber,
    *,
    quick_end: bool,
    stt_compute_s: float | None = None,
    with_cuts: bool = True,
) -> SettingResult:
    def replay(stream: np.ndarray) -> list[TurnEnd]:
        call = CallReplay(config, transcriber, quick_end=quick_end, stt_compute_s=stt_compute_s)
        return call.run(stream)

    result = SettingResult(config)
    for speech in files:
        result.sentence_turns[speech.name] = replay(speech.stream())
    if not with_cuts:
        return result

    counts = {length: [0, 0] for length in INSERTED_PAUSES_MS}
    for speech in files:
        for gap_s in speech.word_gaps_s:
            if cut_at(result.sentence_turns[speech.name], LEAD_S + gap_s):
                result.naturally_cut += 1
                continue
            for length in INSERTED_PAUSES_MS:
                turns = replay(speech.stream((gap_s, length / 1000)))
                counts[length][0] += cut_at(turns, LEAD_S + gap_s)
                counts[length][1] += 1
    result.cuts = {length: (cut, total) for length, (cut, total) in counts.items()}
    return result


@dataclass(frozen=True)
class Delays:
    """Milliseconds from the end of speech to the end of each file's last turn."""

    # From the end of the file's last voiced 30 ms frame, as find_speech_end_s finds it.
    decided_ms: list[float]
    # From the segmenter's own speech end (Utterance.speech_end_s).
    after_segmenter_end_ms: list[float]
    # From the file's speech end until the turn's transcript is ready too.
    transcript_ready_ms: list[float]
    quick_ends: int
    # Turns ended inside the files, before their last word.
    early_turns: int


def final_delays(files: list[SpeechFile], result: SettingResult) -> Delays:
    decided, after_segmenter, ready = [], [], []
    quick_ends = early_turns = 0
    for speech in files:
        turns = result.sentence_turns[speech.name]
        last = turns[-1]
        speech_end_s = LEAD_S + find_speech_end_s(speech.samples)
        decided.append((last.decided_s - speech_end_s) * 1000)
        after_segmenter.append((last.decided_s - last.utterance.speech_end_s) * 1000)
        ready.append((last.transcript_ready_s - speech_end_s) * 1000)
        quick_ends += last.utterance.quick_end
        early_turns += len(turns) - 1
    return Delays(decided, after_segmenter, ready, quick_ends, early_turns)


# -- report


def spread(values: Sequence[float]) -> str:
    return (
        f"p50 {percentile_ms(values, 50):7.1f}  p95 {percentile_ms(values, 95):7.1f}"
        f"  max {max(values):7.1f}"
    )


def share(pair: tuple[int, int]) -> str:
    cut, total = pair
    return f"{cut:3d}/{total:<3d} {cut / max(total, 1):6.1%}"


def print_compute(transcriber: TimedTranscriber) -> None:
    values = [value * 1000 for value in transcriber.compute_s]
    print(f"  Whisper compute per transcription, ms (n={len(values)}): {spread(values)}")


def print_sentences(files: list[SpeechFile], runs: list[Delays], last: SettingResult) -> None:
    print("\n  last repeat, ms after the file's speech end:")
    print(f"  {'file':44} {'decided':>8} {'ready':>8}  ended by  turns")
    for index, speech in enumerate(files):
        turns = last.sentence_turns[speech.name]
        mode = "quick" if turns[-1].utterance.quick_end else "silence"
        print(
            f"  {speech.name:44} {runs[-1].decided_ms[index]:8.1f}"
            f" {runs[-1].transcript_ready_ms[index]:8.1f}  {mode:8}  {len(turns)}"
        )

    def pooled(name: str) -> str:
        return spread([value for run in runs for value in getattr(run, name)])

    count = len(files) * len(runs)
    quick_ends = sum(run.quick_ends for run in runs)
    print(f"\n  pooled over {len(runs)} repeats ({count} turns), ms:")
    print(f"  decided after the file's speech end           {pooled('decided_ms')}")
    print(f"  decided after the segmenter's speech end      {pooled('after_segmenter_end_ms')}")
    print(f"  transcript ready after the file's speech end  {pooled('transcript_ready_ms')}")
    p50s = " ".join(f"{percentile_ms(run.decided_ms, 50):.1f}" for run in runs)
    print(f"  decided p50 per repeat: {p50s}")
    print(f"  ended quick {quick_ends}/{count} ({quick_ends / count:.0%}), the rest by silence")
    print(f"  turns ended inside a file, per repeat: {[run.early_turns for run in runs]}")


def print_cuts(results: dict[str, SettingResult], gaps: int) -> None:
    left_out = ", ".join(f"{label} {result.naturally_cut}" for label, result in results.items())
    print(f"  {gaps} word gaps; left out as already cut by the file alone: {left_out}")
    print("  pause   " + "".join(f"{label:>20}" for label in results))
    for length in INSERTED_PAUSES_MS:
        cells = "".join(f"{share(result.cuts[length]):>20}" for result in results.values())
        print(f"  {length:4d} ms{cells}")


def print_jfk_pauses(files: list[SpeechFile], results: dict[str, SettingResult]) -> None:
    jfk = next((speech for speech in files if speech.name.startswith("jfk_")), None)
    if jfk is None:
        return
    config = next(iter(results.values())).config
    pauses = inner_pauses(speech_frames(jfk.stream(), config), config.frame_ms)
    print(
        f"\n  pauses of at least {config.pause_ms} ms inside {jfk.name}, by the segmenter's frames:"
    )
    for start_s, length_ms in pauses:
        if length_ms < config.pause_ms or start_s - LEAD_S > len(jfk.samples) / VAD_RATE_HZ:
            continue
        verdicts = [
            f"{label}: {turn_end_mode(result.sentence_turns[jfk.name], start_s)}"
            for label, result in results.items()
        ]
        print(
            f"  at {start_s - LEAD_S:5.2f} s, {length_ms:4d} ms; turn ends: {', '.join(verdicts)}"
        )


def turn_end_mode(turns: list[TurnEnd], speech_end_s: float) -> str:
    """Return how a turn ended at speech_end_s: quick, silence, or none when none did."""
    for turn in turns:
        if abs(turn.utterance.speech_end_s - speech_end_s) < 1e-6:
            return "quick" if turn.utterance.quick_end else "silence"
    return "none"


def print_grid(files: list[SpeechFile], rows: dict[str, SettingResult]) -> None:
    cut_heads = "".join(f"  cut {length}" for length in INSERTED_PAUSES_MS)
    print(f"  {'setting':26} {'p50':>7} {'p95':>7} {'max':>7}  quick  early{cut_heads}")
    for label, result in rows.items():
        delays = final_delays(files, result)
        values = delays.decided_ms
        cuts = "".join(
            f"  {result.cuts[length][0] / max(result.cuts[length][1], 1):7.1%}"
            for length in INSERTED_PAUSES_MS
        )
        print(
            f"  {label:26} {percentile_ms(values, 50):7.1f} {percentile_ms(values, 95):7.1f}"
            f" {max(values):7.1f}  {delays.quick_ends:2d}/{len(values):<2d} {delays.early_turns:5d}"
            + cuts
        )


# -- main


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    recordings = load_sentence_files(args.audio_dir)
    # Each section prints as it finishes, even into a file or a pipe.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    print(f"load average at start: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")

    settings = Settings()
    model_path = settings.stt_model or default_stt_model()
    stt = SpeechToText(
        model_path,
        compute_type=settings.stt_compute_type,
        threads=settings.stt_threads,
        language=settings.stt_language,
        beam_size=settings.stt_beam_size,
    )
    try:
        stt.load()
        SileroModel.shared()
        # A second copy of the model, because SpeechToText gives no word timestamps.
        aligner = WhisperModel(model_path, device="cpu", compute_type=settings.stt_compute_type)
        files = [
            SpeechFile(name, samples, quietest_stretch(samples), word_gaps_s(aligner, samples))
            for name, samples in recordings
        ]
        del aligner
        _report(files, segmenter_config_from(settings), TimedTranscriber(stt), args)
    finally:
        stt.close()
    print(f"\nload average at end: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    return 0


def _report(
    files: list[SpeechFile],
    default: SegmenterConfig,
    transcriber: TimedTranscriber,
    args: argparse.Namespace,
) -> None:
    stt_compute_s = None if args.stt_ms is None else args.stt_ms / 1000
    stt_time = "measured" if args.stt_ms is None else f"fixed at {args.stt_ms:g} ms"

    def measure(config: SegmenterConfig, **options: Any) -> SettingResult:
        options.setdefault("stt_compute_s", stt_compute_s)
        return measure_setting(files, config, transcriber, **options)

    print(
        f"\n== a. end of turn after finished sentences ({len(files)} files, each then "
        f"{TAIL_S:g} s of its quietest {FLOOR_MS} ms repeated; quick_end_ms "
        f"{default.quick_end_ms}, pause_ms {default.pause_ms}, end_silence_ms "
        f"{default.end_silence_ms}; Whisper's compute time {stt_time})"
    )
    runs = []
    a_compute_s: list[float] = []
    result = SettingResult(default)
    for _repeat in range(args.repeats):
        # A fresh cache, so every repeat times Whisper again.
        transcriber.clear()
        result = measure(default, quick_end=True, with_cuts=False)
        runs.append(final_delays(files, result))
        a_compute_s += [value * 1000 for value in transcriber.compute_s]
        print_compute(transcriber)
    print_sentences(files, runs, result)
    if "b" not in args.parts and "c" not in args.parts:
        return

    print("\n== b. turns cut at a pause inserted between words, default settings")
    results = {
        "quick end on": measure(default, quick_end=True),
        "instant STT": measure(default, quick_end=True, stt_compute_s=0.0),
        "quick end off": measure(default, quick_end=False),
    }
    print_cuts(results, sum(len(speech.word_gaps_s) for speech in files))
    print_jfk_pauses(files, results)
    print_compute(transcriber)
    if "c" not in args.parts:
        return

    # Each setting makes new transcriptions, timed under whatever load the machine has
    # then, so the settings are compared at one fixed Whisper speed instead.
    typical_ms = args.stt_ms if args.stt_ms is not None else percentile_ms(a_compute_s, 50)
    for fixed_ms in (typical_ms or 0.0, 0.0):
        print(
            f"\n== c. settings compared, Whisper's compute time fixed at {fixed_ms:.0f} ms"
            "\n  p50, p95, max: ms from the file's speech end to its last turn's end; quick: "
            "files ended quick;\n  early: turns ended inside the files; cut N: share of word "
            "gaps where an N ms pause ends the turn"
        )
        fixed_s = fixed_ms / 1000
        rows = {"quick end off": measure(default, quick_end=False, stt_compute_s=fixed_s)}
        for quick_end_ms, pause_ms in itertools.product(QUICK_END_CHOICES_MS, PAUSE_CHOICES_MS):
            config = replace(default, quick_end_ms=quick_end_ms, pause_ms=pause_ms)
            label = f"quick_end {quick_end_ms}, pause {pause_ms}"
            rows[label] = measure(config, quick_end=True, stt_compute_s=fixed_s)
        print_grid(files, rows)
    print_compute(transcriber)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.end_of_turn",
        description="Measure end-of-turn delay and inner-pause cuts on real speech.",
    )
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=DEFAULT_AUDIO_DIR,
        help=f"folder with MANIFEST.tsv and the speech files (default {DEFAULT_AUDIO_DIR})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="replays of the finished sentences, each timing Whisper again (default 3)",
    )
    parser.add_argument(
        "--stt-ms",
        type=float,
        help="Whisper compute time to assume for every transcription, in ms, in place of "
        "the measured one (default: measured)",
    )
    parser.add_argument(
        "--parts",
        default="abc",
        help="sections to run: a (delay), b (cuts, needs a), c (settings table, needs a and "
        "b); default abc",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} is invalid: use at least 1")
    if args.stt_ms is not None and args.stt_ms < 0:
        parser.error(f"--stt-ms {args.stt_ms:g} is invalid: use 0 or more")
    if not set(args.parts) <= set("abc"):
        parser.error(f"--parts {args.parts!r} is invalid: use letters from 'abc'")
    return args


if __name__ == "__main__":
    raise SystemExit(main())
