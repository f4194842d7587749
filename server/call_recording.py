"""A call's recording as the server keeps it: the recorder, its row, and the timeline of
what happened in the call, each entry at its offset from the start of the recording."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
import uuid
from typing import Any

import av
import numpy as np

from media.recording import CallRecorder
from media.tracks import QueuedSpeech
from server.services import Services
from storage.recordings import discard_recording, finish_recording, insert_recording

logger = logging.getLogger(__name__)


class CallRecording:
    """Feeds a CallRecorder from a call: the caller's frames, the reply track's frames and
    speech (as a TrackObserver), and the call's events. finish() stores the row's end."""

    def __init__(
        self,
        services: Services,
        conversation_id: uuid.UUID,
        recording_id: uuid.UUID,
        recorder: CallRecorder,
        paths: tuple[str, str],
    ) -> None:
        self.id = recording_id
        self._services = services
        self._conversation_id = conversation_id
        self._recorder = recorder
        # The audio file and the journal, relative to the recordings folder.
        self._audio_path, self._journal_path = paths
        self._unsubscribe = services.bus.subscribe(conversation_id, self)
        self._finished = False
        # Start offsets of the speech playing now, by id(): an entry is written at its end.
        self._speech_starts: dict[int, int] = {}

    @classmethod
    async def start(
        cls, services: Services, conversation_id: uuid.UUID, call_id: str
    ) -> CallRecording | None:
        """Start recording the call, unless the server or the conversation disables recording."""
        if not services.settings.record_calls:
            return None
        enabled = await services.pool.fetchval(
            "SELECT record_calls FROM conversations WHERE id = $1", conversation_id
        )
        if not enabled:
            return None

        files = services.recording_files
        recording_id = uuid.uuid4()
        paths = await asyncio.to_thread(files.new_paths, conversation_id, recording_id)
        # The clock starts with the recorder; the row's start is the same moment.
        started_at = datetime.datetime.now(datetime.UTC)
        recorder = CallRecorder(f"call-{call_id}", *(files.resolve(path) for path in paths))
        recording = cls(services, conversation_id, recording_id, recorder, paths)

        try:
            await insert_recording(
                services.pool,
                conversation_id,
                call_id,
                recording_id=recording_id,
                audio_path=paths[0],
                journal_path=paths[1],
                started_at=started_at,
            )
            await services.bus.publish(
                conversation_id,
                "recording:started",
                {
                    "recordingId": str(recording_id),
                    "callId": call_id,
                    "startedAt": started_at.isoformat(),
                },
            )
        except BaseException:
            # For example the conversation was deleted meanwhile: nothing may stay behind.
            await recording.discard()
            raise
        logger.info("call %s: recording %s started", call_id, recording_id)
        return recording

    def offset_ms(self, at: float) -> int:
        return self._recorder.offset_ms(at)

    # -- audio

    def inbound(self, frame: av.AudioFrame, arrived_at: float) -> None:
        self._recorder.inbound(frame, arrived_at)

    def frame_sent(self, samples: np.ndarray, due_at: float) -> None:
        self._recorder.outbound(samples, due_at)

    # -- the timeline

    def speech_started(self, speech: QueuedSpeech, at: float) -> None:
        # The chunk's entry is written when it ends, with both offsets.
        self._speech_starts[id(speech)] = self.offset_ms(at)

    def speech_ended(self, speech: QueuedSpeech, at: float) -> None:
        start_ms = self._speech_starts.pop(id(speech), None)
        if start_ms is None:
            return
        details = speech.details() if speech.details is not None else {}
        status = "spoken" if speech.finished else "cut"
        self._mark("chunk", start_ms, endMs=self.offset_ms(at), **details, status=status)

    def utterance(self, start_at: float, end_at: float, end_of_turn: str) -> None:
        self._mark(
            "utterance",
            self.offset_ms(start_at),
            endMs=self.offset_ms(end_at),
            endOfTurn=end_of_turn,
        )

    def transcript(self, start_at: float, end_at: float, text: str, message_id: uuid.UUID) -> None:
        self._mark(
            "transcript",
            self.offset_ms(start_at),
            endMs=self.offset_ms(end_at),
            text=text,
            messageId=str(message_id),
        )

    def barge_in(self, action: str, reason: str) -> None:
        self._mark("barge-in", self.offset_ms(time.monotonic()), action=action, reason=reason)

    def deliver(self, seq: int | None, message: str) -> None:
        """Take the conversation's events (the bus calls this): errors, and text messages
        sent while the call runs. Spoken turns get their entries from the call itself."""
        if '"conversation:error"' not in message and '"message:received"' not in message:
            return
        event = json.loads(message)
        data = event.get("data", {})
        at_ms = self.offset_ms(time.monotonic())
        if event.get("type") == "conversation:error":
            self._mark("error", at_ms, code=data.get("code"), message=data.get("error"))
        elif (
            event.get("type") == "message:received"
            and data.get("role") == "user"
            and (data.get("metadata") or {}).get("inputMethod") != "voice"
        ):
            text, message_id = data.get("content"), data.get("messageId")
            self._mark("message", at_ms, role="user", text=text, messageId=message_id)

    def _mark(self, entry_type: str, at_ms: int, **fields: Any) -> None:
        self._recorder.mark({"type": entry_type, "atMs": at_ms, **fields})

    # -- the end

    async def finish(self, end_at: float) -> None:
        """Close the files at the monotonic time end_at and store the recording's end.
        A call that never carried audio (it never connected) leaves no recording. Safe to
        call more than once."""
        if self._finished:
            return
        self._finished = True
        self._unsubscribe()
        files = self._services.recording_files
        try:
            outcome = await asyncio.to_thread(self._recorder.close, end_at)
        except RuntimeError:
            # The worker failed (a full disk, a folder made read-only). The file plays up
            # to its last page, like one a dead server left.
            logger.exception("recording %s: the recorder failed; keeping what it wrote", self.id)
            duration_ms, size = await asyncio.to_thread(files.measure, self._audio_path)
            await self._store_end("interrupted", duration_ms, size)
            return
        if outcome.audio_items == 0:
            logger.info("recording %s: the call carried no audio, so it is discarded", self.id)
            await self.discard()
            return
        await self._store_end("completed", outcome.duration_ms, outcome.size_bytes)
        if outcome.dropped_items:
            logger.warning(
                "recording %s: %d items were dropped because the recorder fell behind",
                self.id,
                outcome.dropped_items,
            )

    async def _store_end(self, status: str, duration_ms: int, size: int) -> None:
        services = self._services
        files = services.recording_files
        timeline = await asyncio.to_thread(files.read_journal, self._journal_path)
        clamp_timeline(timeline, duration_ms)
        row = await finish_recording(
            services.pool,
            self.id,
            status=status,
            duration_ms=duration_ms,
            size_bytes=size,
            timeline=timeline,
        )
        if row is None:
            logger.info("recording %s: its conversation was deleted meanwhile", self.id)
            return
        await self._publish_stopped(status, duration_ms)
        logger.info(
            "recording %s: %s, %d ms, %d bytes, %d timeline entries",
            self.id,
            status,
            duration_ms,
            size,
            len(timeline),
        )
        try:
            await asyncio.to_thread(files.remove_journal, self._journal_path)
        except OSError:
            logger.exception("recording %s: removing its journal failed", self.id)

    async def discard(self) -> None:
        """Close the recorder and delete the recording's row and files."""
        self._finished = True
        self._unsubscribe()
        files = self._services.recording_files
        try:
            await asyncio.to_thread(self._recorder.close)
        except RuntimeError:
            logger.exception("recording %s: the recorder failed", self.id)
        await discard_recording(self._services.pool, self.id)
        await asyncio.to_thread(files.delete, [self._audio_path, self._journal_path])
        if await self._services.pool.fetchval(
            "SELECT 1 FROM conversations WHERE id = $1", self._conversation_id
        ):
            await self._publish_stopped("discarded", 0)

    async def _publish_stopped(self, status: str, duration_ms: int) -> None:
        await self._services.bus.publish(
            self._conversation_id,
            "recording:stopped",
            {"recordingId": str(self.id), "status": status, "durationMs": duration_ms},
        )


def clamp_timeline(timeline: list[dict[str, Any]], duration_ms: int) -> None:
    """Keep every offset within the recording. The reply track runs a frame or two past the
    call's end, so a chunk that the end cut may have ended just after it."""
    for entry in timeline:
        for key in ("atMs", "endMs"):
            if isinstance(entry.get(key), int):
                entry[key] = min(entry[key], duration_ms)
