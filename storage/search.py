"""Full-text search over a user's message contents and conversation titles."""

from __future__ import annotations

import uuid

import asyncpg

# Matches are marked with <mark> in snippets; the rest of the text is returned as stored,
# so a client must escape the snippet as HTML apart from those marks.
HEADLINE_OPTIONS = "StartSel=<mark>, StopSel=</mark>, MaxWords=20, MinWords=8, MaxFragments=2"


async def search(
    pool: asyncpg.Pool, user_id: uuid.UUID, query: str, *, limit: int
) -> list[asyncpg.Record]:
    """Return the best matches, highest rank first: messages, and conversations by title.

    The expressions match the GIN indexes on messages.content and conversations.title, so
    PostgreSQL can use them. websearch_to_tsquery accepts any user input without a syntax
    error ("quoted phrases", or, -excluded).
    """
    rows = await pool.fetch(
        f"""
        WITH query AS (SELECT websearch_to_tsquery('english', $2) AS q)
        SELECT * FROM (
            SELECT 'message' AS kind, conversations.id AS conversation_id,
                   conversations.title AS conversation_title, messages.id AS message_id,
                   messages.sequence_number, messages.role, messages.created_at,
                   ts_rank(to_tsvector('english', messages.content), query.q) AS rank,
                   ts_headline('english', messages.content, query.q,
                               '{HEADLINE_OPTIONS}') AS snippet
            FROM messages
            JOIN conversations ON conversations.id = messages.conversation_id, query
            WHERE conversations.user_id = $1
              AND to_tsvector('english', messages.content) @@ query.q
            UNION ALL
            SELECT 'conversation', conversations.id, conversations.title, NULL, NULL, NULL,
                   conversations.created_at,
                   ts_rank(to_tsvector('english', coalesce(conversations.title, '')), query.q),
                   ts_headline('english', coalesce(conversations.title, ''), query.q,
                               '{HEADLINE_OPTIONS}')
            FROM conversations, query
            WHERE conversations.user_id = $1
              AND to_tsvector('english', coalesce(conversations.title, '')) @@ query.q
        ) matches
        ORDER BY rank DESC, created_at DESC LIMIT $3
        """,
        user_id,
        query,
        limit,
    )
    return list(rows)
