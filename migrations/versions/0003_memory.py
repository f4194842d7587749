"""Add what conversation memory needs: message embeddings and guards on summaries and facts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Summaries form a chain per conversation: each covers the messages after the previous one's
range, so a unique start per conversation makes a repeated summary (after a restart, say)
fail instead of covering a range twice. Key facts are unique per type and text, so the
same fact extracted again raises its confidence instead of adding a row.

Embeddings are stored as raw float32 bytes: no server here has pgvector, and the server
compares them in numpy.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = """
ALTER TABLE conversation_summaries
    ADD COLUMN facts_extracted_at TIMESTAMP WITH TIME ZONE;
ALTER TABLE conversation_summaries
    ADD CONSTRAINT unique_summary_start UNIQUE (conversation_id, message_range_start);
CREATE UNIQUE INDEX unique_key_fact
    ON conversation_key_facts(conversation_id, fact_type, lower(fact_text));
CREATE TABLE message_embeddings (
    message_id UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    model VARCHAR(100) NOT NULL,
    dimensions INTEGER NOT NULL,
    embedding BYTEA NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (message_id, model),
    CONSTRAINT valid_embedding_size CHECK (octet_length(embedding) = dimensions * 4)
);
CREATE INDEX idx_message_embeddings_conversation
    ON message_embeddings(conversation_id, model)
"""


def upgrade() -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS message_embeddings")
    op.execute("DROP INDEX IF EXISTS unique_key_fact")
    op.execute("ALTER TABLE conversation_summaries DROP CONSTRAINT IF EXISTS unique_summary_start")
    op.execute("ALTER TABLE conversation_summaries DROP COLUMN IF EXISTS facts_extracted_at")
