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
from storage.recordings import finish_recording, insert_recording

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
        journal_path: str,
    ) -> None:
        self.id = recording_id
        self._services = services
        self._conversation_id = conversation_id
        self._recorder = recorder
        self._journal_path = journal_path
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
        audio_path, journal_path = await asyncio.to_thread(
            files.new_paths, conversation_id, recording_id
        )
        # The clock starts with the recorder; the row's start is the same moment.
        started_at = datetime.datetime.now(datetime.UTC)
        recorder = CallRecorder(
            f"call-{call_id}", files.resolve(audio_path), files.resolve(journal_path)
        )
        try:
            await insert_recording(
                services.pool,
                conversation_id,
                call_id,
                recording_id=recording_id,
                audio_path=audio_path,
                journal_path=journal_path,
                started_at=started_at,
            )
        except BaseException:
            await asyncio.to_thread(recorder.close)
            await asyncio.to_thread(files.delete, [audio_path, journal_path])
            raise
        recording = cls(services, conversation_id, recording_id, recorder, journal_path)
        await services.bus.publish(
            conversation_id,
            "recording:started",
            {
                "recordingId": str(recording_id),
                "callId": call_id,
                "startedAt": started_at.isoformat(),
            },
        )
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
        Safe to call more than once."""
        if self._finished:
            return
        self._finished = True
        self._unsubscribe()
        services = self._services
        files = services.recording_files
        outcome = await asyncio.to_thread(self._recorder.close, end_at)
        timeline = await asyncio.to_thread(files.read_journal, self._journal_path)
        clamp_timeline(timeline, outcome.duration_ms)
        row = await finish_recording(
            services.pool,
            self.id,
            status="completed",
            duration_ms=outcome.duration_ms,
            size_bytes=outcome.size_bytes,
            timeline=timeline,
        )
        if row is None:
            logger.info("recording %s: its conversation was deleted meanwhile", self.id)
            return
        await asyncio.to_thread(files.remove_journal, self._journal_path)
        await services.bus.publish(
            self._conversation_id,
            "recording:stopped",
            {
                "recordingId": str(self.id),
                "status": "completed",
                "durationMs": outcome.duration_ms,
            },
        )
        logger.info(
            "recording %s: %d ms, %d bytes, %d timeline entries, %d items dropped",
            self.id,
            outcome.duration_ms,
            outcome.size_bytes,
            len(timeline),
            outcome.dropped_items,
        )


def clamp_timeline(timeline: list[dict[str, Any]], duration_ms: int) -> None:
    """Keep every offset within the recording. The reply track runs a frame or two past the
    call's end, so a chunk that the end cut may have ended just after it."""
    for entry in timeline:
        for key in ("atMs", "endMs"):
            if isinstance(entry.get(key), int):
                entry[key] = min(entry[key], duration_ms)
