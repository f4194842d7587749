"""Record how much of each spoken chunk the caller heard.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

A reply in a call can be cut by the caller speaking (barge-in). Each chunk then records
whether it was spoken in full, cut (with the offset in its audio and the words heard up to
it) or never spoken. Chunks of a reply that was never played in a call keep NULL.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = """
ALTER TABLE message_chunks
    ADD COLUMN playout_status VARCHAR(20),
    ADD COLUMN played_ms INTEGER,
    ADD COLUMN heard_text TEXT;
ALTER TABLE message_chunks
    ADD CONSTRAINT valid_playout_status
    CHECK (playout_status IN ('spoken', 'cut', 'unspoken'));
ALTER TABLE message_chunks
    ADD CONSTRAINT valid_played_ms CHECK (played_ms >= 0)
"""


def upgrade() -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute(
        "ALTER TABLE message_chunks DROP COLUMN IF EXISTS heard_text,"
        " DROP COLUMN IF EXISTS played_ms, DROP COLUMN IF EXISTS playout_status"
    )
