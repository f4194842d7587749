"""Measure the pacing of the tutor's audio over one long call, at the caller.

    .venv/bin/python -m bench.pacing [--minutes 10] [--server URL] [--audio-dir DIR]

Without --server it starts its own `parley serve` on 127.0.0.1 with the embedded models.
The call speaks a sentence, then another one about every 25 s once the tutor's reply has
finished, so the tutor keeps replying for the given minutes. It prints two figures and
its exit code does not depend on them:

- drift: each received frame's arrival time minus (the first frame's arrival plus its
  RTP timestamp), as p50 and max over the first and the last minute, and their change;
- chunk placement: where each reply chunk started in the received audio, found by
  matching its stored audio, against where the reply's first chunk and the announced
  audioDuration and pause of the chunks before it put it; and the silence between chunks
  against the announced pause.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.local_server import fetch_health, local_server
from bench.voice_latency import DEFAULT_AUDIO_DIR, SPEECH_FILES, _is_loopback_url
from media.frames import WEBRTC_RATE_HZ, read_audio_file
from server.caller import (
    CallResult,
    CueCondition,
    CueProgress,
    ReplyPacing,
    SpeechCue,
    after_reply_finished,
    fetch_chunk_audio,
    measure_drift,
    measure_reply_pacing,
    place_call,
)
from server.ice import restrict_host_addresses

logger = logging.getLogger(__name__)

# A sentence is due this long after the one before it started, once the reply finished.
SENTENCE_INTERVAL_S = 25.0
# A sentence that got no reply (not recognised, or an error) delays the next one by at
# most this much more.
REPLY_WAIT_S = 15.0
DRIFT_WINDOW_S = 60.0
# The reply to the last sentence, and the quiet that ends the call, come after the minutes.
CALL_MARGIN_S = 180.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aioice logs every ICE check at INFO, four lines per call.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    missing = [name for name in SPEECH_FILES if not (args.audio_dir / name).is_file()]
    if missing:
        sys.exit(f"speech files not found in {args.audio_dir}: {', '.join(missing)}")
    asyncio.run(_run(args.audio_dir, args.minutes, args.server))
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pacing",
        description="Measure the drift and chunk placement of Parley's call audio.",
    )
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="length of the call in minutes (default 10)"
    )
    parser.add_argument(
        "--server",
        help="URL of a running Parley server on this machine, with PARLEY_TOKEN set "
        "(default: start one on a free port of 127.0.0.1)",
    )
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=DEFAULT_AUDIO_DIR,
        help=f"folder with the speech files (default {DEFAULT_AUDIO_DIR})",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes {args.minutes} is invalid: it must be above 0")
    if args.server and not _is_loopback_url(args.server):
        parser.error(
            f"--server {args.server} is invalid: the caller's media stays on 127.0.0.1, "
            "so the server must run on this machine (127.0.0.1, ::1 or localhost)"
        )
    return args


async def _run(audio_dir: Path, minutes: float, server_url: str | None) -> None:
    restrict_host_addresses(["127.0.0.1"])
    load_before = os.getloadavg()
    if server_url is None:
        async with local_server() as server:
            await fetch_health(server.url)
            result, chunk_audio = await _call(server.url, server.token, audio_dir, minutes)
    else:
        await fetch_health(server_url)
        token = os.environ.get("PARLEY_TOKEN", "")
        if not token:
            sys.exit("set PARLEY_TOKEN to a token of that server (parley user create NAME)")
        result, chunk_audio = await _call(server_url, token, audio_dir, minutes)
    load_after = os.getloadavg()

    pacing = await asyncio.to_thread(measure_reply_pacing, result, chunk_audio)
    _print_call(result, load_before, load_after)
    _print_drift(result)
    _print_pacing(pacing)


async def _call(
    server_url: str, token: str, audio_dir: Path, minutes: float
) -> tuple[CallResult, dict[str, np.ndarray]]:
    """Place the call and return its result with the stored audio of its reply chunks."""
    sentences = [
        await asyncio.to_thread(read_audio_file, str(audio_dir / name), WEBRTC_RATE_HZ)
        for name in SPEECH_FILES
    ]
    started_at = time.monotonic()
    count = max(int(minutes * 60 / SENTENCE_INTERVAL_S), 1)
    cues = [
        SpeechCue(
            sentences[number % len(sentences)],
            _sentence_due(started_at + number * SENTENCE_INTERVAL_S),
            label=f"sentence {number + 1}",
        )
        for number in range(1, count)
    ]
    logger.info("placing a call of %.1f min with %d sentences", minutes, count)
    result = await place_call(
        server_url,
        str(audio_dir / SPEECH_FILES[0]),
        token=token,
        cues=cues,
        timeout_s=minutes * 60 + CALL_MARGIN_S,
        # A quiet stretch until the next sentence is due must not end the call.
        turn_wait_s=SENTENCE_INTERVAL_S + REPLY_WAIT_S,
    )
    logger.info("call ended after %.1f min", (time.monotonic() - started_at) / 60)
    return result, await fetch_chunk_audio(server_url, token, result)


def _sentence_due(at: float) -> CueCondition:
    """Return a condition that is true from at once the reply has finished, or from
    REPLY_WAIT_S after at without one."""
    finished = after_reply_finished()

    def holds(progress: CueProgress) -> bool:
        now = time.monotonic()
        return now >= at + REPLY_WAIT_S or (now >= at and finished(progress))

    return holds


def _print_call(
    result: CallResult, load_before: tuple[float, ...], load_after: tuple[float, ...]
) -> None:
    received = [e["data"] for e in result.events if e.get("type") == "message:received"]
    turns = sum(1 for data in received if data.get("role") == "user")
    replies = len(result.replies())
    errors = sum(1 for e in result.events if e.get("type") == "conversation:error")
    spoken = sum(1 for cue in result.cues if cue.first_frame_sent_at is not None) + 1
    frames = result.frames
    duration_s = frames[-1].end_at - frames[0].arrived_at if frames else 0.0
    print(f"call: {duration_s / 60:.1f} min of audio received, {spoken} sentences spoken")
    print(f"  {turns} user turns, {replies} replies, {errors} errors")
    print(f"  load average before {_loads(load_before)}, after {_loads(load_after)}")


def _loads(load: tuple[float, ...]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


def _print_drift(result: CallResult) -> None:
    drift = measure_drift(result.frames, DRIFT_WINDOW_S)
    print(f"drift: arrival minus (first arrival + timestamp), windows of {DRIFT_WINDOW_S:.0f} s")
    if drift is None:
        print("  no frames received")
        return
    print(f"  stream {drift.duration_s:.1f} s")
    print(f"  first window: p50 {drift.first_p50_ms:+.2f} ms, max {drift.first_max_ms:+.2f} ms")
    print(f"  last window:  p50 {drift.last_p50_ms:+.2f} ms, max {drift.last_max_ms:+.2f} ms")
    print(f"  change:       p50 {drift.change_p50_ms:+.2f} ms, max {drift.change_max_ms:+.2f} ms")
    steps = ", ".join(f"{step:+.0f} ms" for step in drift.steps_ms) or "none"
    print(f"  stalls (lasting steps of the per-second floor): {steps}")
    print(f"  drift of the per-second floor between stalls: {drift.drift_between_steps_ms:.2f} ms")


def _print_pacing(pacing: list[ReplyPacing]) -> None:
    chunks = [chunk for reply in pacing for chunk in reply.chunks[1:]]
    found = [chunk for chunk in chunks if chunk.deviation_ms is not None]
    in_time = [chunk for chunk in found if chunk.ready_before_slot]
    print("chunk starts: found minus expected, chunks after each reply's first")
    print(f"  {len(pacing)} replies, {len(found)} of {len(chunks)} later chunks found")
    _print_spread("all found", [chunk.deviation_ms for chunk in found])
    _print_spread("audio queued in time", [chunk.deviation_ms for chunk in in_time])

    errors_ms = [
        (measured - pause_s) * 1000
        for reply in pacing
        for pause_s, measured in reply.gaps()
        if measured is not None
    ]
    print("silence between chunks minus the announced pause")
    _print_spread(f"{len(errors_ms)} gaps", errors_ms)
    for number, reply in enumerate(pacing, start=1):
        worst = reply.worst_deviation_ms()
        worst_text = "none found" if worst is None else f"{worst:+.2f} ms"
        print(f"  reply {number}: {len(reply.chunks)} chunks, worst deviation {worst_text}")


def _print_spread(name: str, values_ms: Sequence[float | None]) -> None:
    present = np.array([value for value in values_ms if value is not None])
    if len(present) == 0:
        print(f"  {name}: none")
        return
    worst = float(present[np.argmax(np.abs(present))])
    p50, p95 = np.percentile(np.abs(present), [50, 95])
    print(f"  {name}: |p50| {p50:.2f} ms, |p95| {p95:.2f} ms, worst {worst:+.2f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
