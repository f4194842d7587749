"""The printed report of bench.voice_latency: per-call rows, p50 and p95 per stage, the
end-of-turn modes, the ratio of the caller's wait to the model work alone, and the
targets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.model_work import ModelWork

# The metadata.timingsMs keys of an assistant message (also turn:metrics' stagesMs), in
# the order the stages happen.
SERVER_STAGES = (
    "endOfTurnWait",
    "stt",
    "llmFirstToken",
    "firstChunkReady",
    "ttsFirstAudio",
    "firstAudioSent",
)
# turn:metrics' endOfTurn: a finished sentence ended by vad_quick_end_ms of silence, a
# turn ended by vad_end_silence_ms, or one cut at vad_max_utterance_s.
END_OF_TURN_MODES = ("quick", "silence", "max_length")
# Targets: the caller hears the first reply audio within 700 ms of the end of speech at
# the median, end-of-turn silence included. The reply stops within 200 ms of speech over
# it at the 95th percentile. The wait less that silence is at most 1.15 times the model
# work alone (see bench.voice_latency for the ratio's exact terms).
FIRST_AUDIO_TARGET_MS = 700.0
BARGE_IN_TARGET_MS = 200.0
RATIO_TARGET = 1.15


@dataclass(frozen=True)
class CallTiming:
    audio_name: str
    user_turns: int
    transcript: str
    model: str | None
    # The text of the reply's first chunk, printed beside the chunk the model work alone
    # timed.
    first_chunk_text: str
    # From the speech end in the sent audio to the first audible reply frame, at the
    # caller.
    first_audio_ms: float | None
    # The assistant message's metadata.timingsMs, one number per server stage.
    stages_ms: dict[str, float | None]
    # turn:metrics' endOfTurn, and whether the turn used the transcript started at a
    # pause. None when the server sent no turn:metrics.
    end_of_turn: str | None = None
    early_transcript: bool | None = None

    @property
    def wait_after_silence_ms(self) -> float | None:
        """first_audio_ms less the end-of-turn silence that the server waited."""
        silence_ms = self.stages_ms.get("endOfTurnWait")
        if self.first_audio_ms is None or silence_ms is None:
            return None
        return self.first_audio_ms - silence_ms


@dataclass(frozen=True)
class LoadSample:
    moment: str
    load_avg: tuple[float, float, float]


def percentile_ms(values: Sequence[float | None], percent: float) -> float | None:
    """Return the percentile of the values present (linear interpolation), or None."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    return round(float(np.percentile(present, percent)), 1)


def work_ratio(call: CallTiming, work: ModelWork | None) -> float | None:
    """Return (first_audio_ms - endOfTurnWait) / the model work alone of one call."""
    waited_ms = call.wait_after_silence_ms
    if waited_ms is None or work is None or work.total_ms <= 0:
        return None
    return waited_ms / work.total_ms


def after_transcript_ratio(call: CallTiming, work: ModelWork | None) -> float | None:
    """Return (first_audio_ms - endOfTurnWait - stt) / (first clause + TTS alone).

    The server's stt stage is only the part of Whisper that the caller waited for after
    the end of turn, so this ratio leaves Whisper out of both sides.
    """
    waited_ms = call.wait_after_silence_ms
    stt_ms = call.stages_ms.get("stt")
    if waited_ms is None or stt_ms is None or work is None:
        return None
    alone_ms = work.first_clause_ms + work.tts_ms
    return (waited_ms - stt_ms) / alone_ms if alone_ms > 0 else None


def print_report(
    calls: list[CallTiming],
    works: list[ModelWork | None],
    server_health: dict[str, Any],
    local_models: dict[str, str],
    loads: list[LoadSample],
) -> None:
    _print_machine(calls, server_health, local_models, loads)
    _print_calls(calls, works)
    one_turn_calls, one_turn_works = one_turn_only(calls, works)
    print(
        f"\nStatistics below: the {len(one_turn_calls)} of {len(calls)} calls with exactly one"
        " user turn.\nIn a call of more, the first audio after the end of speech can belong"
        " to the reply to an earlier turn."
    )
    _print_stages(one_turn_calls)
    _print_end_of_turn(one_turn_calls)
    _print_model_work(one_turn_works)
    _print_ratio(one_turn_calls, one_turn_works)


def one_turn_only(
    calls: list[CallTiming], works: list[ModelWork | None]
) -> tuple[list[CallTiming], list[ModelWork | None]]:
    """Return the calls that made exactly one user turn, and their model work."""
    pairs = [(call, work) for call, work in zip(calls, works, strict=True) if call.user_turns == 1]
    return [call for call, _ in pairs], [work for _, work in pairs]


def print_targets(
    calls: list[CallTiming],
    works: list[ModelWork | None],
    reactions_ms: Sequence[float | None] | None,
    reactions_missed: int,
) -> None:
    """Print each target with its measured value and whether it is met.

    reactions_ms is None when no barge-in was measured. reactions_missed counts the calls
    whose reply played on after the caller spoke, which miss the target whatever the
    others measured.
    """
    print("\n== targets (the exit code does not depend on them)")
    calls, works = one_turn_only(calls, works)
    first_p50 = percentile_ms([call.first_audio_ms for call in calls], 50)
    _print_target(
        "first reply audio p50, end-of-turn silence included",
        first_p50,
        "ms",
        f"<= {FIRST_AUDIO_TARGET_MS:.0f} ms",
        first_p50 is not None and first_p50 <= FIRST_AUDIO_TARGET_MS,
    )

    if reactions_ms is None:
        print(f"{'barge-in reaction p95':<52} not measured (--barge-ins 0)")
    else:
        reaction_p95 = percentile_ms(reactions_ms, 95)
        met = reaction_p95 is not None and reaction_p95 < BARGE_IN_TARGET_MS
        _print_target(
            f"barge-in reaction p95 ({reactions_missed} never stopped)",
            reaction_p95,
            "ms",
            f"< {BARGE_IN_TARGET_MS:.0f} ms",
            met and reactions_missed == 0,
        )

    ratios = [work_ratio(call, work) for call, work in zip(calls, works, strict=True)]
    ratio_p50 = _median(ratios)
    _print_target(
        "(first audio - end-of-turn wait) / model work, p50",
        ratio_p50,
        "",
        f"<= {RATIO_TARGET}",
        ratio_p50 is not None and ratio_p50 <= RATIO_TARGET,
    )


def _print_target(name: str, value: float | None, unit: str, target: str, met: bool) -> None:
    if value is None:
        measured = "-"
    elif unit:
        measured = f"{value:.1f} {unit}"
    else:
        measured = f"{value:.2f}"
    verdict = "met" if met else "not met"
    print(f"{name:<52} {measured:>10}  target {target:<10} {verdict}")


def _print_machine(
    calls: list[CallTiming],
    server_health: dict[str, Any],
    local_models: dict[str, str],
    loads: list[LoadSample],
) -> None:
    print("\n== machine")
    usable_cpus = len(os.sched_getaffinity(0))
    print(f"CPUs: {os.cpu_count()} (usable by this process: {usable_cpus})")
    for sample in loads:
        averages = " ".join(f"{load:.2f}" for load in sample.load_avg)
        print(f"load average {sample.moment}: {averages} (1/5/15 min)")
    reply_models = ", ".join(sorted({call.model for call in calls if call.model}))
    print(f"server models: llm {server_health.get('llm')} (replies: {reply_models})")
    print(f"               stt {server_health.get('stt')}")
    print(f"               tts {server_health.get('tts')}")
    print(f"local models:  llm {local_models['llm']}")
    print(f"               stt {local_models['stt']}")
    print(f"               tts {local_models['tts']}")


def _print_calls(calls: list[CallTiming], works: list[ModelWork | None]) -> None:
    print("\n== per call (ms)")
    for number, (call, work) in enumerate(zip(calls, works, strict=True), start=1):
        print(f"call {number}: {call.audio_name}, {call.user_turns} user turn(s)")
        stages = ", ".join(
            f"{stage} {_cell(call.stages_ms.get(stage), 0)}" for stage in SERVER_STAGES
        )
        early = {None: "-", True: "yes", False: "no"}[call.early_transcript]
        print(
            f"  caller first_audio_ms {_cell(call.first_audio_ms, 0)}, end of turn "
            f"{call.end_of_turn or '-'}, early transcript {early}"
        )
        print(f"  server {stages}")
        if work is None:
            print("  alone  failed (see the log)")
        else:
            print(
                f"  alone  stt {work.stt_ms:.1f}"
                f" + first clause {work.first_clause_ms:.1f}"
                f" + tts {work.tts_ms:.1f} = {work.total_ms:.1f}"
            )
        print(f"  ratio  {_ratio(work_ratio(call, work))}")
        print(f"  heard {call.transcript!r}")
        alone_chunk = work.first_chunk_text if work is not None else None
        print(f"  first chunk: server {call.first_chunk_text!r}, alone {alone_chunk!r}")


def _print_stages(calls: list[CallTiming]) -> None:
    print("\n== caller and server stages (ms; p95 interpolates between the calls)")
    print(f"{'stage':<36} {'n':>3} {'p50':>9} {'p95':>9}")
    rows = {
        "first_audio_ms (caller)": [call.first_audio_ms for call in calls],
        "first_audio_ms - endOfTurnWait": [call.wait_after_silence_ms for call in calls],
    }
    for stage in SERVER_STAGES:
        rows[stage] = [call.stages_ms.get(stage) for call in calls]
    for name, values in rows.items():
        _print_percentile_row(name, values)


def _print_end_of_turn(calls: list[CallTiming]) -> None:
    print("\n== end of turn (turn:metrics; ms)")
    print(f"{'endOfTurn':<12} {'turns':>5} {'endOfTurnWait p50':>18} {'first_audio_ms p50':>19}")
    modes = [*END_OF_TURN_MODES, None]
    for mode in modes:
        chosen = [call for call in calls if call.end_of_turn == mode]
        if mode is None and not chosen:
            continue
        waits = [call.stages_ms.get("endOfTurnWait") for call in chosen]
        firsts = [call.first_audio_ms for call in chosen]
        print(
            f"{mode or 'no metrics':<12} {len(chosen):>5}"
            f" {_cell(percentile_ms(waits, 50), 18)} {_cell(percentile_ms(firsts, 50), 19)}"
        )
    used = sum(call.early_transcript is True for call in calls)
    known = sum(call.early_transcript is not None for call in calls)
    print(f"early transcript used (earlyTranscript): {used} of {known} turns")


def _print_model_work(works: list[ModelWork | None]) -> None:
    print("\n== model work alone, in this process (ms)")
    print(f"{'part':<36} {'n':>3} {'p50':>9} {'p95':>9}")
    done = [work for work in works if work is not None]
    rows: dict[str, list[float | None]] = {
        "stt_ms (Whisper)": [work.stt_ms for work in done],
        "first_clause_ms (LLM + chunker)": [work.first_clause_ms for work in done],
        "tts_ms (piper, first chunk)": [work.tts_ms for work in done],
        "model_work_alone_ms (sum)": [work.total_ms for work in done],
    }
    for name, values in rows.items():
        _print_percentile_row(name, values)


def _print_ratio(calls: list[CallTiming], works: list[ModelWork | None]) -> None:
    pairs = list(zip(calls, works, strict=True))
    ratios = [work_ratio(call, work) for call, work in pairs]
    after_transcript = [after_transcript_ratio(call, work) for call, work in pairs]

    print("\n== first reply audio against the model work alone (per call, then p50)")
    print("ratio = (first_audio_ms - endOfTurnWait) / (stt + first clause + tts alone)")
    _print_ratio_row("ratio", ratios)
    print("after the transcript = (first_audio_ms - endOfTurnWait - stt)")
    print("                       / (first clause + tts alone)")
    _print_ratio_row("after the transcript", after_transcript)


def _print_ratio_row(name: str, ratios: list[float | None]) -> None:
    present = [ratio for ratio in ratios if ratio is not None]
    label = f"{name}, p50 of {len(present)}"
    print(f"  {label:<30} {_ratio(_median(ratios)):>6}")
    print(f"  {'per call':<30} " + " ".join(_ratio(ratio) for ratio in ratios))


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.median(present)) if present else None


def _print_percentile_row(name: str, values: Sequence[float | None]) -> None:
    count = sum(value is not None for value in values)
    p50, p95 = percentile_ms(values, 50), percentile_ms(values, 95)
    print(f"{name:<36} {count:>3} {_cell(p50, 9)} {_cell(p95, 9)}")


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
