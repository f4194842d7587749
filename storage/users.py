"""Users and their bearer tokens."""

from __future__ import annotations

import hashlib
import secrets
import uuid

import asyncpg

# 32 random bytes, URL-safe base64: 43 characters.
TOKEN_BYTES = 32


class UserExistsError(Exception):
    """A user with this name already exists."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


async def create_user(pool: asyncpg.Pool, name: str) -> tuple[uuid.UUID, str]:
    """Create a user and its first token; return the user id and the token."""
    async with pool.acquire() as connection, connection.transaction():
        try:
            user_id: uuid.UUID = await connection.fetchval(
                "INSERT INTO users (name) VALUES ($1) RETURNING id", name
            )
        except asyncpg.UniqueViolationError as exc:
            raise UserExistsError(f"user {name!r} already exists") from exc
        token = await _insert_token(connection, user_id)
    return user_id, token


async def issue_token(pool: asyncpg.Pool, name: str) -> str | None:
    """Add a token for the user called name; return it, or None if there is no such user."""
    async with pool.acquire() as connection, connection.transaction():
        user_id = await connection.fetchval("SELECT id FROM users WHERE name = $1", name)
        if user_id is None:
            return None
        return await _insert_token(connection, user_id)


async def user_for_token(pool: asyncpg.Pool, token: str) -> asyncpg.Record | None:
    """Return the (id, name) of the token's user, or None for an unknown token."""
    row: asyncpg.Record | None = await pool.fetchrow(
        """
        SELECT users.id, users.name FROM user_tokens
        JOIN users ON users.id = user_tokens.user_id
        WHERE user_tokens.token_sha256 = $1
        """,
        token_digest(token),
    )
    return row


async def _insert_token(connection: asyncpg.Connection, user_id: uuid.UUID) -> str:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    # A token that starts with "-" would read as an option in `parley call --token TOKEN`.
    while token.startswith("-"):
        token = secrets.token_urlsafe(TOKEN_BYTES)
    await connection.execute(
        "INSERT INTO user_tokens (user_id, token_sha256) VALUES ($1, $2)",
        user_id,
        token_digest(token),
    )
    return token
