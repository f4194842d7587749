"""Recorded calls: one row per call, with its files and timeline, and a per-conversation switch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

A recording is written while its call runs (status 'recording'); the row gets its end,
duration, size and timeline when the call ends ('completed'), or at the next start when the
server died first ('interrupted'). File paths are relative to the data directory, so a data
directory can move. Deleting a conversation deletes its rows; the server deletes the files.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = """
ALTER TABLE conversations ADD COLUMN record_calls BOOLEAN NOT NULL DEFAULT TRUE;
CREATE TABLE recordings (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    call_id VARCHAR(32) NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'recording',
    started_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ended_at TIMESTAMP WITH TIME ZONE,
    duration_ms INTEGER,
    audio_path TEXT NOT NULL,
    journal_path TEXT NOT NULL,
    audio_format VARCHAR(20) NOT NULL DEFAULT 'ogg/opus',
    size_bytes BIGINT,
    timeline JSONB NOT NULL DEFAULT '[]'::jsonb,
    CONSTRAINT valid_recording_status CHECK (status IN ('recording', 'completed', 'interrupted')),
    CONSTRAINT valid_recording_duration CHECK (duration_ms >= 0),
    CONSTRAINT recording_ended CHECK ((status = 'recording') = (ended_at IS NULL))
);
CREATE INDEX idx_recordings_conversation ON recordings(conversation_id, started_at DESC);
CREATE INDEX idx_recordings_active ON recordings(status) WHERE status = 'recording'
"""


def upgrade() -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS recordings")
    op.execute("ALTER TABLE conversations DROP COLUMN IF EXISTS record_calls")
