"""One WebRTC call: inbound speech to turns, replies to the outbound track, events on the
data channel, and the clean-up of everything the call started."""

from __future__ import annotations

import asyncio
import logging
import time
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
from media.jitter import shorten_audio_jitter_buffers
from media.stt import Transcript, TranscriptionError
from media.tracks import ReplyAudioTrack
from media.vad import (
    SegmenterEvent,
    SpeechConfirmed,
    SpeechFaded,
    SpeechPaused,
    SpeechStarted,
    Utterance,
    VoiceOnset,
)
from server import metrics
from server.barge_in import BargeIn
from server.call_recording import CallRecording
from server.client_connection import ClientConnection
from server.data_channel import DataChannelTransport
from server.interim import InterimTranscripts
from server.reply_pipeline import TurnClock
from server.services import Services
from server.turn_end import looks_finished
from server.user_turns import store_user_turn

logger = logging.getLogger(__name__)


@dataclass
class QueuedTurn:
    utterance: Utterance
    clock: TurnClock
    # A transcription started when the speech paused, if the utterance ended right there.
    early_transcript: asyncio.Task[Transcript] | None = None
    # Words the interim transcripts settled for the utterance's start.
    prefix: str = ""
    # The number interim transcripts gave the utterance.
    utterance_id: int = 0
    # When the utterance's first and last audio arrived (monotonic seconds).
    start_at: float = 0.0
    end_at: float = 0.0


@dataclass
class EarlyTranscription:
    speech_end_s: float
    task: asyncio.Task[Transcript]


class CallSession:
    def __init__(self, services: Services, conversation_id: uuid.UUID, user_id: uuid.UUID) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.conversation_id = conversation_id
        self.user_id = user_id
        self._services = services
        settings = services.settings
        ice_servers = [RTCIceServer(urls=url) for url in settings.ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        self.reply_track = ReplyAudioTrack()
        # The data channel carries the whole event protocol, like a WebSocket would; accept
        # subscribes it to the call's conversation.
        self._transport = DataChannelTransport(f"call-{self.id}")
        self._connection = ClientConnection(
            services, user_id, f"call-{self.id}", self._transport.send
        )
        self._turns: asyncio.Queue[QueuedTurn] = asyncio.Queue(
            maxsize=settings.call_turn_queue_size
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inbound = InboundAudio(
            f"call-{self.id}",
            services.segmenter_config,
            settings.call_idle_timeout_s,
            services.speech_model,
        )
        self._inbound_track: MediaStreamTrack | None = None
        self._recording: CallRecording | None = None
        self._closed = asyncio.Event()
        self._closing = False
        self._early: EarlyTranscription | None = None
        # A pause that came while an earlier one was still being transcribed.
        self._next_pause: SpeechPaused | None = None
        self._barge_in = BargeIn(f"call {self.id}", self.reply_track, settings)
        self._interim = InterimTranscripts(
            f"call-{self.id}",
            services.stt,
            self._inbound,
            self._send_transcript,
            settings.interim_transcript_s,
            stt_busy=self._early_running,
        )

    async def accept(
        self, offer: RTCSessionDescription, *, after_seq: int
    ) -> RTCSessionDescription:
        """Apply the caller's offer and return the SDP answer with our candidates in it.

        The data channel receives the conversation's logged events after after_seq, then
        the live ones; they wait in a buffer until the channel opens.
        """
        # The greeting leads, then the replayed events; all wait for the channel to open.
        self._connection.greet()
        await self._connection.follow(self.conversation_id, after_seq)
        self.pc.addTrack(self.reply_track)
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)
        await self.pc.setRemoteDescription(offer)
        await self._start_recording()
        shorten_audio_jitter_buffers(self.pc, self._services.settings.jitter_prefetch_packets)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self._start_task(self._run_turns(), "turns")
        self._start_task(self._connection.serve(), "channel")
        self._start_task(self._expect_audio(), "watchdog")
        return self.pc.localDescription

    async def close(self, reason: str) -> None:
        """End the call and release everything it started. Safe to call more than once."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        ended_at = time.monotonic()
        logger.info("call %s: closing (%s)", self.id, reason)
        try:
            # Replies playing on the track stop first, and so learn why before the tasks
            # that run them are cancelled.
            self.reply_track.interrupt("call-ended")
            current = asyncio.current_task()
            tasks = [task for task in self._tasks if task is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._interim.stop()
            self._barge_in.close()
            await self._store_unanswered_speech()
        finally:
            await self._finish_recording(ended_at)
            await self._connection.close()
            self.reply_track.stop()
            await self.pc.close()
            self._inbound.close()
            self._services.sessions.pop(self.id, None)
            self._closed.set()
            logger.info("call %s: closed", self.id)

    async def _start_recording(self) -> None:
        """Record the call unless the server or the conversation disables recording. Each
        part of the call reports to the recording what it sends, hears and decides. A recording that
        cannot start leaves the call unrecorded rather than failing it."""
        if self._closing:
            # The call ended (its conversation was deleted) while the offer was applied.
            return
        try:
            recording = await CallRecording.start(self._services, self.conversation_id, self.id)
        except Exception:
            logger.exception("call %s: recording could not start; the call goes on", self.id)
            return
        if recording is None:
            return
        if self._closing:
            # close() ran while the recording started, and found nothing to finish.
            await recording.finish(time.monotonic())
            return
        self._recording = recording
        self.reply_track.observer = recording
        self._inbound.on_frame = recording.inbound
        self._barge_in.on_action = recording.barge_in

    async def _finish_recording(self, ended_at: float) -> None:
        recording = self._recording
        if recording is None:
            return
        self.reply_track.observer = None
        self._inbound.on_frame = None
        self._barge_in.on_action = None
        try:
            await recording.finish(ended_at)
        except Exception:
            # The call's other clean-up must still run; the next start repairs the row.
            logger.exception("call %s: finishing recording %s failed", self.id, recording.id)

    def _start_task(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        if self._closing:
            # A track or a state change can arrive after close() began (the conversation
            # was deleted during the offer): a task started now would never be cancelled.
            coroutine.close()
            return
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
        if track.kind != "audio" or self._inbound_track is not None:
            # One microphone per call: a second audio track would interleave with the first.
            logger.info("call %s: ignoring an extra inbound %s track", self.id, track.kind)
            return
        logger.info("call %s: inbound audio track", self.id)
        self._inbound_track = track
        self._start_task(self._receive(track), "inbound")
        self._start_task(self._inbound.segment(self._on_segmenter_event), "segmenter")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        logger.info("call %s: data channel %r", self.id, channel.label)
        self._transport.attach(channel, self._connection)

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        logger.info("call %s: connection -> %s", self.id, state)
        if state in ("failed", "closed"):
            self._start_task(self.close(f"connection {state}"), "close")

    async def _expect_audio(self) -> None:
        """End a call whose caller never sends an audio track."""
        timeout_s = self._services.settings.call_idle_timeout_s
        await asyncio.sleep(timeout_s)
        if self._inbound_track is None:
            self._start_task(self.close(f"no audio track within {timeout_s:.0f} s"), "close")

    # -- inbound media

    async def _receive(self, track: MediaStreamTrack) -> None:
        try:
            await self._inbound.receive(track)
        except InboundEnded as exc:
            self._start_task(self.close(str(exc)), "close")

    async def _on_segmenter_event(self, event: SegmenterEvent) -> None:
        # While the caller speaks, background memory work stops so STT gets the CPU. An
        # utterance ends at the latest after vad_max_utterance_s.
        gate = self._services.memory.gate
        if isinstance(event, Utterance):
            gate.touch()
        else:
            gate.touch(lasting_s=self._services.settings.vad_max_utterance_s)

        if isinstance(event, VoiceOnset):
            self._barge_in.on_onset(self._inbound.arrival_time(event.start_s))
        elif isinstance(event, SpeechConfirmed):
            self._barge_in.on_confirmed()
        elif isinstance(event, SpeechFaded):
            self._barge_in.on_faded()
        elif isinstance(event, SpeechStarted):
            self._interim.start()
        elif isinstance(event, SpeechPaused):
            self._transcribe_early(event)
        elif isinstance(event, Utterance):
            self._interim.stop()
            if self._barge_in.takes_turn(event):
                await self._queue_turn(event)

    def _early_running(self) -> bool:
        return self._early is not None and not self._early.task.done()

    def _transcribe_early(self, pause: SpeechPaused) -> None:
        """Start transcribing at a pause, so a turn that ends there finds its text ready,
        and so a finished sentence can end the turn at the quick end silence.

        Only one early transcription runs at a time: Whisper has one worker, and a stale
        one queued ahead would delay the transcription of the real end of turn. A pause
        that comes meanwhile waits and starts when the running one ends.
        """
        if self._early_running():
            self._next_pause = pause
            return
        self._next_pause = None
        task = asyncio.create_task(self._transcribe_pause(pause), name=f"call-{self.id}-early-stt")
        self._tasks.add(task)
        task.add_done_callback(self._early_done)
        self._early = EarlyTranscription(pause.speech_end_s, task)

    async def _transcribe_pause(self, pause: SpeechPaused) -> Transcript:
        transcript = await self._services.stt.transcribe(pause.samples, prefix=self._interim.prefix)
        if looks_finished(transcript.text):
            # Ignored by the segmenter if the caller has spoken again since the pause.
            self._inbound.allow_quick_end(pause.speech_end_s)
        return transcript

    def _early_done(self, task: asyncio.Task[Transcript]) -> None:
        self._tasks.discard(task)
        pending, self._next_pause = self._next_pause, None
        if pending is not None and not self._closing:
            self._transcribe_early(pending)

    async def _queue_turn(self, utterance: Utterance) -> None:
        clock = TurnClock()
        start_at, end_at = self._arrival_span(utterance)
        clock.mark("speech_end", end_at)
        clock.mark("turn_detected")
        mode = "silence"
        if utterance.truncated:
            mode = "max_length"
        elif utterance.quick_end:
            mode = "quick"
        clock.details["endOfTurn"] = mode
        metrics.END_OF_TURN.labels(mode=mode).inc()
        logger.info(
            "call %s: utterance %.2f-%.2f s, ended by %s",
            self.id,
            utterance.start_s,
            utterance.speech_end_s,
            mode,
        )
        if self._recording is not None:
            self._recording.utterance(start_at, end_at, mode)
        early = None
        if self._early is not None and self._early.speech_end_s == utterance.speech_end_s:
            early = self._early.task
        self._early = None
        clock.details["earlyTranscript"] = early is not None
        # Waits when turns pile up faster than replies finish, and the inbound frames
        # queue meanwhile.
        await self._turns.put(
            QueuedTurn(
                utterance,
                clock,
                early,
                self._interim.prefix,
                self._interim.utterance_id,
                start_at,
                end_at,
            )
        )

    def _send_transcript(self, data: dict[str, object]) -> None:
        self._services.bus.broadcast(self.conversation_id, "transcript:interim", data)

    # -- turns

    async def _run_turns(self) -> None:
        while True:
            turn = await self._turns.get()
            with self._services.memory.gate.hold():
                await self._handle_turn(turn)

    async def _handle_turn(self, turn: QueuedTurn) -> None:
        services = self._services
        try:
            if turn.early_transcript is not None:
                transcript = await turn.early_transcript
            else:
                transcript = await services.stt.transcribe(
                    turn.utterance.samples, prefix=turn.prefix
                )
        except TranscriptionError as exc:
            await services.bus.publish_error(self.conversation_id, "stt_failed", str(exc))
            return
        turn.clock.mark("stt_done")
        self._interim.send_final(turn.utterance_id, transcript.text, turn.utterance.duration_s)
        if not transcript.text:
            logger.info("call %s: utterance contained no words, so no turn", self.id)
            return

        message = await store_user_turn(
            services, self.conversation_id, turn.utterance, transcript.text
        )
        if self._recording is not None:
            self._recording.transcript(turn.start_at, turn.end_at, transcript.text, message.id)
        await services.messages.reply(
            self.conversation_id,
            clock=turn.clock,
            track=self.reply_track,
            task_name=f"call-{self.id}-reply",
        )

    async def _store_unanswered_speech(self) -> None:
        """Store the caller's speech that no turn took up: turns still queued and the
        utterance in progress when the call ended. No caller remains to hear a reply."""
        utterances = []
        while not self._turns.empty():
            utterances.append(self._turns.get_nowait().utterance)
        in_progress = [e for e in await self._inbound.finish() if isinstance(e, Utterance)]
        if self._recording is not None:
            for utterance in in_progress:
                self._recording.utterance(*self._arrival_span(utterance), "call_ended")
        utterances += in_progress

        for utterance in utterances:
            try:
                transcript = await self._services.stt.transcribe(utterance.samples)
                if transcript.text:
                    message = await store_user_turn(
                        self._services,
                        self.conversation_id,
                        utterance,
                        transcript.text,
                        answered=False,
                    )
                    self._mark_unanswered(utterance, transcript.text, message.id)
            except Exception:
                logger.exception("call %s: storing unanswered speech failed", self.id)

    def _mark_unanswered(self, utterance: Utterance, text: str, message_id: uuid.UUID) -> None:
        if self._recording is not None:
            self._recording.transcript(*self._arrival_span(utterance), text, message_id)

    def _arrival_span(self, utterance: Utterance) -> tuple[float, float]:
        """Return when the utterance's first and last speech arrived (monotonic seconds)."""
        return (
            self._inbound.arrival_time(utterance.start_s),
            self._inbound.arrival_time(utterance.speech_end_s),
        )
