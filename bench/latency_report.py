"""The printed report of bench.voice_latency: per-call rows, p50 and p95 per stage, and
the ratio of the caller's wait to the model work alone."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.model_work import ModelWork

# The metadata.timingsMs keys of an assistant message, in the order the stages happen.
SERVER_STAGES = (
    "endOfTurnWait",
    "stt",
    "llmFirstToken",
    "firstChunkReady",
    "ttsFirstAudio",
    "firstAudioSent",
)
# Targets: the first reply audio within 1000 ms of the end of speech, end-of-turn
# silence included, and the rest of the wait at most 15% above the model work alone.
FIRST_AUDIO_TARGET_MS = 1000.0
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


def print_report(
    calls: list[CallTiming],
    works: list[ModelWork | None],
    server_health: dict[str, Any],
    local_models: dict[str, str],
    loads: list[LoadSample],
    end_silence_ms: int,
) -> None:
    _print_machine(calls, server_health, local_models, loads)
    _print_calls(calls, works)
    _print_stages(calls)
    _print_model_work(works)
    _print_ratio(calls, works, end_silence_ms)


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
        print(f"  caller first_audio_ms {_cell(call.first_audio_ms, 0)}")
        print(f"  server {stages}")
        if work is None:
            print("  alone  failed (see the log)")
        else:
            print(
                f"  alone  stt {work.stt_ms:.1f}"
                f" + first clause {work.first_clause_ms:.1f}"
                f" + tts {work.tts_ms:.1f} = {work.total_ms:.1f}"
            )
        print(f"  heard {call.transcript!r}")
        alone_chunk = work.first_chunk_text if work is not None else None
        print(f"  first chunk: server {call.first_chunk_text!r}, alone {alone_chunk!r}")


def _print_stages(calls: list[CallTiming]) -> None:
    print("\n== caller and server stages (ms; p95 interpolates between the calls)")
    print(f"{'stage':<32} {'n':>3} {'p50':>9} {'p95':>9}")
    rows = {"first_audio_ms (caller)": [call.first_audio_ms for call in calls]}
    for stage in SERVER_STAGES:
        rows[stage] = [call.stages_ms.get(stage) for call in calls]
    for name, values in rows.items():
        _print_percentile_row(name, values)


def _print_model_work(works: list[ModelWork | None]) -> None:
    print("\n== model work alone, in this process (ms)")
    print(f"{'part':<32} {'n':>3} {'p50':>9} {'p95':>9}")
    done = [work for work in works if work is not None]
    rows: dict[str, list[float | None]] = {
        "stt_ms (Whisper)": [work.stt_ms for work in done],
        "first_clause_ms (LLM + chunker)": [work.first_clause_ms for work in done],
        "tts_ms (piper, first chunk)": [work.tts_ms for work in done],
        "model_work_alone_ms (sum)": [work.total_ms for work in done],
    }
    for name, values in rows.items():
        _print_percentile_row(name, values)


def _print_ratio(
    calls: list[CallTiming], works: list[ModelWork | None], end_silence_ms: int
) -> None:
    first_audio = [call.first_audio_ms for call in calls]
    model_work = [work.total_ms if work is not None else None for work in works]
    first_p50, work_p50 = percentile_ms(first_audio, 50), percentile_ms(model_work, 50)
    first_p95, work_p95 = percentile_ms(first_audio, 95), percentile_ms(model_work, 95)
    ratio_p50 = None
    if first_p50 is not None and work_p50:
        ratio_p50 = (first_p50 - end_silence_ms) / work_p50
    per_call = _ratios_per_call(first_audio, model_work, end_silence_ms)
    median = float(np.median(per_call)) if per_call else None

    print("\n== first reply audio against the model work alone")
    print(f"end-of-turn silence (Settings().vad_end_silence_ms): {end_silence_ms} ms")
    print(
        f"first_audio_ms       p50 {_cell(first_p50, 9)}  p95 {_cell(first_p95, 9)}"
        f"  target <= {FIRST_AUDIO_TARGET_MS:.0f} (silence included)"
    )
    print(f"model_work_alone_ms  p50 {_cell(work_p50, 9)}  p95 {_cell(work_p95, 9)}")
    print(f"ratio (first_audio_ms - {end_silence_ms}) / model_work_alone_ms:")
    print(f"  {'at p50':<20} {_ratio(ratio_p50):>6}  target <= {RATIO_TARGET}")
    label = f"median of {len(per_call)} calls"
    print(f"  {label:<20} {_ratio(median):>6}  target <= {RATIO_TARGET}")
    print(f"  {'per call':<20} " + " ".join(_ratio(value) for value in per_call))


def _ratios_per_call(
    first_audio: list[float | None], model_work: list[float | None], end_silence_ms: int
) -> list[float]:
    return [
        (first_ms - end_silence_ms) / work_ms
        for first_ms, work_ms in zip(first_audio, model_work, strict=True)
        if first_ms is not None and work_ms
    ]


def _print_percentile_row(name: str, values: Sequence[float | None]) -> None:
    count = sum(value is not None for value in values)
    p50, p95 = percentile_ms(values, 50), percentile_ms(values, 95)
    print(f"{name:<32} {count:>3} {_cell(p50, 9)} {_cell(p95, 9)}")


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
