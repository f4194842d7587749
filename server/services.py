"""The process-wide services every call and request shares."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from media.silero import SileroModel
from media.stt import SpeechToText
from media.stt import default_model_path as default_stt_model
from media.tts import TextToSpeech, default_voice_path
from media.vad import SegmenterConfig
from server.event_bus import EventBus
from server.llm.base import ChatModel
from server.llm.selection import open_chat_model
from server.settings import Settings, SettingsError
from storage.audio_files import AudioFileStore
from storage.chunks import recover_interrupted_replies
from storage.database import Database, open_database
from storage.recording_files import RecordingFiles

if TYPE_CHECKING:
    from server.call_session import CallSession
    from server.conversation_service import ConversationService
    from server.memory.manager import MemoryManager
    from server.messaging import MessageService

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    database: Database
    audio_files: AudioFileStore
    recording_files: RecordingFiles
    stt: SpeechToText
    tts: TextToSpeech
    llm: ChatModel
    bus: EventBus
    segmenter_config: SegmenterConfig
    speech_model: SileroModel
    sessions: dict[str, CallSession] = field(default_factory=dict)
    websockets: set[web.WebSocketResponse] = field(default_factory=set)
    # Set by open_services right after construction, because both take the services.
    conversations: ConversationService = field(init=False)
    messages: MessageService = field(init=False)
    memory: MemoryManager = field(init=False)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.database.pool

    def call_for(self, conversation_id: uuid.UUID) -> CallSession | None:
        """Return the call on the conversation, if one is running."""
        for session in self.sessions.values():
            if session.conversation_id == conversation_id:
                return session
        return None

    async def end_calls(self, conversation_id: uuid.UUID, reason: str) -> None:
        sessions = [s for s in self.sessions.values() if s.conversation_id == conversation_id]
        for session in sessions:
            await session.close(reason)

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close("server shutting down")
        await self.messages.close()
        await self.memory.close()
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
        recovered = await recover_interrupted_replies(database.pool)
        if recovered:
            logger.info(
                "marked %d replies left generating by the last run as interrupted", recovered
            )
        _, _, speech_model, llm = await asyncio.gather(
            stt.open(),
            tts.open(),
            asyncio.to_thread(SileroModel.shared),
            open_chat_model(settings),
        )
    except BaseException:
        stt.close()
        tts.close()
        await database.close()
        raise
    services = Services(
        settings=settings,
        database=database,
        audio_files=AudioFileStore(settings.audio_dir),
        recording_files=RecordingFiles(settings.recordings_dir),
        stt=stt,
        tts=tts,
        llm=llm,
        bus=EventBus(database.pool),
        segmenter_config=segmenter_config,
        speech_model=speech_model,
    )
    # Imported here: both modules import this one.
    from server.conversation_service import ConversationService
    from server.memory.setup import open_memory
    from server.messaging import MessageService
    from server.recordings import recover_recordings

    try:
        services.memory = await open_memory(settings, llm, database.pool, services.bus)
    except BaseException:
        await llm.close()
        stt.close()
        tts.close()
        await database.close()
        raise
    services.conversations = ConversationService(services)
    services.messages = MessageService(services)
    await recover_recordings(services)
    services.memory.start()
    return services


def segmenter_config_from(settings: Settings) -> SegmenterConfig:
    try:
        return _segmenter_config(settings)
    except ValueError as exc:
        raise SettingsError(
            f"PARLEY_VAD_* or PARLEY_BARGE_IN_* settings are invalid: {exc}"
        ) from exc


def _segmenter_config(settings: Settings) -> SegmenterConfig:
    return SegmenterConfig(
        aggressiveness=settings.vad_aggressiveness,
        frame_ms=settings.vad_frame_ms,
        onset_ms=settings.vad_onset_ms,
        preroll_ms=settings.vad_preroll_ms,
        end_silence_ms=settings.vad_end_silence_ms,
        quick_end_ms=settings.vad_quick_end_ms,
        pause_ms=settings.vad_pause_ms,
        min_utterance_ms=settings.vad_min_utterance_ms,
        max_utterance_s=settings.vad_max_utterance_s,
        quick_onset_ms=settings.barge_in_onset_ms,
        confirm_speech_ms=settings.barge_in_min_speech_ms,
        silero_threshold=settings.vad_silero_threshold,
        silero_noise_threshold=settings.vad_silero_noise_threshold,
    )
