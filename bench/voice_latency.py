"""Measure how long a caller waits for the tutor's first reply audio, stage by stage,
and compare that wait with the same turns' model work timed alone in this process.

    .venv/bin/python -m bench.voice_latency [--calls N] [--server URL] [--audio-dir DIR]

Without --server it starts its own `parley serve` on 127.0.0.1 with the embedded models
and stops it before the in-process timings, so the two parts never share the CPU. A
server named by --server stays up, idle, meanwhile. The in-process part always loads the
built-in default models, whatever the server runs. The script prints numbers and ratios
only, and its exit code does not depend on them.

NOTE: the two sides do not count the same work. The server starts Whisper when speech
pauses for 210 ms, so most of its STT overlaps the end-of-turn silence. The model work
alone counts all of the STT, so a ratio under 1 can come from that overlap. The caller's
first_audio_ms also contains delays that no server stage contains: piper's leading
silence and aiortc's receive jitter buffer on both sides. In aiortc 1.16 that buffer
releases an audio packet only after 4 later ones have arrived, about 80 ms at 20 ms a
packet.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.latency_report import CallTiming, LoadSample, print_report
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
# Real speech, 3 to 11 s each, every one a single sentence that makes one user turn.
SPEECH_FILES = (
    "jfk_inaugural_1961_male_en.wav",
    "librispeech_251-137823-0002_en.wav",
    "librispeech_251-137823-0003_en.wav",
    "cmu_arctic_aew_a0001_male_us_en.wav",
    "cmu_arctic_axb_a0006_female_indian_en.wav",
)
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
    asyncio.run(_run(paths, args.server))
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.voice_latency",
        description="Time Parley's voice turns end to end and their model work alone.",
    )
    parser.add_argument("--calls", type=int, default=10, help="calls to place (default 10)")
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
    """Return one file per call, cycling over SPEECH_FILES. Exit when one is missing."""
    missing = [name for name in SPEECH_FILES if not (audio_dir / name).is_file()]
    if missing:
        names = ", ".join(missing)
        sys.exit(f"speech files not found in {audio_dir}: {names}; pass --audio-dir")
    return [audio_dir / SPEECH_FILES[i % len(SPEECH_FILES)] for i in range(calls)]


async def _run(paths: list[Path], server_url: str | None) -> None:
    loads = [LoadSample("start", os.getloadavg())]
    # The caller's peer connections, like the server's, use loopback addresses only.
    restrict_host_addresses(["127.0.0.1"])

    if server_url is None:
        async with local_server() as server:
            health = await fetch_health(server.url)
            calls = await _place_calls(server.url, server.token, paths)
            loads.append(LoadSample("after the calls", os.getloadavg()))
    else:
        health = await fetch_health(server_url)
        token = os.environ.get("PARLEY_TOKEN", "")
        if not token:
            sys.exit("set PARLEY_TOKEN to a token of that server (parley user create NAME)")
        calls = await _place_calls(server_url, token, paths)
        loads.append(LoadSample("after the calls", os.getloadavg()))

    models = TurnModels(LEVEL)
    works = await _time_model_work(models, paths, calls)
    loads.append(LoadSample("after the model work", os.getloadavg()))
    local_names = {
        "stt": models.stt.model_name,
        "tts": models.tts.voice_path,
        "llm": models.llm.name,
    }
    print_report(calls, works, health, local_names, loads, models.settings.vad_end_silence_ms)


async def _place_calls(server_url: str, token: str, paths: list[Path]) -> list[CallTiming]:
    calls = []
    for number, path in enumerate(paths, start=1):
        logger.info("call %d of %d: speaking %s", number, len(paths), path.name)
        try:
            result = await place_call(
                server_url, str(path), token=token, timeout_s=CALL_TIMEOUT_S, level=LEVEL
            )
        except (TimeoutError, RuntimeError, aiohttp.ClientError) as exc:
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
    return CallTiming(
        audio_name=audio_name,
        user_turns=len(user),
        transcript=result.user_transcript,
        model=metadata.get("model"),
        first_chunk_text=chunks[0]["text"] if chunks else "",
        first_audio_ms=result.first_audio_ms,
        stages_ms=metadata.get("timingsMs", {}),
    )


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
