"""Add bearer tokens per user, indexes for audio ownership, and starter templates.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Tokens are stored as SHA-256 digests: a token is 32 random bytes, so a plain digest is as
hard to reverse as the token is to guess, and the server never keeps the token itself.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE user_tokens (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_sha256 CHAR(64) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT unique_token_sha256 UNIQUE (token_sha256)
);
CREATE INDEX idx_user_tokens_user_id ON user_tokens(user_id);
CREATE INDEX idx_messages_audio_file_id ON messages(audio_file_id);
CREATE INDEX idx_message_chunks_audio_file_id ON message_chunks(audio_file_id);
CREATE INDEX idx_conversations_user_updated ON conversations(user_id, updated_at DESC)
"""

# (name, level, description, scenario prompt, the tutor's opening line)
TEMPLATES = (
    (
        "At the café",
        "A1",
        "Order a drink and a snack.",
        "Role-play: you are a friendly waiter in a café and the learner is a customer "
        "ordering a drink and something to eat.",
        "Hello! Welcome to the café. What would you like to drink?",
    ),
    (
        "Travel plans",
        "A2",
        "Talk about a trip you want to take.",
        "Talk with the learner about a trip they would like to take: where, when, with "
        "whom, and what they want to see.",
        "Hi! Are you planning a trip this year? Where would you like to go?",
    ),
    (
        "Job interview",
        "B2",
        "Practise answering interview questions.",
        "Role-play: you interview the learner for a job they choose. Ask one question at a "
        "time and react to their answers.",
        "Good morning, thanks for coming in. Which job are you applying for today?",
    ),
    (
        "Debate",
        "C1",
        "Argue for or against a statement.",
        "Hold a friendly debate: take the opposite side of whatever the learner argues and "
        "push them to justify their points.",
        "Let's debate. Is working from home better than working in an office? Pick a side.",
    ),
)


def upgrade() -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)
    for name, level, description, prompt, opening in TEMPLATES:
        op.execute(
            "INSERT INTO conversation_templates"
            " (name, level, description, system_prompt, initial_message, metadata)"
            f" VALUES ({_quote(name)}, {_quote(level)}, {_quote(description)},"
            f" {_quote(prompt)}, {_quote(opening)}, '{{\"builtIn\": true}}')"
        )


def downgrade() -> None:
    op.execute("DELETE FROM conversation_templates WHERE metadata->>'builtIn' = 'true'")
    op.execute("DROP INDEX IF EXISTS idx_conversations_user_updated")
    op.execute("DROP INDEX IF EXISTS idx_message_chunks_audio_file_id")
    op.execute("DROP INDEX IF EXISTS idx_messages_audio_file_id")
    op.execute("DROP TABLE IF EXISTS user_tokens")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
