"""A `parley serve` process that a benchmark starts for itself, on loopback, in a
temporary folder, with the embedded models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parent.parent
# The tests' server fixture uses the same limit. A fresh server with its own embedded
# PostgreSQL was ready in about 5 s on a 2-core machine, so the margin covers slow disks
# and busy CPUs.
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
HEALTH_POLL_S = 0.3


@dataclass
class LocalServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    # Bearer token of the user "bench", created once the server is up.
    token: str = ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def fetch_health(url: str) -> dict[str, Any]:
    """Return the server's GET /healthz body.

    Raises aiohttp.ClientError when the server is not up.
    """
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(url.rstrip("/") + "/healthz") as response,
    ):
        response.raise_for_status()
        body: dict[str, Any] = await response.json()
        return body


@contextlib.asynccontextmanager
async def local_server(
    extra_env: Mapping[str, str] | None = None, module: str = "server.cli"
) -> AsyncIterator[LocalServer]:
    """Run `parley serve` for the body of the `async with`, then stop it and delete its
    data folder.

    extra_env sets environment variables of the server, over the defaults below. module
    is the one run as `python -m MODULE serve`, for a launcher that wraps the CLI.
    """
    temp_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="parley-bench-"))
    try:
        server = await _start(temp_dir, extra_env or {}, module)
        try:
            yield server
        finally:
            await _stop(server)
    finally:
        await asyncio.to_thread(shutil.rmtree, temp_dir, True)


async def _start(temp_dir: Path, extra_env: Mapping[str, str], module: str) -> LocalServer:
    port = free_port()
    data_dir = temp_dir / "data"
    env = {
        **os.environ,
        "PARLEY_DATA_DIR": str(data_dir),
        "PARLEY_MEDIA_ADDRESSES": "127.0.0.1",
        # Nothing listens here, so the "auto" backend falls back to llama.cpp at once.
        "OLLAMA_HOST": f"http://127.0.0.1:{free_port()}",
        "PARLEY_OLLAMA_PROBE_TIMEOUT_S": "1",
        **extra_env,
    }
    # DATABASE_URL passes through when set. Without it, the server starts an embedded
    # PostgreSQL inside data_dir.
    log_path = temp_dir / "server.log"
    process = await asyncio.to_thread(_spawn, port, env, log_path, module)
    server = LocalServer(f"http://127.0.0.1:{port}", process, log_path, env)
    logger.info("started parley serve (pid %d) on %s, log %s", process.pid, server.url, log_path)

    try:
        await _wait_until_healthy(server)
        server.token = await asyncio.to_thread(_create_user, env, "bench")
    except BaseException:
        await _stop(server)
        raise
    return server


def _spawn(port: int, env: dict[str, str], log_path: Path, module: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", module, "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, cwd=REPO_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _create_user(env: dict[str, str], name: str) -> str:
    """Create a user with `parley user create` on the server's database; return its token."""
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "user", "create", name],
        cwd=REPO_DIR,
        env={**env, "PARLEY_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"parley user create failed: {done.stderr.strip()}")
    return done.stdout.strip()


async def _wait_until_healthy(server: LocalServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"parley serve exited with code {server.process.returncode} before it "
                f"was ready; its log ends:\n{server.log_tail()}"
            )
        try:
            await fetch_health(server.url)
            return
        except aiohttp.ClientError:
            await asyncio.sleep(HEALTH_POLL_S)
    raise TimeoutError(
        f"parley serve did not respond to GET /healthz within {START_TIMEOUT_S:.0f} s; "
        f"its log ends:\n{server.log_tail()}"
    )


async def _stop(server: LocalServer) -> None:
    """Stop with SIGINT, like Ctrl-C, so the server stops its embedded PostgreSQL."""
    process = server.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.warning(
            "parley serve (pid %d) did not stop within %.0f s of SIGINT; killing it, "
            "which can leave its embedded PostgreSQL running",
            process.pid,
            STOP_TIMEOUT_S,
        )
        process.kill()
        await asyncio.to_thread(process.wait)
    logger.info("parley serve (pid %d) stopped with code %s", process.pid, process.returncode)
