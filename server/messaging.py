"""Messages from clients and the replies to them, shared by calls and text chat.

Replies in one conversation run one at a time, whatever started them (a call's turn, a
text message, a voice message), so a conversation never has two replies interleaving.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from media.stt import TranscriptionError
from media.tracks import ReplyAudioTrack
from media.tts import SynthesisError
from media.vad import VAD_RATE_HZ
from media.voice_input import decode_voice
from server.errors import (
    ClientError,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    ServiceError,
)
from server.event_bus import Subscriber
from server.json_views import chunk_audio_json, voice_message_json
from server.prompt_cache import prime_next_turn
from server.protocol import RequestAudio, SendMessage
from server.reply_pipeline import ReplyPipeline, TurnClock
from storage.chunks import set_tts_status
from storage.conversations import get_conversation, insert_message, insert_message_with_event
from storage.history import get_chunk

if TYPE_CHECKING:
    import asyncpg

    from server.services import Services

logger = logging.getLogger(__name__)

# A voice message shorter than this contains no word worth transcribing.
MIN_VOICE_S = 0.2


class MessageService:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._reply_locks: dict[uuid.UUID, asyncio.Lock] = {}
        # Replies holding or waiting for each lock; the lock is dropped when none is left.
        self._lock_users: collections.Counter[uuid.UUID] = collections.Counter()
        # Replies running or waiting, per conversation.
        self._replies: collections.Counter[uuid.UUID] = collections.Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._synthesising: dict[uuid.UUID, asyncio.Task[dict[str, Any]]] = {}

    async def close(self) -> None:
        """Cancel replies and syntheses still running; each stores its final status."""
        tasks = [*self._tasks, *self._synthesising.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def cancel_replies(self, conversation_id: uuid.UUID) -> None:
        """Cancel the conversation's text-chat replies, running or waiting (before a
        delete, so none writes to rows that are about to go)."""
        name = f"reply-{conversation_id}"
        tasks = [task for task in self._tasks if task.get_name() == name]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- sending

    async def send(
        self,
        user_id: uuid.UUID,
        request: SendMessage,
        *,
        origin: Subscriber | None = None,
        request_id: str | None = None,
    ) -> None:
        """Store a text or voice message, publish it, then start the reply.

        The work runs in a task of its own. A client that disconnects right after sending
        cancels its connection, and that must not stop a message between being stored and
        getting its reply.
        """
        task = asyncio.create_task(
            self._accept(user_id, request, origin, request_id),
            name=f"send-{request.conversationId}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._send_done)
        await asyncio.shield(task)

    def _send_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Retrieved here too, because a sender that went away no longer awaits it.
        if not task.cancelled() and task.exception() is not None:
            logger.info("%s ended with %r", task.get_name(), task.exception())

    async def _accept(
        self,
        user_id: uuid.UUID,
        request: SendMessage,
        origin: Subscriber | None,
        request_id: str | None,
    ) -> None:
        services = self._services
        conversation_id = request.conversationId
        await services.conversations.open_for_messages(user_id, conversation_id)
        self._reserve_reply(conversation_id)
        try:
            clock = TurnClock(source="voice" if request.inputMethod == "voice" else "text")
            clock.mark("speech_end")
            clock.mark("turn_detected")
            if request.inputMethod == "voice":
                body = await self._store_voice(conversation_id, request)
                clock.mark("stt_done")
                await services.bus.publish(
                    conversation_id,
                    "message:received",
                    body,
                    origin=origin,
                    request_id=request_id,
                )
            else:
                clock.mark("stt_done")
                await self._store_text(conversation_id, request.content or "", origin, request_id)
        except BaseException:
            self._release_reply(conversation_id)
            raise
        self._start_reply(conversation_id, clock, speak=request.speak)

    def _reserve_reply(self, conversation_id: uuid.UUID) -> None:
        """Count a reply for the conversation before its message is stored, so senders
        racing each other cannot pass the limit together."""
        waiting_max = self._services.settings.max_waiting_replies
        if self._replies[conversation_id] >= waiting_max:
            raise RateLimitedError(
                f"conversation {conversation_id} already has {waiting_max} replies running "
                "or waiting; send again when one has finished"
            )
        self._replies[conversation_id] += 1

    def _release_reply(self, conversation_id: uuid.UUID) -> None:
        self._replies[conversation_id] -= 1
        if self._replies[conversation_id] <= 0:
            del self._replies[conversation_id]

    async def _store_text(
        self,
        conversation_id: uuid.UUID,
        content: str,
        origin: Subscriber | None,
        request_id: str | None,
    ) -> None:
        """Store a text message and publish it, in one database round trip."""
        pool = self._services.pool
        message_id = uuid.uuid4()
        metadata = {"inputMethod": "text"}

        async def store(data: dict[str, Any]) -> int:
            message, seq = await insert_message_with_event(
                pool,
                conversation_id,
                "user",
                content,
                event_type="message:received",
                data=data,
                message_id=message_id,
                metadata=metadata,
            )
            data["sequenceNumber"] = message.sequence_number
            return seq

        body = {
            "messageId": str(message_id),
            "role": "user",
            "content": content,
            "metadata": metadata,
        }
        await self._services.bus.publish(
            conversation_id,
            "message:received",
            body,
            origin=origin,
            request_id=request_id,
            store=store,
        )

    async def _store_voice(
        self, conversation_id: uuid.UUID, request: SendMessage
    ) -> dict[str, Any]:
        services = self._services
        samples = await self._decode_voice(request.audio_bytes())
        try:
            transcript = await services.stt.transcribe(samples)
        except TranscriptionError as exc:
            raise ServiceError(str(exc), code="stt_failed") from exc
        if not transcript.text:
            raise ServiceError("no speech was recognised in the voice message", code="stt_failed")
        file_id, duration_s = await services.audio_files.save(samples, VAD_RATE_HZ)
        metadata = {"inputMethod": "voice"}
        try:
            message = await insert_message(
                services.pool,
                conversation_id,
                "user",
                transcript.text,
                stt_transcript=transcript.text,
                audio_file_id=file_id,
                audio_duration_s=duration_s,
                metadata=metadata,
            )
        except LookupError as exc:
            # Deleted while the message was transcribed: its audio must not stay behind.
            await services.audio_files.delete([file_id])
            raise NotFoundError(f"conversation {conversation_id} not found") from exc
        return voice_message_json(message, file_id, duration_s, metadata)

    async def _decode_voice(self, data: bytes) -> np.ndarray:
        max_s = self._services.settings.max_voice_s
        try:
            samples = await asyncio.to_thread(decode_voice, data, VAD_RATE_HZ, max_s)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise ClientError(
                f"the voice message is not audio that can be decoded: {exc}", code="invalid_audio"
            ) from exc
        if len(samples) < MIN_VOICE_S * VAD_RATE_HZ:
            raise ClientError(
                f"the voice message is too short ({len(samples) / VAD_RATE_HZ:.2f} s of audio); "
                f"send at least {MIN_VOICE_S} s",
                code="invalid_audio",
            )
        return samples

    # -- replies

    def _start_reply(self, conversation_id: uuid.UUID, clock: TurnClock, *, speak: bool) -> None:
        # The reply belongs to the conversation, not to the connection that sent the
        # message: it goes on if that connection drops, and a reconnect replays it.
        call = self._services.call_for(conversation_id)
        track = call.reply_track if call is not None else None
        task = asyncio.create_task(
            self._reply_then_release(conversation_id, clock, track, speak),
            name=f"reply-{conversation_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._reply_done)

    async def _reply_then_release(
        self,
        conversation_id: uuid.UUID,
        clock: TurnClock,
        track: ReplyAudioTrack | None,
        speak: bool,
    ) -> None:
        try:
            await self.reply(conversation_id, clock=clock, track=track, speak=speak)
        finally:
            self._release_reply(conversation_id)

    def _reply_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("reply task %s failed", task.get_name(), exc_info=task.exception())

    async def reply(
        self,
        conversation_id: uuid.UUID,
        *,
        clock: TurnClock,
        track: ReplyAudioTrack | None,
        speak: bool = True,
        task_name: str = "reply",
    ) -> None:
        """Generate the reply to the conversation's newest messages, after any reply
        already running in it."""
        lock = self._reply_locks.setdefault(conversation_id, asyncio.Lock())
        self._lock_users[conversation_id] += 1
        try:
            # Background memory work waits while any reply runs or waits.
            with self._services.memory.gate.hold():
                row = await self._reply_locked(
                    lock, conversation_id, clock, track, speak, task_name
                )
        finally:
            self._lock_users[conversation_id] -= 1
            if self._lock_users[conversation_id] == 0:
                del self._lock_users[conversation_id]
                del self._reply_locks[conversation_id]
        if row is not None:
            self._services.memory.messages_added(row)

    async def _reply_locked(
        self,
        lock: asyncio.Lock,
        conversation_id: uuid.UUID,
        clock: TurnClock,
        track: ReplyAudioTrack | None,
        speak: bool,
        task_name: str,
    ) -> asyncpg.Record | None:
        """Run the reply; return the conversation row it was generated for, or None if the
        conversation is gone."""
        async with lock:
            # Read inside the lock: the level or settings may have changed meanwhile.
            row = await get_conversation(self._services.pool, conversation_id)
            if row is None:
                logger.info("conversation %s is gone; no reply", conversation_id)
                return None
            pipeline = ReplyPipeline(
                self._services,
                row,
                track=track,
                clock=clock,
                speak=speak,
                task_name=task_name,
            )
            await pipeline.run()
            # Inside the lock: a reply waiting for it would read the same prefix anyway.
            await prime_next_turn(self._services, row)
            return row

    # -- chunk audio on request

    async def request_audio(
        self,
        user_id: uuid.UUID,
        request: RequestAudio,
        *,
        subscriptions: Callable[[uuid.UUID], Subscriber | None] = lambda _id: None,
        request_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Return the data of chunk:audio-ready for a chunk, synthesising its audio first if
        it has none yet.

        A new synthesis publishes chunk:audio-ready in the conversation's log. When the
        requester is subscribed (subscriptions returns its subscriber), that logged copy
        carries its requestId and this returns None, so the requester gets one response, not two.
        """
        chunk = await get_chunk(self._services.pool, request.chunkId)
        if (
            chunk is None
            or chunk["user_id"] != user_id
            or (request.messageId is not None and request.messageId != chunk["message_id"])
        ):
            raise NotFoundError(f"chunk {request.chunkId} not found")
        conversation_id = chunk["conversation_id"]
        if chunk["tts_status"] == "completed" and chunk["audio_file_id"]:
            return {
                "conversationId": str(conversation_id),
                **chunk_audio_json(
                    chunk["id"],
                    chunk["message_id"],
                    chunk["audio_file_id"],
                    chunk["audio_duration"],
                ),
            }
        if chunk["tts_status"] == "processing" or chunk["message_status"] == "generating":
            # A running reply may still synthesise it: a second synthesis would race.
            raise ConflictError(
                f"chunk {request.chunkId} has no audio yet because its reply is still "
                "running; request it again after the reply's message:received",
                code="audio_not_ready",
            )
        origin = subscriptions(conversation_id)
        task = self._synthesising.get(chunk["id"])
        first = task is None
        if task is None:
            task = asyncio.create_task(
                self._synthesise_chunk(chunk, origin, request_id),
                name=f"synthesise-{chunk['id']}",
            )
            self._synthesising[chunk["id"]] = task
            task.add_done_callback(lambda _: self._synthesising.pop(chunk["id"], None))
        # shield: one requester going away must not cancel the synthesis for the others.
        body = await asyncio.shield(task)
        return None if first and origin is not None else body

    async def _synthesise_chunk(
        self, chunk: asyncpg.Record, origin: Subscriber | None, request_id: str | None
    ) -> dict[str, Any]:
        services = self._services
        pool = services.pool
        await set_tts_status(pool, chunk["id"], "processing")
        try:
            speech = await services.tts.synthesize(chunk["text"])
        except SynthesisError as exc:
            await set_tts_status(pool, chunk["id"], "failed")
            raise ServiceError(str(exc), code="tts_failed") from exc
        except BaseException:
            await asyncio.shield(set_tts_status(pool, chunk["id"], "pending"))
            raise
        file_id, duration_s = await services.audio_files.save(speech.samples, speech.sample_rate_hz)
        await set_tts_status(
            pool, chunk["id"], "completed", audio_file_id=file_id, audio_duration_s=duration_s
        )
        body = chunk_audio_json(chunk["id"], chunk["message_id"], file_id, duration_s)
        try:
            await services.bus.publish(
                chunk["conversation_id"],
                "chunk:audio-ready",
                body,
                origin=origin,
                request_id=request_id,
            )
        except LookupError as exc:
            # Deleted during synthesis: the new file has no row left to own it.
            await services.audio_files.delete([file_id])
            raise NotFoundError(f"chunk {chunk['id']} not found") from exc
        return {"conversationId": str(chunk["conversation_id"]), **body}
