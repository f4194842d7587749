"""Shared fixtures: a real PostgreSQL, real speech files, and real `parley serve` processes.

PostgreSQL: PARLEY_TEST_DATABASE_URL names a server to use, and each test server gets a
fresh database in it. Without it, an embedded PostgreSQL starts in a temporary folder.
Speech: PARLEY_TEST_AUDIO_DIR, by default the shared/audio folder beside the checkout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from server.ice import restrict_host_addresses
from storage.database import init_connection
from storage.embedded_postgres import EmbeddedPostgres
from storage.users import create_user
from tests.ollama_standin import EMBED_MODEL as OLLAMA_EMBED_MODEL
from tests.ollama_standin import MODEL as OLLAMA_MODEL
from tests.ollama_standin import OllamaStandIn

REPO_DIR = Path(__file__).resolve().parent.parent
AUDIO_DIR = Path(os.environ.get("PARLEY_TEST_AUDIO_DIR", REPO_DIR.parent / "shared" / "audio"))
SERVER_START_TIMEOUT_S = 180

# The test caller runs in this process: keep its media on loopback like the servers'.
restrict_host_addresses(["127.0.0.1"])


def speech_file(name: str) -> Path:
    path = AUDIO_DIR / name
    if not path.is_file():
        pytest.skip(f"speech file {path} not found; set PARLEY_TEST_AUDIO_DIR")
    return path


@pytest.fixture(scope="session")
def postgres_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("PARLEY_TEST_DATABASE_URL")
    if external:
        yield external
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "data")
    dsn = embedded.start()
    yield dsn
    embedded.stop()


async def create_database(admin_dsn: str) -> str:
    """Create an empty database on the admin DSN's server and return its DSN."""
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
async def fresh_database(postgres_admin_dsn: str) -> str:
    return await create_database(postgres_admin_dsn)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RunningServer:
    url: str
    dsn: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    # The bearer token of the user "tester" (another name on a restart), created with the
    # server.
    token: str = ""
    _pool: asyncpg.Pool | None = field(default=None, repr=False)

    async def create_user(self, name: str) -> str:
        """Create a user in the server's database; return its bearer token."""
        _user_id, token = await create_user(await self.db(), name)
        return token

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/healthz") as response:
            body: dict[str, Any] = await response.json()
            return body

    async def db(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=2, init=init_connection
            )
        return self._pool

    async def wait_for_idle(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Wait until no call, call thread or call task is left; return the last health."""
        deadline = time.monotonic() + timeout_s
        health = await self.health()
        while time.monotonic() < deadline:
            if health["calls"] == health["callThreads"] == health["callTasks"] == 0:
                break
            await asyncio.sleep(0.2)
            health = await self.health()
        return health

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def start_server(
    tmp_path: Path, admin_dsn: str, *, dsn: str | None = None, **env_overrides: str
) -> RunningServer:
    """Start `parley serve` on a free port; wait for /healthz. It gets a fresh database
    unless dsn names one (to restart on the same data)."""
    # A restarted server's data already has a user "tester".
    user_name = "tester" if dsn is None else f"tester-{time.monotonic_ns()}"
    if dsn is None:
        dsn = await create_database(admin_dsn)

    port = free_port()
    data_dir = tmp_path / f"data-{port}"
    data_dir.mkdir(parents=True)
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "PARLEY_DATA_DIR": str(data_dir),
        "PARLEY_MEDIA_ADDRESSES": "127.0.0.1",
        # Nothing listens here, so "auto" falls back to the embedded model at once.
        "OLLAMA_HOST": f"http://127.0.0.1:{free_port()}",
        "PARLEY_OLLAMA_PROBE_TIMEOUT_S": "1",
        **env_overrides,
    }

    log_path = tmp_path / f"server-{port}.log"
    process = await asyncio.to_thread(_spawn_server, port, env, log_path)
    server = RunningServer(f"http://127.0.0.1:{port}", dsn, data_dir, log_path, process)

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"parley serve exited with {process.returncode}:\n" + server.log_tail()
            )
        try:
            await server.health()
            server.token = await server.create_user(user_name)
            return server
        except aiohttp.ClientError:
            await asyncio.sleep(0.3)
    await stop_server(server)
    raise RuntimeError("parley serve did not answer /healthz in time:\n" + server.log_tail())


def _spawn_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
            cwd=REPO_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def stop_server(server: RunningServer) -> None:
    if server._pool is not None:
        await server._pool.close()
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(server.process.wait, 30)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture(scope="module")
async def embedded_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_dsn: str
) -> AsyncIterator[RunningServer]:
    """A server on the embedded defaults: Whisper tiny.en, SmolLM2 and the joe voice."""
    server = await start_server(tmp_path_factory.mktemp("server"), postgres_admin_dsn)
    yield server
    await stop_server(server)


@pytest.fixture(scope="module")
async def standin() -> AsyncIterator[OllamaStandIn]:
    """A stand-in Ollama on loopback: scripted, instant replies through the real client."""
    server = OllamaStandIn()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def chat_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_dsn: str, standin: OllamaStandIn
) -> AsyncIterator[RunningServer]:
    """A server whose replies come from the stand-in, with room for many quick requests."""
    server = await start_server(
        tmp_path_factory.mktemp("chat-server"),
        postgres_admin_dsn,
        OLLAMA_HOST=standin.url,
        PARLEY_OLLAMA_MODEL=OLLAMA_MODEL,
        PARLEY_OLLAMA_EMBED_MODEL=OLLAMA_EMBED_MODEL,
        PARLEY_MAX_WAITING_REPLIES="20",
        PARLEY_CLIENT_EVENTS_PER_S="200",
        PARLEY_CLIENT_EVENT_BURST="200",
    )
    yield server
    await stop_server(server)
