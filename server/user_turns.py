"""Storing the caller's speech: the utterance audio, its transcript and the event."""

from __future__ import annotations

import uuid
from typing import Any

from media.vad import VAD_RATE_HZ, Utterance
from server.json_views import voice_message_json
from server.services import Services
from storage.conversations import StoredMessage, insert_message


async def store_user_turn(
    services: Services,
    conversation_id: uuid.UUID,
    utterance: Utterance,
    transcript: str,
    *,
    answered: bool = True,
) -> StoredMessage:
    """Save the utterance's audio, store the user message and send message:received.

    answered=False marks speech that reached the server as the call ended, stored so that
    none of the learner's speech is lost, though no reply follows.
    """
    file_id, duration_s = await services.audio_files.save(utterance.samples, VAD_RATE_HZ)
    metadata: dict[str, Any] = {"inputMethod": "voice", "truncated": utterance.truncated}
    if not answered:
        metadata["unanswered"] = True
    message = await insert_message(
        services.pool,
        conversation_id,
        "user",
        transcript,
        stt_transcript=transcript,
        audio_file_id=file_id,
        audio_duration_s=duration_s,
        metadata=metadata,
    )
    await services.bus.publish(
        conversation_id,
        "message:received",
        voice_message_json(message, file_id, duration_s, metadata),
    )
    return message
