"""The process-wide services every call and request shares."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from media.stt import SpeechToText
from media.stt import default_model_path as default_stt_model
from media.tts import TextToSpeech, default_voice_path
from media.vad import SegmenterConfig
from server.event_bus import EventBus
from server.llm.base import ChatModel
from server.llm.selection import open_chat_model
from server.settings import Settings, SettingsError
from storage.audio_files import AudioFileStore
from storage.conversations import ensure_user
from storage.database import Database, open_database

if TYPE_CHECKING:
    from server.call_session import CallSession

logger = logging.getLogger(__name__)

# Until users and tokens exist, calls belong to this one local user.
LOCAL_USER_NAME = "local"


@dataclass
class Services:
    settings: Settings
    database: Database
    audio_files: AudioFileStore
    stt: SpeechToText
    tts: TextToSpeech
    llm: ChatModel
    bus: EventBus
    local_user_id: uuid.UUID
    segmenter_config: SegmenterConfig
    sessions: dict[str, CallSession] = field(default_factory=dict)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.database.pool

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close("server shutting down")
        await self.llm.close()
        self.stt.close()
        self.tts.close()
        await self.database.close()


async def open_services(settings: Settings) -> Services:
    """Open the database, then load the three models side by side."""
    # Built first, so invalid VAD settings stop the start-up instead of every call.
    segmenter_config = segmenter_config_from(settings)
    settings.audio_dir.mkdir(parents=True, exist_ok=True)
    database = await open_database(
        settings.database_url, settings.postgres_dir, pool_max_size=settings.db_pool_max_size
    )
    stt = SpeechToText(
        settings.stt_model or default_stt_model(),
        compute_type=settings.stt_compute_type,
        threads=settings.stt_threads,
        language=settings.stt_language,
        beam_size=settings.stt_beam_size,
    )
    tts = TextToSpeech(
        settings.tts_voice or default_voice_path(), length_scale=settings.tts_length_scale
    )
    try:
        _, _, llm = await asyncio.gather(
            asyncio.to_thread(stt.load), asyncio.to_thread(tts.load), open_chat_model(settings)
        )
        local_user_id = await ensure_user(database.pool, LOCAL_USER_NAME)
    except BaseException:
        stt.close()
        tts.close()
        await database.close()
        raise
    return Services(
        settings=settings,
        database=database,
        audio_files=AudioFileStore(settings.audio_dir),
        stt=stt,
        tts=tts,
        llm=llm,
        bus=EventBus(database.pool),
        local_user_id=local_user_id,
        segmenter_config=segmenter_config,
    )


def segmenter_config_from(settings: Settings) -> SegmenterConfig:
    try:
        return _segmenter_config(settings)
    except ValueError as exc:
        raise SettingsError(f"PARLEY_VAD_* settings are invalid: {exc}") from exc


def _segmenter_config(settings: Settings) -> SegmenterConfig:
    return SegmenterConfig(
        aggressiveness=settings.vad_aggressiveness,
        frame_ms=settings.vad_frame_ms,
        onset_ms=settings.vad_onset_ms,
        preroll_ms=settings.vad_preroll_ms,
        end_silence_ms=settings.vad_end_silence_ms,
        pause_ms=settings.vad_pause_ms,
        min_utterance_ms=settings.vad_min_utterance_ms,
        max_utterance_s=settings.vad_max_utterance_s,
    )
