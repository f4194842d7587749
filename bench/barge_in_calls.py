"""The barge-in phase of bench.voice_latency: calls that speak a sentence, then a second
one over the tutor's reply, and how soon the reply stopped for the caller.

With the server's log at hand, each reaction is split at two moments that the server logs
("reply paused N ms after the caller's speech"). The log line's time is the moment of the
pause, and N ms before it the speech's first audio arrived at the server. Both processes
run on this machine, so the line's wall-clock time converts to the caller's monotonic
clock by the offset between the two clocks. Log times have 1 ms steps.

Audio reaches the server's segmenter about 40 ms after the caller sends it, the server's
receive buffer of 2 packets. The "onset sent -> server heard" part is that, less how much
earlier the server's VAD dates the speech's start than the caller's onset, which skips
quiet frames (media/file_track.py). After a lost or late packet, aiortc 1.16's buffer
releases one frame per packet it receives, so it stays deeper for the rest of the call.
Fed one packet every 20 ms with one left out, it held each later frame 280 ms, not 40.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.latency_report import percentile_ms
from server.caller import (
    REPLY_STOP_SILENCE_S,
    CallResult,
    CueReaction,
    SpeechCue,
    after_reply_heard,
    place_call,
)

logger = logging.getLogger(__name__)

# Past the server's echo grace (barge_in_echo_grace_ms, 1000 ms of a reply's audio), in
# which speech over a reply does not pause it.
CUE_AFTER_HEARD_MS = 1500.0
CALL_TIMEOUT_S = 120.0
# The server's pause for a cue is searched from the cue's first frame to this long after
# its speech onset. The server pauses about 60 ms after the speech reaches it.
PAUSE_SEARCH_S = 2.0
# `parley serve` logs with "%(asctime)s %(levelname)s %(name)s: %(message)s".
_LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
_PAUSE_LINE = re.compile(
    r"^(?P<time>\S+ \S+) INFO server\.barge_in: .*: reply paused (?P<ms>\d+) ms after"
)
_ECHO_LINE = re.compile(r"^(?P<time>\S+ \S+) INFO server\.barge_in: .*\(echo\)$")


@dataclass(frozen=True)
class ServerMark:
    """A barge-in line of the server's log, with its time on this process's monotonic
    clock."""

    at: float
    kind: str  # "paused" or "echo"
    # For "paused": from the arrival of the speech's first audio to the pause.
    pause_ms: float = 0.0

    @property
    def heard_at(self) -> float:
        return self.at - self.pause_ms / 1000


@dataclass(frozen=True)
class BargeInTiming:
    first_name: str
    cue_name: str
    # None when the call failed or the cue was never spoken.
    reaction: CueReaction | None
    # message:interrupted events whose reason is "barge-in", and those with another one.
    interrupted: int
    interrupted_otherwise: int
    # The server's first pause of the reply after the cue, and whether it ignored speech
    # as echo meanwhile. None without the server's log.
    pause: ServerMark | None
    echo_ignored: bool

    @property
    def never_stopped(self) -> bool:
        """Whether reply audio went on after the cue's speech began and did not stop."""
        reaction = self.reaction
        return (
            reaction is not None
            and reaction.playing_at_onset
            and reaction.stopped_at is None
            and reaction.heard_after_onset_s > 0
        )

    def split_ms(self) -> tuple[float | None, float | None, float | None]:
        """Return the reaction in three parts: onset sent to heard by the server, heard
        to paused, and paused to the end of the last reply audio at the caller."""
        reaction, pause = self.reaction, self.pause
        if reaction is None or pause is None or reaction.stopped_at is None:
            return None, None, None
        return (
            _ms(pause.heard_at - reaction.onset_sent_at),
            pause.pause_ms,
            _ms(reaction.stopped_at - pause.at),
        )


async def place_barge_in_calls(
    server_url: str, token: str, pairs: Sequence[tuple[Path, Path]], server_log: Path | None
) -> list[BargeInTiming]:
    """Place one call per (first sentence, cue sentence) pair, one after another."""
    results: list[CallResult | None] = []
    for number, (first, cue) in enumerate(pairs, start=1):
        logger.info(
            "barge-in call %d of %d: speaking %s, then %s over the reply",
            number,
            len(pairs),
            first.name,
            cue.name,
        )
        results.append(await _barge_in_call(server_url, token, first, cue, number))

    marks: list[ServerMark] = []
    if server_log is not None:
        marks = await asyncio.to_thread(read_server_marks, server_log, _clock_offset_s())
    return [
        _timing(first, cue, result, marks)
        for (first, cue), result in zip(pairs, results, strict=True)
    ]


async def _barge_in_call(
    server_url: str, token: str, first: Path, cue: Path, number: int
) -> CallResult | None:
    try:
        return await place_call(
            server_url,
            str(first),
            token=token,
            timeout_s=CALL_TIMEOUT_S,
            cues=[SpeechCue(str(cue), after_reply_heard(CUE_AFTER_HEARD_MS), "barge-in")],
            hang_up_when=_second_turn_taken,
        )
    except (TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
        logger.error("barge-in call %d (%s) failed: %s", number, first.name, exc)
        return None


def _second_turn_taken(events: list[dict[str, Any]]) -> bool:
    """Hang up once the reply was stored as interrupted and the cue became a user turn.

    The second reply is not measured, so the call need not wait for it.
    """
    interrupted = any(event.get("type") == "message:interrupted" for event in events)
    user_turns = sum(
        1
        for event in events
        if event.get("type") == "message:received" and event.get("data", {}).get("role") == "user"
    )
    return interrupted and user_turns >= 2


def _clock_offset_s() -> float:
    """Return wall-clock time minus monotonic time, which converts one to the other."""
    return time.time() - time.monotonic()


def read_server_marks(log_path: Path, offset_s: float) -> list[ServerMark]:
    """Read the barge-in pauses and echo lines of the server's log. Blocking."""
    marks = []
    with open(log_path, errors="replace") as log:
        for line in log:
            paused = _PAUSE_LINE.match(line)
            echo = None if paused else _ECHO_LINE.match(line.rstrip("\n"))
            match = paused or echo
            if match is None:
                continue
            wall_s = datetime.strptime(match["time"], _LOG_TIME_FORMAT).timestamp()
            at = wall_s - offset_s
            if paused:
                marks.append(ServerMark(at, "paused", float(paused["ms"])))
            else:
                marks.append(ServerMark(at, "echo"))
    return marks


def _timing(
    first: Path, cue: Path, result: CallResult | None, marks: list[ServerMark]
) -> BargeInTiming:
    if result is None or not result.cues:
        return BargeInTiming(first.name, cue.name, None, 0, 0, None, False)
    reasons = [
        event.get("data", {}).get("reason")
        for event in result.events
        if event.get("type") == "message:interrupted"
    ]
    (reaction,) = result.cue_reactions()
    spoken = result.cues[0]
    window = [
        mark
        for mark in marks
        if reaction is not None
        and spoken.condition_held_at is not None
        and spoken.condition_held_at <= mark.at <= reaction.onset_sent_at + PAUSE_SEARCH_S
    ]
    pause = next((mark for mark in window if mark.kind == "paused"), None)
    return BargeInTiming(
        first_name=first.name,
        cue_name=cue.name,
        reaction=reaction,
        interrupted=reasons.count("barge-in"),
        interrupted_otherwise=len(reasons) - reasons.count("barge-in"),
        pause=pause,
        echo_ignored=any(mark.kind == "echo" for mark in window),
    )


def reactions_ms(timings: Sequence[BargeInTiming]) -> list[float | None]:
    """Return the reaction of each call whose reply was playing at the cue's onset."""
    return [
        timing.reaction.reaction_ms
        for timing in timings
        if timing.reaction is not None and timing.reaction.playing_at_onset
    ]


def print_barge_ins(timings: Sequence[BargeInTiming], with_server_log: bool) -> None:
    print(
        f"\n== barge-in: a second sentence once {CUE_AFTER_HEARD_MS:.0f} ms of reply audio "
        "was heard (ms)"
    )
    for number, timing in enumerate(timings, start=1):
        _print_barge_in_call(number, timing)
    _print_barge_in_summary(timings, with_server_log)


def _print_barge_in_call(number: int, timing: BargeInTiming) -> None:
    print(f"call {number}: {timing.first_name}, then {timing.cue_name}")
    reaction = timing.reaction
    if reaction is None:
        print("  cue not spoken or call failed (see the log)")
        return
    sent, paused, stopped = timing.split_ms()
    print(
        f"  playing at onset {_yes(reaction.playing_at_onset)}, reaction"
        f" {_cell(reaction.reaction_ms)}, reply heard after the onset"
        f" {reaction.heard_after_onset_s * 1000:.0f}"
    )
    print(
        f"  onset sent -> server heard {_cell(sent)}, heard -> paused {_cell(paused)},"
        f" paused -> last audio at caller {_cell(stopped)}"
    )
    print(
        f"  stored as interrupted {timing.interrupted} (other reasons"
        f" {timing.interrupted_otherwise}), echo ignored {_yes(timing.echo_ignored)}"
    )


def _print_barge_in_summary(timings: Sequence[BargeInTiming], with_server_log: bool) -> None:
    playing = [t for t in timings if t.reaction is not None and t.reaction.playing_at_onset]
    splits = [t.split_ms() for t in playing]
    print(f"{'':<36} {'n':>3} {'p50':>9} {'p95':>9} {'max':>9}")
    _print_row("reaction_ms (playing at onset)", reactions_ms(timings))
    if with_server_log:
        _print_row("  onset sent -> server heard", [split[0] for split in splits])
        _print_row("  server heard -> paused", [split[1] for split in splits])
        _print_row("  paused -> last audio at caller", [split[2] for split in splits])
        # A reply that went silent before the server paused it ended a chunk: its
        # reaction is the gap between chunks, not the barge-in's.
        by_pause = [
            t.reaction.reaction_ms if t.reaction is not None else None
            for t, split in zip(playing, splits, strict=True)
            if split[2] is not None and split[2] >= 0
        ]
        _print_row("reaction_ms, stopped by the pause", by_pause)
        print(
            "(onset sent -> server heard: 40 ms of the server's receive buffer, less how much"
            " earlier the server's VAD dated the speech than the caller's onset)"
        )
    else:
        print("  (no server log with --server, so the reaction is not split)")

    total = len(timings)
    spoken = sum(t.reaction is not None for t in timings)
    never = sum(t.never_stopped for t in timings)
    silent = sum(
        1
        for t in playing
        if t.reaction is not None
        and t.reaction.stopped_at is None
        and t.reaction.heard_after_onset_s == 0
    )
    interrupted = sum(t.interrupted > 0 for t in timings)
    print(f"cue spoken: {spoken} of {total} calls")
    print(f"reply playing at the onset: {len(playing)} of {total} calls")
    print(f"reply never stopped after the onset: {never} of {total} calls")
    print(
        f"reply heard in the {REPLY_STOP_SILENCE_S * 1000:.0f} ms before the onset but not"
        f" after it (no reaction measured): {silent} of {total} calls"
    )
    print(
        f"replies stored as interrupted (message:interrupted, barge-in): {interrupted} of {total}"
    )


def _print_row(name: str, values: Sequence[float | None]) -> None:
    present = [value for value in values if value is not None]
    peak = max(present) if present else None
    print(
        f"{name:<36} {len(present):>3} {_cell(percentile_ms(values, 50), 9)}"
        f" {_cell(percentile_ms(values, 95), 9)} {_cell(peak, 9)}"
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _cell(value: float | None, width: int = 0) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
