"""Alembic environment: runs the migrations over SQLAlchemy's asyncpg dialect.

The migrations are plain SQL (op.execute), so no SQLAlchemy models are involved.
"""

from __future__ import annotations

import asyncio
import logging
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    # Run from the `alembic` command line: use the same server `parley serve` would.
    from server.settings import Settings
    from storage.database import resolve_dsn, sqlalchemy_url

    settings = Settings.from_env()
    dsn, _embedded = asyncio.run(resolve_dsn(settings.database_url, settings.postgres_dir))
    return sqlalchemy_url(dsn)


def _run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them against a server")
asyncio.run(_run_online(_database_url()))
