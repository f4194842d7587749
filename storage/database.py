"""The asyncpg pool and schema migrations."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from storage.embedded_postgres import EmbeddedPostgres

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


@dataclass
class Database:
    """A connection pool, plus the embedded server behind it when Parley started one."""

    pool: asyncpg.Pool
    dsn: str
    embedded: EmbeddedPostgres | None = None

    async def close(self) -> None:
        await self.pool.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


async def resolve_dsn(
    database_url: str | None, postgres_dir: Path
) -> tuple[str, EmbeddedPostgres | None]:
    """Return the DSN to use: DATABASE_URL when set, else a started embedded server's."""
    if database_url:
        return database_url, None
    embedded = EmbeddedPostgres(postgres_dir)
    dsn = await asyncio.to_thread(embedded.start)
    return dsn, embedded


async def open_database(
    database_url: str | None, postgres_dir: Path, *, pool_max_size: int = 10
) -> Database:
    """Resolve the server, upgrade the schema to head and open a pool."""
    dsn, embedded = await resolve_dsn(database_url, postgres_dir)
    try:
        await asyncio.to_thread(upgrade_schema, dsn)
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=pool_max_size,
            init=init_connection,
            reset=keep_session_state,
        )
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    return Database(pool=pool, dsn=dsn, embedded=embedded)


def upgrade_schema(dsn: str) -> None:
    """Run `alembic upgrade head` against dsn. Blocking: Alembic drives its own event loop."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is ConfigParser-based, so % must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    logger.info("upgrading database schema to head")
    command.upgrade(config, "head")


def sqlalchemy_url(dsn: str) -> str:
    """Turn a libpq-style DSN into the URL SQLAlchemy's asyncpg dialect expects."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+asyncpg://" + dsn[len(prefix) :]
    return dsn


async def keep_session_state(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query when a connection returns to the pool.

    The default reset (advisory unlocks, CLOSE ALL, UNLISTEN *, RESET ALL) costs a round
    trip per pool use, and Parley's queries leave no session state to reset: no SET,
    LISTEN or advisory lock. asyncpg still rolls back a transaction left open.
    """


async def init_connection(connection: asyncpg.Connection) -> None:
    # JSONB columns come back as Python objects instead of strings.
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )
