"""Conversation templates: scenarios a conversation can start from."""

from __future__ import annotations

import uuid

import asyncpg

TEMPLATE_COLUMNS = "id, name, description, level, system_prompt, initial_message, metadata"


async def list_templates(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows = await pool.fetch(f"SELECT {TEMPLATE_COLUMNS} FROM conversation_templates ORDER BY name")
    return list(rows)


async def get_template(pool: asyncpg.Pool, template_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT {TEMPLATE_COLUMNS} FROM conversation_templates WHERE id = $1", template_id
    )
    return row
