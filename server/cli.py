"""The `parley` command: `serve`, `call` and `migrate`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from server.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("PARLEY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.run(args)
    except SettingsError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    return result


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley voice tutor server")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP and WebRTC server")
    serve.add_argument("--host", help="address to listen on (PARLEY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (PARLEY_PORT, default 8080)")
    serve.set_defaults(run=_serve)

    call = commands.add_parser("call", help="place a test call that speaks an audio file")
    call.add_argument("--audio", required=True, help="file to speak (any format av reads)")
    call.add_argument("--server", default="http://127.0.0.1:8080", help="Parley server URL")
    call.add_argument("--out", type=Path, help="write the audio heard to this WAV file")
    call.add_argument("--json", action="store_true", help="print one JSON object")
    call.add_argument("--conversation", help="continue this conversation id")
    call.add_argument("--level", help="CEFR level of a new conversation (A1-C2)")
    call.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the reply before failing"
    )
    call.set_defaults(run=_call)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    migrate.set_defaults(run=_migrate)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from server.app import build_app

    settings = Settings.from_env(host=args.host, port=args.port)
    web.run_app(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        shutdown_timeout=5.0,
    )
    return 0


def _call(args: argparse.Namespace) -> int:
    from server.caller import place_call, write_wav
    from server.ice import restrict_host_addresses

    restrict_host_addresses(Settings.from_env().media_addresses)
    result = asyncio.run(
        place_call(
            args.server,
            args.audio,
            timeout_s=args.timeout,
            conversation_id=args.conversation,
            level=args.level,
        )
    )
    if args.out:
        write_wav(args.out, result.reply_audio)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"conversation:      {summary['conversation_id']}")
    print(f"you said:          {summary['user_transcript']}")
    print(f"reply:             {summary['reply_text']}")
    print(f"reply audio:       {summary['reply_audio_seconds']} s")
    print(f"first audio after: {summary['first_audio_ms']} ms")
    print(f"events:            {', '.join(summary['events'])}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from storage.database import resolve_dsn, upgrade_schema

    settings = Settings.from_env()

    async def migrate() -> None:
        dsn, embedded = await resolve_dsn(settings.database_url, settings.postgres_dir)
        try:
            await asyncio.to_thread(upgrade_schema, dsn)
        finally:
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    asyncio.run(migrate())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
