"""Create the whole schema of the conversation design.

Revision ID: 0001
Revises:
Create Date: 2026-12-04

Beyond the design's tables, `users` is defined here (the design references it without
defining it), and two counters on `conversations` hand out gap-free sequence numbers:
`last_message_seq` for messages and `last_event_seq` for the event log, whose rows carry
that `seq` so a reconnecting client can ask for what it missed.
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LEVELS = "('A1', 'A2', 'B1', 'B2', 'C1', 'C2')"

SCHEMA = f"""
CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(100) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT unique_user_name UNIQUE (name)
);

CREATE TABLE conversations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title VARCHAR(255),
    level VARCHAR(10) NOT NULL DEFAULT 'A1',
    status VARCHAR(20) NOT NULL DEFAULT 'active',
    metadata JSONB,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    last_message_at TIMESTAMP WITH TIME ZONE,
    memory_strategy VARCHAR(20) DEFAULT 'sliding',
    max_context_messages INTEGER DEFAULT 20,
    max_context_tokens INTEGER DEFAULT 4000,
    auto_summarize BOOLEAN DEFAULT false,
    summarize_threshold INTEGER DEFAULT 50,
    ai_settings JSONB DEFAULT '{{}}'::jsonb,
    exported_at TIMESTAMP WITH TIME ZONE,
    export_format VARCHAR(20),
    last_message_seq INTEGER NOT NULL DEFAULT 0,
    last_event_seq BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT valid_level CHECK (level IN {LEVELS}),
    CONSTRAINT valid_status CHECK (status IN ('active', 'paused', 'completed', 'archived')),
    CONSTRAINT valid_memory_strategy
        CHECK (memory_strategy IN ('sliding', 'summarization', 'hierarchical', 'semantic')),
    CONSTRAINT valid_export_format CHECK (export_format IN ('json', 'pdf', 'txt'))
);
CREATE INDEX idx_conversations_user_id ON conversations(user_id);
CREATE INDEX idx_conversations_status ON conversations(status);
CREATE INDEX idx_conversations_updated_at ON conversations(updated_at DESC);
CREATE INDEX idx_conversations_title_search
    ON conversations USING gin(to_tsvector('english', coalesce(title, '')));

CREATE TABLE messages (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role VARCHAR(20) NOT NULL,
    content TEXT NOT NULL,
    sequence_number INTEGER NOT NULL,
    metadata JSONB,
    audio_file_id VARCHAR(255),
    audio_duration DECIMAL(10, 3),
    stt_transcript TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT valid_role CHECK (role IN ('user', 'assistant', 'system')),
    CONSTRAINT unique_conversation_sequence UNIQUE (conversation_id, sequence_number)
);
CREATE INDEX idx_messages_conversation_id ON messages(conversation_id);
CREATE INDEX idx_messages_sequence ON messages(conversation_id, sequence_number);
CREATE INDEX idx_messages_created_at ON messages(created_at DESC);
CREATE INDEX idx_messages_content_search ON messages USING gin(to_tsvector('english', content));

CREATE TABLE message_chunks (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    message_id UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    chunk_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    emotion VARCHAR(50),
    icon VARCHAR(10),
    pause_after DECIMAL(5, 2),
    emphasis BOOLEAN DEFAULT false,
    audio_file_id VARCHAR(255),
    audio_duration DECIMAL(10, 3),
    tts_status VARCHAR(20) DEFAULT 'pending',
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT valid_emotion CHECK (emotion IN
        ('happy', 'encouraging', 'neutral', 'excited', 'calm', 'curious', 'supportive')),
    CONSTRAINT valid_tts_status
        CHECK (tts_status IN ('pending', 'processing', 'completed', 'failed')),
    CONSTRAINT unique_message_chunk UNIQUE (message_id, chunk_index)
);
CREATE INDEX idx_message_chunks_message_id ON message_chunks(message_id);
CREATE INDEX idx_message_chunks_tts_status ON message_chunks(tts_status);

CREATE TABLE conversation_events (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    event_type VARCHAR(50) NOT NULL,
    event_data JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT unique_conversation_event_seq UNIQUE (conversation_id, seq)
);
CREATE INDEX idx_conversation_events_conversation_id ON conversation_events(conversation_id);
CREATE INDEX idx_conversation_events_type ON conversation_events(event_type);
CREATE INDEX idx_conversation_events_created_at ON conversation_events(created_at DESC);

CREATE TABLE conversation_summaries (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    summary_text TEXT NOT NULL,
    message_range_start INTEGER NOT NULL,
    message_range_end INTEGER NOT NULL,
    token_count INTEGER,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT valid_range CHECK (message_range_start <= message_range_end)
);
CREATE INDEX idx_conversation_summaries_conversation_id
    ON conversation_summaries(conversation_id);

CREATE TABLE conversation_key_facts (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    fact_type VARCHAR(50) NOT NULL,
    fact_text TEXT NOT NULL,
    confidence DECIMAL(3, 2) DEFAULT 0.5,
    extracted_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT valid_confidence CHECK (confidence >= 0.0 AND confidence <= 1.0)
);
CREATE INDEX idx_conversation_key_facts_conversation_id
    ON conversation_key_facts(conversation_id);
CREATE INDEX idx_conversation_key_facts_type ON conversation_key_facts(fact_type);

CREATE TABLE conversation_templates (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    description TEXT,
    level VARCHAR(10) NOT NULL,
    system_prompt TEXT NOT NULL,
    initial_message TEXT,
    metadata JSONB,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT valid_level CHECK (level IN {LEVELS})
);
CREATE INDEX idx_conversation_templates_level ON conversation_templates(level);

CREATE TABLE conversation_analytics (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    metric_name VARCHAR(100) NOT NULL,
    metric_value DECIMAL(10, 2) NOT NULL,
    metric_unit VARCHAR(20),
    recorded_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT unique_conversation_metric UNIQUE (conversation_id, metric_name, recorded_at)
);
CREATE INDEX idx_conversation_analytics_conversation_id
    ON conversation_analytics(conversation_id);
CREATE INDEX idx_conversation_analytics_metric_name ON conversation_analytics(metric_name);

CREATE TABLE conversation_tags (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    tag VARCHAR(100) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT unique_conversation_tag UNIQUE (conversation_id, tag)
);
CREATE INDEX idx_conversation_tags_conversation_id ON conversation_tags(conversation_id);
CREATE INDEX idx_conversation_tags_tag ON conversation_tags(tag);

CREATE TABLE conversation_branches (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    parent_conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    branch_conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    branch_point_message_id UUID NOT NULL REFERENCES messages(id),
    branch_reason TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT unique_branch UNIQUE (parent_conversation_id, branch_conversation_id)
);
CREATE INDEX idx_conversation_branches_parent ON conversation_branches(parent_conversation_id);
CREATE INDEX idx_conversation_branches_branch ON conversation_branches(branch_conversation_id);

CREATE TABLE message_reactions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    message_id UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    reaction_type VARCHAR(20) NOT NULL,
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    feedback_text TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT valid_reaction CHECK (reaction_type IN
        ('helpful', 'confusing', 'incorrect', 'too_easy', 'too_hard', 'perfect'))
);
CREATE INDEX idx_message_reactions_message_id ON message_reactions(message_id);
CREATE INDEX idx_message_reactions_user_id ON message_reactions(user_id);
"""

TABLES = (
    "message_reactions",
    "conversation_branches",
    "conversation_tags",
    "conversation_analytics",
    "conversation_templates",
    "conversation_key_facts",
    "conversation_summaries",
    "conversation_events",
    "message_chunks",
    "messages",
    "conversations",
    "users",
)


def upgrade() -> None:
    # gen_random_uuid() is built into PostgreSQL 13 and later, so no extension is needed.
    # One statement per call: the asyncpg dialect prepares each statement, and a prepared
    # statement cannot hold several commands.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TABLE IF EXISTS {table}")
