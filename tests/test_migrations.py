"""The Alembic schema on a real PostgreSQL, and gap-free message sequence numbers."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from storage.chunks import insert_chunk, recover_interrupted_replies
from storage.conversations import create_conversation, insert_message
from storage.database import init_connection, upgrade_schema
from storage.users import UserExistsError, create_user, issue_token, token_digest, user_for_token

REPO_DIR = Path(__file__).resolve().parent.parent
ALEMBIC = REPO_DIR / ".venv" / "bin" / "alembic"
HEAD_REVISION = "0005"

TABLES = {
    "users",
    "user_tokens",
    "conversations",
    "messages",
    "message_chunks",
    "conversation_events",
    "conversation_summaries",
    "conversation_key_facts",
    "conversation_templates",
    "conversation_analytics",
    "conversation_tags",
    "conversation_branches",
    "message_reactions",
    "message_embeddings",
    "recordings",
}

# (constraint, table, pg_constraint.contype): "c" is CHECK, "u" is UNIQUE.
CONSTRAINTS = {
    ("valid_level", "conversations", "c"),
    ("valid_level", "conversation_templates", "c"),
    ("valid_status", "conversations", "c"),
    ("valid_memory_strategy", "conversations", "c"),
    ("valid_role", "messages", "c"),
    ("unique_conversation_sequence", "messages", "u"),
    ("valid_emotion", "message_chunks", "c"),
    ("valid_tts_status", "message_chunks", "c"),
    ("unique_message_chunk", "message_chunks", "u"),
    ("valid_range", "conversation_summaries", "c"),
    ("valid_confidence", "conversation_key_facts", "c"),
    ("unique_conversation_metric", "conversation_analytics", "u"),
    ("unique_conversation_tag", "conversation_tags", "u"),
    ("unique_branch", "conversation_branches", "u"),
    ("valid_reaction", "message_reactions", "c"),
    ("unique_conversation_event_seq", "conversation_events", "u"),
    ("unique_token_sha256", "user_tokens", "u"),
    ("unique_summary_start", "conversation_summaries", "u"),
    ("valid_embedding_size", "message_embeddings", "c"),
}

SEARCH_INDEXES = {
    "idx_messages_content_search": "messages",
    "idx_conversations_title_search": "conversations",
}


async def public_tables(connection: asyncpg.Connection) -> set[str]:
    rows = await connection.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> $1",
        "alembic_version",
    )
    return {row["tablename"] for row in rows}


async def current_revision(connection: asyncpg.Connection) -> list[str]:
    rows = await connection.fetch("SELECT version_num FROM alembic_version")
    return [row["version_num"] for row in rows]


async def run_alembic(dsn: str, *arguments: str) -> tuple[int, str]:
    """Run the real alembic command in the repository, as an operator would."""
    env = {**os.environ, "DATABASE_URL": dsn}
    process = await asyncio.create_subprocess_exec(
        str(ALEMBIC),
        *arguments,
        cwd=REPO_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.fixture
async def schema_dsn(fresh_database: str) -> str:
    await asyncio.to_thread(upgrade_schema, fresh_database)
    return fresh_database


@pytest.fixture
async def connection(schema_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(schema_dsn)
    await init_connection(connection)
    yield connection
    await connection.close()


@pytest.fixture
async def pool(schema_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(schema_dsn, min_size=1, max_size=20, init=init_connection)
    yield pool
    await pool.close()


async def new_conversation(connection: asyncpg.Connection) -> uuid.UUID:
    user_id = await connection.fetchval(
        "INSERT INTO users (name) VALUES ($1) RETURNING id", f"learner-{uuid.uuid4().hex[:8]}"
    )
    conversation_id: uuid.UUID = await connection.fetchval(
        "INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user_id
    )
    return conversation_id


async def new_message(
    connection: asyncpg.Connection, conversation_id: uuid.UUID, sequence_number: int
) -> uuid.UUID:
    message_id: uuid.UUID = await connection.fetchval(
        """
        INSERT INTO messages (conversation_id, role, content, sequence_number)
        VALUES ($1, 'user', 'hello', $2) RETURNING id
        """,
        conversation_id,
        sequence_number,
    )
    return message_id


# -- schema contents


async def test_upgrade_creates_every_table(connection: asyncpg.Connection) -> None:
    assert await public_tables(connection) == TABLES


async def test_upgrade_records_head_revision(connection: asyncpg.Connection) -> None:
    assert await current_revision(connection) == [HEAD_REVISION]


async def test_named_constraints_exist(connection: asyncpg.Connection) -> None:
    rows = await connection.fetch(
        """
        SELECT c.conname, t.relname, c.contype::text AS contype
        FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
        WHERE c.conname = ANY($1::text[])
        """,
        sorted({name for name, _table, _kind in CONSTRAINTS}),
    )
    found = {(row["conname"], row["relname"], row["contype"]) for row in rows}

    assert found == CONSTRAINTS


@pytest.mark.parametrize(("index", "table"), sorted(SEARCH_INDEXES.items()))
async def test_full_text_index_is_gin(
    connection: asyncpg.Connection, index: str, table: str
) -> None:
    row = await connection.fetchrow(
        "SELECT tablename, indexdef FROM pg_indexes WHERE indexname = $1", index
    )

    assert row is not None
    assert row["tablename"] == table
    assert "USING gin" in row["indexdef"]
    assert "to_tsvector('english'" in row["indexdef"]


# -- constraints reject bad rows


async def test_invalid_level_is_rejected(connection: asyncpg.Connection) -> None:
    user_id = await connection.fetchval("INSERT INTO users (name) VALUES ('ana') RETURNING id")

    with pytest.raises(asyncpg.CheckViolationError) as raised:
        await connection.execute(
            "INSERT INTO conversations (user_id, level) VALUES ($1, 'Z9')", user_id
        )

    assert raised.value.constraint_name == "valid_level"


async def test_invalid_status_is_rejected(connection: asyncpg.Connection) -> None:
    conversation_id = await new_conversation(connection)

    with pytest.raises(asyncpg.CheckViolationError) as raised:
        await connection.execute(
            "UPDATE conversations SET status = 'deleted' WHERE id = $1", conversation_id
        )

    assert raised.value.constraint_name == "valid_status"


async def test_duplicate_message_sequence_is_rejected(connection: asyncpg.Connection) -> None:
    conversation_id = await new_conversation(connection)
    await new_message(connection, conversation_id, 1)

    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await new_message(connection, conversation_id, 1)

    assert raised.value.constraint_name == "unique_conversation_sequence"


async def test_second_summary_of_a_range_is_rejected(connection: asyncpg.Connection) -> None:
    conversation_id = await new_conversation(connection)
    insert = (
        "INSERT INTO conversation_summaries"
        " (conversation_id, summary_text, message_range_start, message_range_end)"
        " VALUES ($1, $2, 1, $3)"
    )
    await connection.execute(insert, conversation_id, "first", 10)

    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await connection.execute(insert, conversation_id, "again", 12)

    assert raised.value.constraint_name == "unique_summary_start"


async def test_same_key_fact_twice_is_rejected(connection: asyncpg.Connection) -> None:
    conversation_id = await new_conversation(connection)
    insert = (
        "INSERT INTO conversation_key_facts (conversation_id, fact_type, fact_text)"
        " VALUES ($1, 'interest', $2)"
    )
    await connection.execute(insert, conversation_id, "Football")

    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await connection.execute(insert, conversation_id, "football")

    assert raised.value.constraint_name == "unique_key_fact"


async def test_embedding_of_wrong_size_is_rejected(connection: asyncpg.Connection) -> None:
    conversation_id = await new_conversation(connection)
    message_id = await new_message(connection, conversation_id, 1)

    with pytest.raises(asyncpg.CheckViolationError) as raised:
        await connection.execute(
            "INSERT INTO message_embeddings"
            " (message_id, conversation_id, model, dimensions, embedding)"
            " VALUES ($1, $2, 'm', 384, $3)",
            message_id,
            conversation_id,
            b"\0" * 100,
        )

    assert raised.value.constraint_name == "valid_embedding_size"


async def test_invalid_chunk_emotion_is_rejected(connection: asyncpg.Connection) -> None:
    message_id = await new_message(connection, await new_conversation(connection), 1)

    with pytest.raises(asyncpg.CheckViolationError) as raised:
        await connection.execute(
            """
            INSERT INTO message_chunks (message_id, chunk_index, text, emotion)
            VALUES ($1, 0, 'Grr.', 'angry')
            """,
            message_id,
        )

    assert raised.value.constraint_name == "valid_emotion"


async def test_duplicate_chunk_index_is_rejected(connection: asyncpg.Connection) -> None:
    message_id = await new_message(connection, await new_conversation(connection), 1)
    insert_chunk = """
        INSERT INTO message_chunks (message_id, chunk_index, text, emotion)
        VALUES ($1, 0, 'Hi.', 'happy')
    """
    await connection.execute(insert_chunk, message_id)

    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await connection.execute(insert_chunk, message_id)

    assert raised.value.constraint_name == "unique_message_chunk"


@pytest.mark.parametrize(
    ("insert", "constraint"),
    [
        (
            """
            INSERT INTO messages (conversation_id, role, content, sequence_number)
            VALUES ($1, 'robot', 'hi', 1)
            """,
            "valid_role",
        ),
        (
            """
            INSERT INTO conversation_summaries
                (conversation_id, summary_text, message_range_start, message_range_end)
            VALUES ($1, 'summary', 10, 2)
            """,
            "valid_range",
        ),
        (
            """
            INSERT INTO conversation_key_facts (conversation_id, fact_type, fact_text, confidence)
            VALUES ($1, 'name', 'Ana', 1.5)
            """,
            "valid_confidence",
        ),
    ],
    ids=["invalid-role", "inverted-summary-range", "confidence-above-one"],
)
async def test_bad_conversation_row_is_rejected(
    connection: asyncpg.Connection, insert: str, constraint: str
) -> None:
    conversation_id = await new_conversation(connection)

    with pytest.raises(asyncpg.CheckViolationError) as raised:
        await connection.execute(insert, conversation_id)

    assert raised.value.constraint_name == constraint


async def test_duplicate_event_seq_is_rejected(connection: asyncpg.Connection) -> None:
    conversation_id = await new_conversation(connection)
    insert_event = """
        INSERT INTO conversation_events (conversation_id, seq, event_type, event_data)
        VALUES ($1, 1, 'message:received', '{}'::jsonb)
    """
    await connection.execute(insert_event, conversation_id)

    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await connection.execute(insert_event, conversation_id)

    assert raised.value.constraint_name == "unique_conversation_event_seq"


# -- running migrations again


async def test_second_upgrade_is_a_no_op(schema_dsn: str, connection: asyncpg.Connection) -> None:
    conversation_id = await new_conversation(connection)

    await asyncio.to_thread(upgrade_schema, schema_dsn)

    assert await current_revision(connection) == [HEAD_REVISION]
    assert await public_tables(connection) == TABLES
    assert (
        await connection.fetchval(
            "SELECT count(*) FROM conversations WHERE id = $1", conversation_id
        )
        == 1
    )


async def test_alembic_downgrade_then_upgrade(
    schema_dsn: str, connection: asyncpg.Connection
) -> None:
    down_code, down_output = await run_alembic(schema_dsn, "downgrade", "base")
    tables_after_down = await public_tables(connection)
    revision_after_down = await current_revision(connection)
    up_code, up_output = await run_alembic(schema_dsn, "upgrade", "head")

    assert down_code == 0, down_output
    assert tables_after_down == set()
    assert revision_after_down == []
    assert up_code == 0, up_output
    assert await public_tables(connection) == TABLES
    assert await current_revision(connection) == [HEAD_REVISION]


# -- message sequence numbers


async def test_concurrent_inserts_get_consecutive_sequence(pool: asyncpg.Pool) -> None:
    user_id, _token = await create_user(pool, "ana")
    conversation = await create_conversation(pool, user_id, title="Ordering coffee")

    stored = await asyncio.gather(
        *(
            insert_message(pool, conversation["id"], "user", f"message {number}")
            for number in range(20)
        )
    )
    rows = await pool.fetch(
        "SELECT sequence_number FROM messages WHERE conversation_id = $1 ORDER BY 1",
        conversation["id"],
    )
    counter = await pool.fetchval(
        "SELECT last_message_seq FROM conversations WHERE id = $1", conversation["id"]
    )

    assert sorted(message.sequence_number for message in stored) == list(range(1, 21))
    assert [row["sequence_number"] for row in rows] == list(range(1, 21))
    assert counter == 20


async def test_token_finds_its_user(pool: asyncpg.Pool) -> None:
    user_id, token = await create_user(pool, "ben")
    second = await issue_token(pool, "ben")
    stored = await pool.fetch("SELECT token_sha256 FROM user_tokens WHERE user_id = $1", user_id)

    assert second is not None and second != token
    assert (await user_for_token(pool, token))["id"] == user_id
    assert (await user_for_token(pool, second))["id"] == user_id
    assert await user_for_token(pool, token + "x") is None
    assert {row["token_sha256"] for row in stored} == {token_digest(token), token_digest(second)}
    assert token not in {row["token_sha256"] for row in stored}, "only digests are stored"


async def test_duplicate_user_name_rejected(pool: asyncpg.Pool) -> None:
    await create_user(pool, "cleo")
    with pytest.raises(UserExistsError):
        await create_user(pool, "cleo")
    assert await issue_token(pool, "nobody") is None


async def test_builtin_templates_are_seeded(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch("SELECT name, level, initial_message FROM conversation_templates")

    assert len(rows) == 4
    assert {row["level"] for row in rows} == {"A1", "A2", "B2", "C1"}
    assert all(row["initial_message"] for row in rows)


async def test_insert_into_missing_conversation_raises(pool: asyncpg.Pool) -> None:
    with pytest.raises(LookupError, match="does not exist"):
        await insert_message(pool, uuid.uuid4(), "user", "hello")


async def test_crashed_reply_is_closed_at_start(pool: asyncpg.Pool) -> None:
    user_id, _token = await create_user(pool, "dana")
    conversation = await create_conversation(pool, user_id, title="Crash")
    message = await insert_message(
        pool, conversation["id"], "assistant", "", metadata={"status": "generating"}
    )
    for index, (text, status) in enumerate(
        [("Hello there.", "completed"), ("How are", "processing")]
    ):
        await insert_chunk(
            pool,
            uuid.uuid4(),
            message.id,
            index,
            text=text,
            emotion="happy",
            icon="🙂",
            pause_after_s=0.0,
            emphasis=False,
        )
        await pool.execute(
            "UPDATE message_chunks SET tts_status = $2 WHERE message_id = $1 AND chunk_index = $3",
            message.id,
            status,
            index,
        )

    recovered = await recover_interrupted_replies(pool)
    again = await recover_interrupted_replies(pool)
    row = await pool.fetchrow("SELECT content, metadata FROM messages WHERE id = $1", message.id)
    statuses = await pool.fetch(
        "SELECT tts_status FROM message_chunks WHERE message_id = $1 ORDER BY chunk_index",
        message.id,
    )

    assert recovered == 1
    assert again == 0
    assert row["metadata"]["status"] == "interrupted"
    assert row["content"] == "Hello there. How are"
    assert [s["tts_status"] for s in statuses] == ["completed", "pending"]
