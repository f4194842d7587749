"""One WebRTC call: inbound speech to turns, replies to the outbound track, events on the
data channel, and the clean-up of everything the call started."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from media.inbound import InboundAudio, InboundEnded
from media.stt import Transcript, TranscriptionError
from media.tracks import ReplyAudioTrack
from media.vad import VAD_RATE_HZ, SegmenterEvent, SpeechPaused, Utterance
from server.reply_pipeline import ReplyPipeline, TurnClock
from server.services import Services
from storage.conversations import insert_message

logger = logging.getLogger(__name__)

# Events produced before the data channel opens wait here; older ones are dropped past this.
MAX_BUFFERED_EVENTS = 256


@dataclass
class QueuedTurn:
    utterance: Utterance
    clock: TurnClock
    # A transcription started when the speech paused, if the utterance ended right there.
    early_transcript: asyncio.Task[Transcript] | None = None


@dataclass
class EarlyTranscription:
    speech_end_s: float
    task: asyncio.Task[Transcript]


class CallSession:
    def __init__(self, services: Services, conversation_id: uuid.UUID, level: str) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.conversation_id = conversation_id
        self.level = level
        self._services = services
        settings = services.settings
        ice_servers = [RTCIceServer(urls=url) for url in settings.ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        self.reply_track = ReplyAudioTrack()
        self._channel: RTCDataChannel | None = None
        self._pending_events: collections.deque[str] = collections.deque(maxlen=MAX_BUFFERED_EVENTS)
        self._turns: asyncio.Queue[QueuedTurn] = asyncio.Queue(
            maxsize=settings.call_turn_queue_size
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inbound = InboundAudio(
            f"call-{self.id}", services.segmenter_config, settings.call_idle_timeout_s
        )
        self._unsubscribe = services.bus.subscribe(conversation_id, self._send_event)
        self._closed = asyncio.Event()
        self._closing = False
        self._early: EarlyTranscription | None = None

    async def accept(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Apply the caller's offer and return the answer with our candidates in it."""
        self.pc.addTrack(self.reply_track)
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)
        await self.pc.setRemoteDescription(offer)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self._start_task(self._run_turns(), "turns")
        return self.pc.localDescription

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self, reason: str) -> None:
        """End the call and release everything it started. Safe to call more than once."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        logger.info("call %s: closing (%s)", self.id, reason)
        self._unsubscribe()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.reply_track.stop()
        await self.pc.close()
        self._inbound.close()
        self._services.sessions.pop(self.id, None)
        self._closed.set()
        logger.info("call %s: closed", self.id)

    def _start_task(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coroutine, name=f"call-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("call %s: task %s failed", self.id, task.get_name(), exc_info=exc)
            if not self._closing:
                self._start_task(self.close(f"task {task.get_name()} failed"), "close")

    # -- WebRTC events

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            logger.info("call %s: ignoring inbound %s track", self.id, track.kind)
            return
        logger.info("call %s: inbound audio track", self.id)
        self._start_task(self._receive(track), "inbound")
        self._start_task(self._inbound.segment(self._on_segmenter_event), "segmenter")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        logger.info("call %s: data channel %r", self.id, channel.label)
        self._channel = channel
        channel.on("message", self._on_channel_message)
        if channel.readyState == "open":
            self._flush_events()
        else:
            channel.on("open", self._flush_events)

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        logger.info("call %s: connection -> %s", self.id, state)
        if state in ("failed", "closed"):
            self._start_task(self.close(f"connection {state}"), "close")

    def _on_channel_message(self, message: str | bytes) -> None:
        # Client events are not handled on the data channel yet: each one gets an
        # unknown_event (or bad_json) error, which also shows the channel is alive.
        try:
            event = json.loads(message)
            event_type = event.get("type") if isinstance(event, dict) else None
        except (ValueError, UnicodeDecodeError):
            self._reply_error("bad_json", "data channel message is not valid JSON")
            return
        self._reply_error("unknown_event", f"event type {event_type!r} is not supported")

    def _reply_error(self, code: str, message: str) -> None:
        self._start_task(
            self._services.bus.publish_error(self.conversation_id, code, message), "error"
        )

    # -- events to the caller

    def _send_event(self, message: str) -> None:
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(message)
        else:
            self._pending_events.append(message)

    def _flush_events(self) -> None:
        while self._pending_events and self._channel is not None:
            self._channel.send(self._pending_events.popleft())

    # -- inbound media

    async def _receive(self, track: MediaStreamTrack) -> None:
        try:
            await self._inbound.receive(track)
        except InboundEnded as exc:
            self._start_task(self.close(str(exc)), "close")

    async def _on_segmenter_event(self, event: SegmenterEvent) -> None:
        if isinstance(event, SpeechPaused):
            self._transcribe_early(event)
        elif isinstance(event, Utterance):
            await self._queue_turn(event)

    def _transcribe_early(self, pause: SpeechPaused) -> None:
        """Start transcribing at a pause, so a turn that ends there finds its text ready.

        Only one early transcription runs at a time: Whisper has one worker, and a stale
        one queued ahead would delay the transcription of the real end of turn.
        """
        if self._early is not None and not self._early.task.done():
            return
        task = asyncio.create_task(
            self._services.stt.transcribe(pause.samples), name=f"call-{self.id}-early-stt"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._early = EarlyTranscription(pause.speech_end_s, task)

    async def _queue_turn(self, utterance: Utterance) -> None:
        clock = TurnClock()
        clock.mark("speech_end", self._inbound.arrival_time(utterance.speech_end_s))
        clock.mark("turn_detected")
        logger.info(
            "call %s: utterance %.2f-%.2f s%s",
            self.id,
            utterance.start_s,
            utterance.speech_end_s,
            " (cut at the maximum length)" if utterance.truncated else "",
        )
        # Waits when turns pile up faster than replies finish, and the inbound track
        # buffers meanwhile.
        early = None
        if self._early is not None and self._early.speech_end_s == utterance.speech_end_s:
            early = self._early.task
        self._early = None
        await self._turns.put(QueuedTurn(utterance, clock, early))

    # -- turns

    async def _run_turns(self) -> None:
        while True:
            turn = await self._turns.get()
            await self._handle_turn(turn)

    async def _handle_turn(self, turn: QueuedTurn) -> None:
        services = self._services
        samples = turn.utterance.samples
        try:
            if turn.early_transcript is not None:
                transcript = await turn.early_transcript
            else:
                transcript = await services.stt.transcribe(samples)
        except TranscriptionError as exc:
            await services.bus.publish_error(self.conversation_id, "stt_failed", str(exc))
            return
        turn.clock.mark("stt_done")
        if not transcript.text:
            logger.info("call %s: utterance contained no words, so no turn", self.id)
            return

        file_id, duration_s = await services.audio_files.save(samples, VAD_RATE_HZ)
        message = await insert_message(
            services.pool,
            self.conversation_id,
            "user",
            transcript.text,
            stt_transcript=transcript.text,
            audio_file_id=file_id,
            audio_duration_s=duration_s,
            metadata={"inputMethod": "voice", "truncated": turn.utterance.truncated},
        )
        await services.bus.publish(
            self.conversation_id,
            "message:received",
            {
                "messageId": str(message.id),
                "role": "user",
                "content": message.content,
                "sequenceNumber": message.sequence_number,
                "audioFileId": file_id,
                "audioUrl": f"/api/audio/{file_id}",
                "audioDuration": round(duration_s, 3),
            },
        )
        pipeline = ReplyPipeline(
            services,
            self.conversation_id,
            self.level,
            track=self.reply_track,
            clock=turn.clock,
            task_name=f"call-{self.id}-reply",
        )
        await pipeline.run()
