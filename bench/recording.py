"""Measure what recording a call costs: CPU, memory over a long call, and the event loop.

    .venv/bin/python -m bench.recording [--minutes 30] [--out DIR]

It feeds one CallRecorder the frames of a call of the given length in both directions, as
fast as the worker thread takes them. The caller's frames are stereo with RTP timestamps,
as aiortc decodes them, and Parley's are mono, as the reply track sends them. Both carry
bursts of noise like turns of speech, so Opus has real work. It prints:

- encoding speed: seconds of call recorded per second of worker CPU time (higher is
  better; 1.0 would be one core for one call), and the file size per minute;
- memory: the process's resident set size after each fifth of the call, and its growth
  from the first fifth to the last (a recorder that streams to disk stays flat);
- the event loop's share: the time one inbound() or outbound() call takes on the caller's
  thread, which is all a call's audio path pays.

Its exit code does not depend on the numbers.
"""

from __future__ import annotations

import argparse
import fractions
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

from media.frames import SAMPLES_PER_FRAME, WEBRTC_RATE_HZ
from media.recording import MAX_QUEUED_ITEMS, CallRecorder

FRAME_S = SAMPLES_PER_FRAME / WEBRTC_RATE_HZ
FRAMES_PER_MINUTE = int(60 / FRAME_S)


def rss_mb() -> float:
    """Return the current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def speech_like(rng: np.random.Generator, index: int) -> np.ndarray:
    """Return one frame of noise in 2 s bursts with 1 s gaps, like turns of speech."""
    if (index * FRAME_S) % 3.0 >= 2.0:
        return np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
    return (rng.standard_normal(SAMPLES_PER_FRAME) * 3000).astype(np.int16)


def inbound_frame(samples: np.ndarray, index: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.repeat(samples, 2).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = WEBRTC_RATE_HZ
    frame.pts = index * SAMPLES_PER_FRAME
    frame.time_base = fractions.Fraction(1, WEBRTC_RATE_HZ)
    return frame


def wait_for_room(recorder: CallRecorder) -> None:
    """Wait while the recorder's queue is more than half full, so nothing is dropped."""
    while recorder.queued_items > MAX_QUEUED_ITEMS // 2:
        time.sleep(0.005)


def run(minutes: float, folder: Path) -> None:
    rng = np.random.default_rng(1)
    recorder = CallRecorder("bench", folder / "call.ogg", folder / "call.timeline.jsonl")
    start = recorder.started_at
    frames = int(minutes * FRAMES_PER_MINUTE)
    checkpoints = {frames * k // 5 for k in range(1, 6)}
    memory: list[tuple[float, float]] = []
    put_seconds = 0.0
    cpu_before = time.thread_time()
    process_cpu_before = time.process_time()
    wall_before = time.perf_counter()
    for index in range(frames):
        caller = inbound_frame(speech_like(rng, index), index)
        parley = speech_like(rng, index + 75)
        due_at = start + index * FRAME_S
        began = time.perf_counter()
        recorder.inbound(caller, due_at + FRAME_S)
        recorder.outbound(parley, due_at)
        put_seconds += time.perf_counter() - began
        if index % 100 == 0:
            wait_for_room(recorder)
        if index + 1 in checkpoints:
            memory.append(((index + 1) * FRAME_S / 60, rss_mb()))
    outcome = recorder.close(start + frames * FRAME_S)
    wall = time.perf_counter() - wall_before
    # The worker's CPU: the whole process less this (feeding) thread.
    worker_cpu = (time.process_time() - process_cpu_before) - (time.thread_time() - cpu_before)
    call_s = frames * FRAME_S

    minutes_recorded = call_s / 60
    print(
        f"call recorded: {minutes_recorded:.1f} min in {wall:.1f} s wall, "
        f"{outcome.dropped_items} items dropped"
    )
    print(
        f"encoding: {call_s / max(worker_cpu, 1e-9):.0f} s of call per CPU second of the worker "
        f"({worker_cpu:.1f} CPU s, {100 * worker_cpu / call_s:.2f}% of one core in a live call)"
    )
    size_mb = outcome.size_bytes / 1e6
    print(f"file: {size_mb:.2f} MB, {size_mb / minutes_recorded:.2f} MB per minute")
    for minute, mb in memory:
        print(f"RSS after {minute:5.1f} min: {mb:.1f} MB")
    print(f"RSS growth from the first fifth to the end: {memory[-1][1] - memory[0][1]:+.1f} MB")
    per_frame_us = put_seconds / (2 * frames) * 1e6
    # 50 frames a second in each direction.
    per_second_ms = per_frame_us * 100 / 1e3
    print(
        f"event loop: {per_frame_us:.1f} us per frame handed over "
        f"({per_second_ms:.2f} ms per second of call, both directions)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="call length (default 30)")
    parser.add_argument("--out", type=Path, help="keep the recording in this folder")
    args = parser.parse_args(argv)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        run(args.minutes, args.out)
        return
    with tempfile.TemporaryDirectory() as folder:
        run(args.minutes, Path(folder))


if __name__ == "__main__":
    main()
