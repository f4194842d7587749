"""The JSON shapes of stored rows, shared by events and REST responses (camelCase keys)."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg

from media.recording import CHANNELS as RECORDING_CHANNELS
from media.recording import RATE_HZ as RECORDING_RATE_HZ

if TYPE_CHECKING:
    from server.chunking import ReplyChunk
    from storage.conversations import StoredMessage
    from storage.memory import KeyFact, Summary


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _number(value: decimal.Decimal | float | None) -> float | None:
    return float(value) if value is not None else None


def conversation_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "conversationId": str(row["id"]),
        "title": row["title"],
        "level": row["level"],
        "status": row["status"],
        "metadata": row["metadata"] or {},
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
        "lastMessageAt": _iso(row["last_message_at"]),
        "messageCount": row["last_message_seq"],
        "lastSeq": row["last_event_seq"],
        "settings": {
            "memoryStrategy": row["memory_strategy"],
            "maxContextMessages": row["max_context_messages"],
            "maxContextTokens": row["max_context_tokens"],
            "autoSummarize": row["auto_summarize"],
            "summarizeThreshold": row["summarize_threshold"],
            "aiSettings": row["ai_settings"] or {},
            "recordCalls": row["record_calls"],
        },
    }


def message_json(row: asyncpg.Record) -> dict[str, Any]:
    file_id = row["audio_file_id"]
    chunks = []
    for chunk in row["chunks"]:
        chunk_file = chunk["audioFileId"]
        chunks.append(
            {
                **chunk,
                "pause": _number(chunk["pause"]),
                "audioDuration": _number(chunk["audioDuration"]),
                "audioUrl": f"/api/audio/{chunk_file}" if chunk_file else None,
            }
        )
    return {
        "messageId": str(row["id"]),
        "role": row["role"],
        "content": row["content"],
        "sequenceNumber": row["sequence_number"],
        "metadata": row["metadata"] or {},
        "audioFileId": file_id,
        "audioUrl": f"/api/audio/{file_id}" if file_id else None,
        "audioDuration": _number(row["audio_duration"]),
        "sttTranscript": row["stt_transcript"],
        "createdAt": _iso(row["created_at"]),
        "chunks": chunks,
    }


def template_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "templateId": str(row["id"]),
        "name": row["name"],
        "description": row["description"],
        "level": row["level"],
        "initialMessage": row["initial_message"],
    }


def search_result_json(row: asyncpg.Record) -> dict[str, Any]:
    message_id = row["message_id"]
    return {
        "kind": row["kind"],
        "conversationId": str(row["conversation_id"]),
        "conversationTitle": row["conversation_title"],
        "messageId": str(message_id) if message_id is not None else None,
        "sequenceNumber": row["sequence_number"],
        "role": row["role"],
        "snippet": row["snippet"],
        "rank": round(float(row["rank"]), 6),
        "createdAt": _iso(row["created_at"]),
    }


def chunk_audio_json(
    chunk_id: uuid.UUID, message_id: uuid.UUID, file_id: str, duration_s: Any
) -> dict[str, Any]:
    """Build the data of chunk:audio-ready."""
    return {
        "chunkId": str(chunk_id),
        "messageId": str(message_id),
        "audioFileId": file_id,
        "audioUrl": f"/api/audio/{file_id}",
        "duration": round(float(duration_s), 3),
    }


def chunk_json(
    chunk: ReplyChunk,
    chunk_id: uuid.UUID,
    *,
    tts_status: str = "pending",
    audio_file_id: str | None = None,
    audio_duration_s: float | None = None,
) -> dict[str, Any]:
    """Build a chunk as a reply's message:received lists it. chunk:generated sends the
    same fields without the audio ones."""
    return {
        "chunkId": str(chunk_id),
        "chunkIndex": chunk.index,
        "text": chunk.text,
        "emotion": chunk.emotion,
        "icon": chunk.icon,
        "pause": chunk.pause_after_s,
        "emphasis": chunk.emphasis,
        "ttsStatus": tts_status,
        "audioFileId": audio_file_id,
        "audioUrl": f"/api/audio/{audio_file_id}" if audio_file_id else None,
        "audioDuration": audio_duration_s,
    }


def voice_message_json(
    message: StoredMessage, file_id: str, duration_s: float, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Build the data of message:received for the learner's speech, with its audio."""
    return {
        "messageId": str(message.id),
        "role": "user",
        "content": message.content,
        "sequenceNumber": message.sequence_number,
        "audioFileId": file_id,
        "audioUrl": f"/api/audio/{file_id}",
        "audioDuration": round(duration_s, 3),
        "metadata": metadata,
    }


def summary_json(summary: Summary) -> dict[str, Any]:
    return {
        "summaryId": str(summary.id),
        "messageRange": {"start": summary.start, "end": summary.end},
        "tokenCount": summary.token_count,
        "summary": summary.text,
        "createdAt": _iso(summary.created_at),
        "factsExtracted": summary.facts_extracted,
    }


def key_fact_json(fact: KeyFact) -> dict[str, Any]:
    return {
        "id": str(fact.id),
        "type": fact.fact_type,
        "text": fact.text,
        "confidence": fact.confidence,
        "extractedAt": _iso(fact.extracted_at),
    }


def recording_json(
    row: asyncpg.Record, timeline: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Return a recording as clients see it, with the timeline given or else the row's own
    timeline, when the row has one."""
    recording_id = str(row["id"])
    body: dict[str, Any] = {
        "id": recording_id,
        "conversationId": str(row["conversation_id"]),
        "callId": row["call_id"],
        "status": row["status"],
        "startedAt": _iso(row["started_at"]),
        "endedAt": _iso(row["ended_at"]),
        "durationMs": row["duration_ms"],
        "audio": {
            "url": f"/api/recordings/{recording_id}/audio",
            "format": row["audio_format"],
            "sampleRateHz": RECORDING_RATE_HZ,
            "channels": list(RECORDING_CHANNELS),
            "sizeBytes": row["size_bytes"],
        },
    }
    if timeline is None:
        timeline = row.get("timeline")
    if timeline is not None:
        body["timeline"] = timeline
    return body
