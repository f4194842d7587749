"""One assistant reply: stream the model, cut chunks, store them, speak them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from media.frames import WEBRTC_RATE_HZ, resample_samples
from media.tracks import QueuedSpeech, ReplyAudioTrack
from media.tts import Speech, SynthesisError
from server import metrics
from server.chunking import ReplyChunk, ReplyChunker
from server.json_views import chunk_audio_json, chunk_json
from server.llm.base import ChatMessage, GenerationOptions, LLMUnavailableError, PromptUsage
from server.memory.context import AssembledContext
from server.playout import ChunkPlayout, heard_content, playout_of
from storage.chunks import (
    insert_chunk_with_event,
    reset_unfinished_chunks,
    set_playout,
    set_tts_status,
)
from storage.conversations import StoredMessage, finish_message_with_event, insert_message

if TYPE_CHECKING:
    import asyncpg

    from server.services import Services

logger = logging.getLogger(__name__)

SENTENCE_ENDINGS = (".", "!", "?", "…")


@dataclass
class TurnClock:
    """Monotonic timestamps of one turn's stages, reported in milliseconds."""

    marks: dict[str, float] = field(default_factory=dict)
    # Where the turn came from: "call" (speech in a call), "voice" (a voice message) or
    # "text". Text turns have no speech, so their end-of-turn and STT stages are near 0.
    source: str = "call"
    # Facts about the turn sent with its turn:metrics event, such as how its end was found.
    details: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, time.monotonic() if at is None else at)

    def span_ms(self, start: str, end: str) -> float | None:
        if start not in self.marks or end not in self.marks:
            return None
        return round((self.marks[end] - self.marks[start]) * 1000, 1)

    def report(self) -> dict[str, float | None]:
        return {
            "endOfTurnWait": self.span_ms("speech_end", "turn_detected"),
            "stt": self.span_ms("turn_detected", "stt_done"),
            "llmFirstToken": self.span_ms("llm_start", "llm_first_token"),
            "firstChunkReady": self.span_ms("llm_start", "first_chunk_ready"),
            "ttsFirstAudio": self.span_ms("first_chunk_ready", "tts_first_audio"),
            "firstAudioSent": self.span_ms("speech_end", "first_audio_sent"),
        }


@dataclass
class ChunkState:
    chunk: ReplyChunk
    chunk_id: uuid.UUID = field(default_factory=uuid.uuid4)
    status: str = "pending"
    audio_file_id: str | None = None
    audio_duration_s: float | None = None
    # Set once the chunk's row exists and chunk:generated is sent. Synthesis starts earlier.
    stored: asyncio.Event = field(default_factory=asyncio.Event)
    # The audio queued on a call's track, which counts what of it was played.
    speech: QueuedSpeech | None = None


class ReplyPipeline:
    def __init__(
        self,
        services: Services,
        conversation: asyncpg.Record,
        *,
        track: ReplyAudioTrack | None,
        clock: TurnClock,
        speak: bool = True,
        task_name: str = "reply",
    ) -> None:
        self._services = services
        self._conversation = conversation
        self._conversation_id: uuid.UUID = conversation["id"]
        self._level: str = conversation["level"]
        self._ai_settings: dict[str, Any] = conversation["ai_settings"] or {}
        self._track = track
        # A reply in a call is always spoken; in text chat the client may skip the audio.
        self._with_audio = speak or track is not None
        self._clock = clock
        self._task_name = task_name
        llm_name = services.llm.name
        chosen = self._ai_settings.get("model")
        # The stored model name says which model replied: ai_settings.model when Ollama
        # serves it, since the embedded backend ignores that setting.
        self._model_name = (
            f"ollama:{chosen}" if chosen and llm_name.startswith("ollama:") else llm_name
        )
        self._message: StoredMessage | None = None
        self._context: AssembledContext | None = None
        self._usage = PromptUsage()
        self._chunks: list[ChunkState] = []
        # Bounded: the model waits when synthesis falls more than eight chunks behind.
        self._tts_queue: asyncio.Queue[ChunkState | None] = asyncio.Queue(maxsize=8)
        self._first_audio_sent = asyncio.Event()
        # Set once the first chunk's synthesis has ended, whether it succeeded or not.
        self._first_synthesised = asyncio.Event()
        if not self._with_audio:
            self._first_synthesised.set()
        # Set when the track is interrupted (the caller spoke over the reply), with why.
        self._interrupted = asyncio.Event()
        self._interrupt_reason = ""
        # Set whenever a chunk's speech finishes playing.
        self._playout_progress = asyncio.Event()

    async def run(self) -> None:
        """Generate and speak the reply to the newest messages of the conversation, from
        the context its memory strategy assembles."""
        try:
            context = await self._services.memory.context_for(self._conversation)
        except Exception as exc:
            logger.exception(
                "conversation %s: assembling the context failed", self._conversation_id
            )
            await self._services.bus.publish_error(
                self._conversation_id, "internal", f"the reply's context could not be built: {exc}"
            )
            return
        self._context = context
        # Sent beside the generation, so its database write never delays the first token.
        announce = asyncio.create_task(
            self._services.bus.publish(
                self._conversation_id, "memory:context-updated", context.event_data()
            ),
            name=f"{self._task_name}-context",
        )
        try:
            await self._run(context.messages)
        finally:
            await asyncio.gather(announce, return_exceptions=True)

    async def _run(self, messages: list[ChatMessage]) -> None:
        remove_listener = (
            self._track.watch_interrupts(self._on_interrupt) if self._track is not None else None
        )
        work = asyncio.create_task(
            self._generate_and_speak(messages), name=f"{self._task_name}-work"
        )
        try:
            status = await self._unless_interrupted(work)
            if status == "completed" and self._track is not None:
                await self._wait_for_playout()
            if self._interrupted.is_set():
                status = "interrupted"
        except BaseException as exc:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            cancelled = isinstance(exc, asyncio.CancelledError)
            if cancelled:
                self._interrupt_reason = self._interrupt_reason or self._cancel_reason()
            await self._store_outcome("interrupted" if cancelled else "failed")
            raise
        finally:
            if remove_listener is not None:
                remove_listener()
        # Shielded: a call that ends interrupts the reply and then cancels its task, which
        # must not stop the store halfway and leave the message generating.
        await asyncio.shield(self._store_outcome(status))

    async def _generate_and_speak(self, messages: list[ChatMessage]) -> str:
        """Stream the model into chunks, synthesise them and return the reply's status."""
        # A reply without audio needs no speaker task: its chunks are never queued.
        speaker = (
            asyncio.create_task(self._speak_chunks(), name=f"{self._task_name}-tts")
            if self._with_audio
            else None
        )
        try:
            status = await self._generate(messages)
            if speaker is not None:
                await self._tts_queue.put(None)
                await speaker
        finally:
            if speaker is not None and not speaker.done():
                speaker.cancel()
                await asyncio.gather(speaker, return_exceptions=True)
        return status

    async def _unless_interrupted(self, work: asyncio.Task[str]) -> str:
        """Wait for work and return its status, or stop it and return "interrupted" when the
        track is interrupted first."""
        interrupted = asyncio.ensure_future(self._interrupted.wait())
        try:
            await asyncio.wait({work, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
        if work.done():
            return work.result()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        return "interrupted"

    async def _wait_for_playout(self) -> None:
        """Wait until the caller has heard the last chunk, so the stored message contains what
        was heard. Returns early on an interrupt or when the call's track ends."""
        queued = [state.speech for state in self._chunks if state.speech is not None]
        if not queued or self._track is None:
            return
        last = queued[-1]
        while not last.finished and not self._interrupted.is_set():
            if self._track.readyState != "live":
                self._interrupt_reason = "call-ended"
                self._interrupted.set()
                return
            self._playout_progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._playout_progress.wait(), 0.5)

    def _on_interrupt(self, reason: str) -> None:
        self._interrupt_reason = reason
        self._interrupted.set()

    def _cancel_reason(self) -> str:
        if self._track is not None and self._track.readyState != "live":
            return "call-ended"
        return "cancelled"

    async def _generate(self, messages: list[ChatMessage]) -> str:
        """Stream the model into chunks and return the reply's status."""
        settings = self._services.settings
        # min() lets a conversation's ai_settings lower the server's token cap, not raise it.
        # NOTE: ai_settings.model applies to Ollama only. The embedded backend runs the one
        # model it loaded.
        ai = self._ai_settings
        options = GenerationOptions(
            max_tokens=min(
                ai.get("max_tokens", settings.llm_max_reply_tokens), settings.llm_max_reply_tokens
            ),
            temperature=ai.get("temperature", settings.llm_temperature),
            top_p=ai.get("top_p"),
            frequency_penalty=ai.get("frequency_penalty"),
            presence_penalty=ai.get("presence_penalty"),
            model=ai.get("model"),
            context_tokens=settings.ollama_context_tokens,
            usage=self._usage,
        )
        chunker = ReplyChunker(first_chunk_words=settings.first_chunk_words)
        sentences = 0
        self._clock.mark("llm_start")
        stream = self._services.llm.stream_chat(messages, options)
        try:
            # aclosing: leaving the loop early closes the stream, which stops the model.
            async with contextlib.aclosing(stream):
                async for text in stream:
                    self._clock.mark("llm_first_token")
                    for chunk in chunker.feed(text):
                        await self._add_chunk(chunk)
                        sentences += chunk.text.endswith(SENTENCE_ENDINGS)
                    if self._chunks and not self._first_synthesised.is_set():
                        # On a shared CPU, the model generating ahead slows the synthesis
                        # of the first chunk, which the caller is waiting for.
                        await self._first_synthesised.wait()
                    if (
                        sentences >= settings.llm_max_reply_sentences
                        or len(self._chunks) >= settings.llm_max_reply_chunks
                    ):
                        break
                else:
                    for chunk in chunker.finish():
                        await self._add_chunk(chunk)
        except LLMUnavailableError as exc:
            await self._services.bus.publish_error(
                self._conversation_id, "llm_unavailable", str(exc), **self._message_ref()
            )
            return "failed"

        if not self._chunks:
            await self._services.bus.publish_error(
                self._conversation_id,
                "llm_unavailable",
                f"{self._services.llm.name} returned no text to speak",
            )
            return "failed"
        return "completed"

    async def _add_chunk(self, chunk: ReplyChunk) -> None:
        """Queue the chunk for synthesis, then store it and send chunk:generated while
        piper works, so the database never delays the first audio."""
        pool = self._services.pool
        self._clock.mark("first_chunk_ready")
        state = ChunkState(chunk)
        self._chunks.append(state)
        if self._with_audio:
            await self._tts_queue.put(state)

        if self._message is None:
            # The assistant message is created with its first chunk, so a model that fails
            # before saying anything leaves no empty message behind.
            self._message = await insert_message(
                pool, self._conversation_id, "assistant", "", metadata={"status": "generating"}
            )
        message_id = self._message.id

        async def store(data: dict[str, Any]) -> int:
            return await insert_chunk_with_event(
                pool,
                self._conversation_id,
                "chunk:generated",
                data,
                state.chunk_id,
                message_id,
                chunk.index,
                text=chunk.text,
                emotion=chunk.emotion,
                icon=chunk.icon,
                pause_after_s=chunk.pause_after_s,
                emphasis=chunk.emphasis,
            )

        await self._services.bus.publish(
            self._conversation_id,
            "chunk:generated",
            {**_without_audio(chunk_json(chunk, state.chunk_id)), "messageId": str(message_id)},
            store=store,
        )
        state.stored.set()

    async def _mark_processing(self, state: ChunkState) -> None:
        await state.stored.wait()
        await set_tts_status(self._services.pool, state.chunk_id, "processing")
        state.status = "processing"

    async def _play(self, state: ChunkState, speech: Speech) -> None:
        self._clock.mark("tts_first_audio")
        if self._track is None:
            return
        samples = await asyncio.to_thread(
            resample_samples, speech.samples, speech.sample_rate_hz, WEBRTC_RATE_HZ
        )
        pause_after_s = state.chunk.pause_after_s
        if self._interrupted.is_set():
            # Synthesis finished just after the interrupt: this audio must not play.
            return
        queued = QueuedSpeech(
            samples,
            pause_after_s,
            on_start=self._on_audio_start,
            on_end=lambda _at: self._playout_progress.set(),
            details=lambda: self._chunk_details(state),
        )
        state.speech = queued
        await self._track.enqueue(queued)

    async def _speak_chunks(self) -> None:
        try:
            while (state := await self._tts_queue.get()) is not None:
                await self._speak(state)
        finally:
            # Never leave the generator waiting on a speaker that has stopped.
            self._first_synthesised.set()

    async def _speak(self, state: ChunkState) -> None:
        """Synthesise a chunk and queue its audio, then store it. The chunk's status write
        runs beside synthesis, so queuing the audio waits for no database write."""
        services = self._services
        pool = services.pool
        synthesis = asyncio.ensure_future(services.tts.synthesize(state.chunk.text))
        marking = asyncio.ensure_future(self._mark_processing(state))
        try:
            try:
                speech = await synthesis
            finally:
                self._first_synthesised.set()
            await self._play(state, speech)
            await marking
        except SynthesisError as exc:
            await marking
            state.status = "failed"
            await set_tts_status(pool, state.chunk_id, "failed")
            await services.bus.publish_error(
                self._conversation_id,
                "tts_failed",
                str(exc),
                chunkId=str(state.chunk_id),
                **self._message_ref(),
            )
            return
        finally:
            # Both are pending here only when this task is cancelled mid-way.
            synthesis.cancel()
            marking.cancel()

        # Shielded: a reply cancelled while the file is written would leave it on disk with
        # no row naming it, which deleting the conversation could not find.
        file_id, duration_s = await asyncio.shield(self._store_audio(state.chunk_id, speech))
        state.status = "completed"
        state.audio_file_id = file_id
        state.audio_duration_s = round(duration_s, 3)
        # _mark_processing waited for the chunk's row, which is stored after its message.
        assert self._message is not None
        await services.bus.publish(
            self._conversation_id,
            "chunk:audio-ready",
            chunk_audio_json(state.chunk_id, self._message.id, file_id, duration_s),
        )

    async def _store_audio(self, chunk_id: uuid.UUID, speech: Speech) -> tuple[str, float]:
        """Write a chunk's audio file and name it in the chunk's row."""
        services = self._services
        file_id, duration_s = await services.audio_files.save(speech.samples, speech.sample_rate_hz)
        await set_tts_status(
            services.pool,
            chunk_id,
            "completed",
            audio_file_id=file_id,
            audio_duration_s=duration_s,
        )
        return file_id, duration_s

    def _chunk_details(self, state: ChunkState) -> dict[str, Any]:
        """Describe a chunk for a recording's timeline."""
        chunk = state.chunk
        return {
            "chunkId": str(state.chunk_id),
            "messageId": str(self._message.id) if self._message is not None else None,
            "index": chunk.index,
            "text": chunk.text,
            "emotion": chunk.emotion,
            "icon": chunk.icon,
        }

    def _on_audio_start(self, at: float) -> None:
        self._clock.mark("first_audio_sent", at)
        self._first_audio_sent.set()

    async def _store_outcome(self, status: str) -> None:
        """Store the reply's final content and status, then send it as message:received.

        A reply played in a call is stored as the caller heard it: its content is the words
        heard, and each chunk records whether it was spoken, cut or never spoken.
        """
        message = self._message
        if message is None:
            return
        pool = self._services.pool
        spoken = any(state.status == "completed" for state in self._chunks)
        if status != "interrupted" and spoken and self._track is not None:
            # The first chunk leaves within a frame or two, so a short wait gets its time.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_audio_sent.wait(), 1.0)
        if status == "interrupted":
            await reset_unfinished_chunks(pool, message.id)

        generated = " ".join(state.chunk.text for state in self._chunks)
        playouts = self._playouts()
        content = heard_content(playouts) if playouts is not None else generated
        metadata: dict[str, Any] = {
            "status": status,
            "model": self._model_name,
            "level": self._level,
            "timingsMs": self._clock.report(),
        }
        if content != generated:
            metadata["generatedContent"] = generated
        if self._context is not None:
            metadata["context"] = self._context_metadata(self._context)
        if playouts is not None:
            await set_playout(
                pool,
                [
                    (state.chunk_id, p.status, p.played_ms, p.heard_text)
                    for state, p in zip(self._chunks, playouts, strict=True)
                ],
            )
            if status == "interrupted":
                metadata["interruption"] = self._interruption(playouts)
                await self._services.bus.publish(
                    self._conversation_id,
                    "message:interrupted",
                    {"messageId": str(message.id), "content": content, **metadata["interruption"]},
                )
        metrics.observe_turn(status, self._clock.source, metadata["timingsMs"])

        async def store(data: dict[str, Any]) -> int:
            return await finish_message_with_event(
                pool,
                self._conversation_id,
                message.id,
                content,
                metadata,
                event_type="message:received",
                data=data,
            )

        chunks = [self._chunk_json(state) for state in self._chunks]
        for index, chunk in enumerate(chunks):
            chunk["playout"] = playouts[index].json() if playouts is not None else None
        await self._services.bus.publish(
            self._conversation_id,
            "message:received",
            {
                "messageId": str(message.id),
                "role": "assistant",
                "content": content,
                "sequenceNumber": message.sequence_number,
                "chunks": chunks,
                "metadata": metadata,
            },
            store=store,
        )
        await self._services.bus.publish(
            self._conversation_id,
            "turn:metrics",
            {
                "messageId": str(message.id),
                "source": self._clock.source,
                "status": status,
                "stagesMs": metadata["timingsMs"],
                **self._clock.details,
            },
        )
        logger.info(
            "conversation %s: reply %s %s with %d chunks",
            self._conversation_id,
            message.id,
            status,
            len(self._chunks),
        )

    def _playouts(self) -> list[ChunkPlayout] | None:
        """Return how each chunk was heard, or None for a reply that no call played."""
        if self._track is None:
            return None
        return [playout_of(state.chunk.text, state.speech) for state in self._chunks]

    def _interruption(self, playouts: list[ChunkPlayout]) -> dict[str, Any]:
        """Return where the reply stopped: the chunk cut (or the first one never spoken) and
        the offset into its audio."""
        reason = self._interrupt_reason or "cancelled"
        stop = next((i for i, p in enumerate(playouts) if p.status != "spoken"), len(playouts) - 1)
        heard_ms = sum(p.played_ms for p in playouts)
        return {
            "reason": reason,
            "chunkId": str(self._chunks[stop].chunk_id),
            "chunkIndex": stop,
            "offsetMs": playouts[stop].played_ms,
            "heardMs": heard_ms,
        }

    def _context_metadata(self, context: AssembledContext) -> dict[str, Any]:
        """Return what the reply was generated from, with the prompt tokens the backend
        reported beside the server's own count. They differ where the count is an estimate."""
        reported = self._usage.prompt_tokens
        self._services.memory.observe_prompt(context.token_count, reported)
        return {**context.event_data(), "reportedPromptTokens": reported}

    def _chunk_json(self, state: ChunkState) -> dict[str, Any]:
        return chunk_json(
            state.chunk,
            state.chunk_id,
            tts_status="pending" if state.status == "processing" else state.status,
            audio_file_id=state.audio_file_id,
            audio_duration_s=state.audio_duration_s,
        )

    def _message_ref(self) -> dict[str, str]:
        return {"messageId": str(self._message.id)} if self._message is not None else {}


def _without_audio(chunk: dict[str, Any]) -> dict[str, Any]:
    # chunk:generated comes before synthesis, so it carries no audio fields.
    return {key: value for key, value in chunk.items() if not key.startswith("audio")}
