"""Measure how long a caller waits for the tutor's first reply audio, stage by stage,
and how soon a reply stops when the caller speaks over it. Compare the wait with the same
turns' model work timed alone in this process.

    .venv/bin/python -m bench.voice_latency [--calls N] [--barge-ins N] [--server URL]
        [--audio-dir DIR]

Without --server it starts its own `parley serve` on 127.0.0.1 with the embedded models
and stops it before the in-process timings, so the two parts never share the CPU. A
server named by --server stays up, idle, meanwhile. The in-process part always loads the
built-in default models, whatever the server runs. The script prints numbers, ratios and
whether each target is met, and its exit code does not depend on them.

Each of the --calls calls speaks one sentence and waits for the whole reply. Each of the
--barge-ins calls speaks a sentence, then a second one once 1500 ms of reply audio has
been heard (bench/barge_in_calls.py).

The ratio of a call is its wait for the first reply audio, less the silence that ended
the turn, over the models' compute for that turn:

    numerator:   first_audio_ms at the caller (from the end of speech in the sent audio
                 to the first audible reply frame) minus the server's endOfTurnWait (from
                 the arrival of that end of speech to the end of the turn)
    denominator: the model work alone: Whisper on the utterance, the language model up
                 to its first chunk, and piper on that chunk (bench/model_work.py)

The target applies to the median of the per-call ratios.

NOTE: the two sides do not count the same work. The server starts Whisper when speech
pauses for vad_pause_ms (160 ms), so its STT overlaps the end-of-turn silence: when a
turn ends quickly, the transcript that allowed it is already done. The model work alone
counts all of Whisper, so a ratio under 1 can come from that overlap. The report's "after
the transcript" ratio leaves Whisper out of both sides. The numerator also contains
delays that no model work contains: the trip of the end of speech to the server, piper's
leading silence and aiortc's receive jitter buffer on both sides, 2 packets of 20 ms each
(media/jitter.py). The caller finds the end of speech with webrtcvad on 30 ms frames and
the server with its own segmenter, so the two ends can differ by a frame or two.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.barge_in_calls import (
    BargeInTiming,
    place_barge_in_calls,
    print_barge_ins,
    reactions_ms,
)
from bench.latency_report import (
    SERVER_STAGES,
    CallTiming,
    LoadSample,
    print_report,
    print_targets,
)
from bench.local_server import fetch_health, local_server
from bench.model_work import ModelWork, TurnModels
from media.stt import TranscriptionError
from media.tts import SynthesisError
from server.caller import CallResult, place_call
from server.ice import restrict_host_addresses
from server.llm.base import LLMUnavailableError

logger = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO_DIR = REPO_DIR.parent / "shared" / "audio"
# Real speech, 3 to 11 s each, every one a single sentence.
SPEECH_FILES = (
    "jfk_inaugural_1961_male_en.wav",
    "librispeech_251-137823-0002_en.wav",
    "librispeech_251-137823-0003_en.wav",
    "cmu_arctic_aew_a0001_male_us_en.wav",
    "cmu_arctic_axb_a0006_female_indian_en.wav",
)
# The sentences that make one user turn each. JFK's sentence pauses for 0.3 to 1 s between
# its phrases, so the quick end can end a turn inside it (it made 4 turns in one call).
# The first audio after its end would then belong to a reply to an earlier phrase.
TURN_FILES = SPEECH_FILES[1:]
# A new conversation starts at A1 unless the offer names a level; both parts use it.
LEVEL = "A1"
CALL_TIMEOUT_S = 120.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aioice logs every ICE check at INFO, four lines per call.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    paths = _speech_paths(args.audio_dir, args.calls)
    pairs = _barge_in_pairs(args.audio_dir, args.barge_ins)
    asyncio.run(_run(paths, pairs, args.server))
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.voice_latency",
        description="Time Parley's voice turns end to end and their model work alone.",
    )
    parser.add_argument("--calls", type=int, default=10, help="calls to place (default 10)")
    parser.add_argument(
        "--barge-ins",
        type=int,
        default=10,
        help="calls that speak over the reply (default 10; 0 skips them)",
    )
    parser.add_argument(
        "--server",
        help="URL of a running Parley server on this machine "
        "(default: start one on a free port of 127.0.0.1)",
    )
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=DEFAULT_AUDIO_DIR,
        help=f"folder with the speech files (default {DEFAULT_AUDIO_DIR})",
    )
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls {args.calls} is invalid: place at least 1 call")
    if args.barge_ins < 0:
        parser.error(f"--barge-ins {args.barge_ins} is invalid: use 0 or more")
    if args.server and not _is_loopback_url(args.server):
        parser.error(
            f"--server {args.server} is invalid: the caller's media stays on "
            "127.0.0.1, so the server must run on this machine "
            "(127.0.0.1, ::1 or localhost)"
        )
    return args


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _speech_paths(audio_dir: Path, calls: int) -> list[Path]:
    """Return one file per call, cycling over TURN_FILES. Exit when one is missing."""
    _check_files(audio_dir)
    return [audio_dir / TURN_FILES[i % len(TURN_FILES)] for i in range(calls)]


def _barge_in_pairs(audio_dir: Path, calls: int) -> list[tuple[Path, Path]]:
    """Return (first sentence, sentence over the reply) per call, two different files."""
    _check_files(audio_dir)
    count = len(TURN_FILES)
    pairs = []
    for i in range(calls):
        # The second file is 1 to count - 1 places on, a different distance each round.
        step = 1 + (i // count) % (count - 1)
        pairs.append(
            (audio_dir / TURN_FILES[i % count], audio_dir / TURN_FILES[(i + step) % count])
        )
    return pairs


def _check_files(audio_dir: Path) -> None:
    missing = [name for name in TURN_FILES if not (audio_dir / name).is_file()]
    if missing:
        names = ", ".join(missing)
        sys.exit(f"speech files not found in {audio_dir}: {names}; pass --audio-dir")


@dataclass
class CallPhases:
    health: dict[str, Any]
    calls: list[CallTiming]
    barge_ins: list[BargeInTiming]
    # Whether the barge-in reactions could be split at the server's logged pauses.
    with_server_log: bool


async def _run(paths: list[Path], pairs: list[tuple[Path, Path]], server_url: str | None) -> None:
    loads = [LoadSample("start", os.getloadavg())]
    # The caller's peer connections, like the server's, use loopback addresses only.
    restrict_host_addresses(["127.0.0.1"])

    if server_url is None:
        async with local_server() as server:
            phases = await _place_all(server.url, server.token, paths, pairs, server.log_path)
            loads.append(LoadSample("after the calls", os.getloadavg()))
    else:
        token = os.environ.get("PARLEY_TOKEN", "")
        if not token:
            sys.exit("set PARLEY_TOKEN to a token of that server (parley user create NAME)")
        phases = await _place_all(server_url, token, paths, pairs, None)
        loads.append(LoadSample("after the calls", os.getloadavg()))

    models = TurnModels(LEVEL)
    works = await _time_model_work(models, paths, phases.calls)
    loads.append(LoadSample("after the model work", os.getloadavg()))
    local_names = {
        "stt": models.stt.model_name,
        "tts": models.tts.voice_path,
        "llm": models.llm.name,
    }
    print_report(phases.calls, works, phases.health, local_names, loads)
    if pairs:
        print_barge_ins(phases.barge_ins, phases.with_server_log)
    reactions = reactions_ms(phases.barge_ins) if pairs else None
    missed = sum(timing.never_stopped for timing in phases.barge_ins)
    print_targets(phases.calls, works, reactions, missed)


async def _place_all(
    server_url: str,
    token: str,
    paths: list[Path],
    pairs: list[tuple[Path, Path]],
    server_log: Path | None,
) -> CallPhases:
    health = await fetch_health(server_url)
    calls = await _place_calls(server_url, token, paths)
    barge_ins = await place_barge_in_calls(server_url, token, pairs, server_log)
    return CallPhases(health, calls, barge_ins, server_log is not None)


async def _place_calls(server_url: str, token: str, paths: list[Path]) -> list[CallTiming]:
    calls = []
    for number, path in enumerate(paths, start=1):
        logger.info("call %d of %d: speaking %s", number, len(paths), path.name)
        try:
            result = await place_call(
                server_url, str(path), token=token, timeout_s=CALL_TIMEOUT_S, level=LEVEL
            )
        except (TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            logger.error("call %d (%s) failed: %s", number, path.name, exc)
            failed = CallTiming(
                audio_name=path.name,
                user_turns=0,
                transcript="",
                model=None,
                first_chunk_text="",
                first_audio_ms=None,
                stages_ms={},
            )
            calls.append(failed)
            continue
        calls.append(_call_timing(path.name, result))
    return calls


def _call_timing(audio_name: str, result: CallResult) -> CallTiming:
    received = [event["data"] for event in result.events if event.get("type") == "message:received"]
    user = [data for data in received if data.get("role") == "user"]
    replies = [data for data in received if data.get("role") == "assistant"]
    for event in result.events:
        if event.get("type") == "conversation:error":
            logger.warning("%s: server sent an error: %s", audio_name, event.get("data"))
    if len(user) != 1:
        logger.warning("%s made %d user turns instead of 1", audio_name, len(user))

    reply: dict[str, Any] = replies[0] if replies else {}
    metadata: dict[str, Any] = reply.get("metadata", {})
    chunks: list[dict[str, Any]] = reply.get("chunks", [])
    stages_ms: dict[str, float | None] = metadata.get("timingsMs", {})
    turn = _turn_metrics(audio_name, result, reply.get("messageId"), stages_ms)
    return CallTiming(
        audio_name=audio_name,
        user_turns=len(user),
        transcript=result.user_transcript,
        model=metadata.get("model"),
        first_chunk_text=chunks[0]["text"] if chunks else "",
        first_audio_ms=result.first_audio_ms,
        stages_ms=stages_ms,
        end_of_turn=turn.get("endOfTurn"),
        early_transcript=turn.get("earlyTranscript"),
    )


def _turn_metrics(
    audio_name: str,
    result: CallResult,
    message_id: str | None,
    stages_ms: dict[str, float | None],
) -> dict[str, Any]:
    """Return the reply's turn:metrics data, or {} when none came. Warn when its stages
    differ from the stored timingsMs, or name stages that the report does not print."""
    metrics = [
        event["data"]
        for event in result.events
        if event.get("type") == "turn:metrics" and event["data"].get("messageId") == message_id
    ]
    if not metrics:
        logger.warning("%s: no turn:metrics for reply %s", audio_name, message_id)
        return {}
    turn: dict[str, Any] = metrics[0]
    if turn.get("stagesMs") != stages_ms:
        logger.warning(
            "%s: turn:metrics stagesMs %s differ from timingsMs %s",
            audio_name,
            turn.get("stagesMs"),
            stages_ms,
        )
    unknown = set(stages_ms) - set(SERVER_STAGES)
    if unknown:
        logger.warning("%s: the report does not print the stages %s", audio_name, sorted(unknown))
    return turn


async def _time_model_work(
    models: TurnModels, paths: list[Path], calls: list[CallTiming]
) -> list[ModelWork | None]:
    """Time each call's turn alone. A turn whose model fails is logged and left None."""
    logger.info("loading the models in this process for the model work alone")
    works: list[ModelWork | None] = []
    try:
        await models.load()
        for number, (path, call) in enumerate(zip(paths, calls, strict=True), start=1):
            try:
                works.append(await models.time_turn(str(path), call.transcript or None))
            except (
                TranscriptionError,
                LLMUnavailableError,
                SynthesisError,
                RuntimeError,
            ) as exc:
                logger.error("model work of call %d (%s) failed: %s", number, path.name, exc)
                works.append(None)
    finally:
        await models.close()
    return works


if __name__ == "__main__":
    raise SystemExit(main())
