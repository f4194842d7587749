"""The bundled test caller behind `parley call`: a real aiortc peer that speaks a file, then
any cues, and records the spoken reply with the arrival time of every frame.

The measures at the end work on a finished call. They find how fast the reply stopped
after a cue's speech began and how the received audio drifts against its timestamps. They
also compare where each chunk of a reply was heard with where the announced durations and
pauses put it.
"""

from __future__ import annotations

import asyncio
import bisect
import io
import itertools
import json
import logging
import time
import wave
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from media.file_track import (
    VAD_RATE_HZ,
    AudioClip,
    FileAudioTrack,
    find_speech_end_s,
    find_speech_start_s,
)
from media.frames import WEBRTC_RATE_HZ, MonoResampler, read_audio_file, resample_samples
from media.jitter import shorten_audio_jitter_buffers

logger = logging.getLogger(__name__)

# A received frame whose peak is above this (-44 dBFS) is reply speech. Decoded Opus
# silence stays under 50; piper's first frame of speech peaks above 1000.
AUDIBLE_PEAK = 200
CALLER_JITTER_PREFETCH_PACKETS = 2
# Interval at which an armed cue's condition is checked. The cue then starts at the next
# frame.
CUE_POLL_S = 0.01
# The reply has stopped for the caller once nothing audible arrives for this long.
REPLY_STOP_SILENCE_S = 0.3
# Drift is followed through the smallest offset of each second, which varied by 1 to 4 ms
# in test calls on a 2-core machine. A lasting step of 50 ms or more in it is a stall.
FLOOR_WINDOW_S = 1.0
STEP_MIN_MS = 50.0
# In test calls a chunk's stored audio matched the received audio at 0.95 to 0.99 (by
# normalised cross-correlation) where it played, and at most 0.25 anywhere else.
MIN_CHUNK_MATCH = 0.5
# A reply's first chunk is searched from 1 s before its chunk:generated arrived to 30 s
# after, a later chunk from the end of the chunk before it to 10 s after its pause.
FIRST_CHUNK_SEARCH_S = (-1.0, 30.0)
NEXT_CHUNK_SEARCH_S = (-0.1, 10.0)
# chunk:audio-ready leaves the server after the chunk's audio was queued. When it arrives
# this long before the frame of the chunk's expected start, the audio was queued in time,
# unless audio reaches the caller 200 ms later than events. Its receive buffer adds 40 ms.
READY_MARGIN_S = 0.2

CueCondition = Callable[["CueProgress"], bool]


@dataclass(slots=True)
class ReceivedFrame:
    """One decoded frame of the server's audio track as the caller received it."""

    arrived_at: float  # monotonic time at which recv() returned it
    # RTP timestamp in 1/48000 s, counted from 0 by aiortc. A frame without one gets the
    # count of samples received before it, which is equal while no packet is lost.
    pts: int
    sample_count: int  # mono samples it added to reply_audio
    audible: bool

    @property
    def end_at(self) -> float:
        return self.arrived_at + self.sample_count / WEBRTC_RATE_HZ


@dataclass
class SpeechCue:
    """Speech that the caller says later in the call, once `when` holds.

    speech is an audio file's path or 48 kHz mono int16 samples. Cues are armed one at a
    time: the first once the file has been sent, each later one once the cue before it has
    been sent. Each plays from the next 20 ms frame after `when` returns True.
    """

    speech: str | Path | np.ndarray
    when: CueCondition
    label: str = ""


@dataclass
class CueResult:
    """When a cue was armed and its condition held, and its clip with the send times."""

    label: str
    clip: AudioClip
    armed_at: float | None = None
    condition_held_at: float | None = None

    @property
    def first_frame_sent_at(self) -> float | None:
        return self.clip.first_frame_sent_at

    @property
    def speech_onset_sent_at(self) -> float | None:
        """Monotonic time at which the frame holding the first voiced 30 ms was sent."""
        return self.clip.speech_onset_sent_at


@dataclass
class CueReaction:
    """The reply's reaction to a cue's speech, as heard at the caller."""

    onset_sent_at: float
    # Whether reply audio was heard in the 300 ms before the onset.
    playing_at_onset: bool
    # End of the last audible frame before the first 300 ms silence that began after the
    # onset. None when the reply was not playing at the onset or never went silent.
    stopped_at: float | None
    # Reply audio heard from the cue's arming, and from its onset, until stopped_at.
    heard_s: float
    heard_after_onset_s: float

    @property
    def reaction_ms(self) -> float | None:
        if self.stopped_at is None:
            return None
        return round((self.stopped_at - self.onset_sent_at) * 1000, 1)


@dataclass
class DriftReport:
    """Arrival time minus (first arrival + timestamp) of the received frames, in
    milliseconds, over the first and the last window_s of the stream."""

    window_s: float
    duration_s: float
    first_p50_ms: float
    first_max_ms: float
    last_p50_ms: float
    last_max_ms: float
    # Lasting jumps between one second's smallest offset and the next: a stall of the
    # sender, since the server's frame clock starts a new schedule, instead of sending a
    # burst, once it is 100 ms behind.
    steps_ms: list[float] = field(default_factory=list)
    # The largest change of the per-second smallest offset between steps, leaving out
    # the second before each step.
    drift_between_steps_ms: float = 0.0

    @property
    def change_p50_ms(self) -> float:
        return self.last_p50_ms - self.first_p50_ms

    @property
    def change_max_ms(self) -> float:
        return self.last_max_ms - self.first_max_ms


@dataclass
class ChunkPlacement:
    """The found and the expected start of one reply chunk in the received stream.

    Starts are seconds from the stream's first frame by RTP timestamp. The expected start
    adds the announced audioDuration and pause of each chunk before it to the start of the
    reply's first chunk, or of its first chunk found when that one's audio is missing.
    """

    chunk_id: str
    chunk_index: int
    duration_s: float
    pause_s: float
    expected_start_s: float | None
    found_start_s: float | None
    # Whether chunk:audio-ready arrived READY_MARGIN_S before the frame of the expected
    # start. The audio was then queued in time, so a late start is the track's fault.
    ready_before_slot: bool

    @property
    def deviation_ms(self) -> float | None:
        if self.expected_start_s is None or self.found_start_s is None:
            return None
        return round((self.found_start_s - self.expected_start_s) * 1000, 2)


@dataclass
class ReplyPacing:
    """The placements of one reply's chunks in the received stream."""

    message_id: str
    chunks: list[ChunkPlacement]

    def worst_deviation_ms(self, *, ready_only: bool = False) -> float | None:
        """Return the largest deviation by size, with its sign, or None when none was found."""
        deviations = [
            chunk.deviation_ms
            for chunk in self.chunks
            if chunk.deviation_ms is not None and (chunk.ready_before_slot or not ready_only)
        ]
        return max(deviations, key=abs) if deviations else None

    def gaps(self) -> list[tuple[float, float | None]]:
        """Return (announced pause, measured silence) in seconds between each chunk and the
        next one."""
        gaps = []
        for chunk, following in itertools.pairwise(self.chunks):
            measured = None
            if chunk.found_start_s is not None and following.found_start_s is not None:
                measured = following.found_start_s - chunk.found_start_s - chunk.duration_s
            gaps.append((chunk.pause_s, measured))
        return gaps


@dataclass
class CallResult:
    conversation_id: str
    user_transcript: str
    reply_text: str
    reply_audio_seconds: float
    first_audio_ms: float | None
    events: list[dict[str, Any]]
    reply_audio: np.ndarray = field(repr=False)
    # Monotonic arrival time of each event, index for index.
    event_received_at: list[float] = field(default_factory=list, repr=False)
    frames: list[ReceivedFrame] = field(default_factory=list, repr=False)
    cues: list[CueResult] = field(default_factory=list)
    # When the frame holding the end of the file's speech was sent.
    speech_end_sent_at: float | None = None
    # When the first audible reply sample after that speech was heard.
    first_reply_heard_at: float | None = None
    # When the offer was sent and when the caller hung up (monotonic seconds).
    offer_sent_at: float | None = None
    hung_up_at: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "user_transcript": self.user_transcript,
            "reply_text": self.reply_text,
            "reply_audio_seconds": round(self.reply_audio_seconds, 3),
            "first_audio_ms": self.first_audio_ms,
            "events": [event["type"] for event in self.events],
            "errors": [
                {"code": e["data"].get("code"), "error": e["data"].get("error")}
                for e in self.events
                if e.get("type") == "conversation:error"
            ],
        }

    def replies(self) -> list[tuple[dict[str, Any], float]]:
        """Return each assistant message:received's data with its arrival time."""
        return [
            (event["data"], at)
            for event, at in zip(self.events, self.event_received_at, strict=True)
            if event.get("type") == "message:received"
            and event.get("data", {}).get("role") == "assistant"
        ]

    def cue_reactions(self) -> list[CueReaction | None]:
        """Return each cue's reaction, or None for a cue whose speech onset was never sent."""
        return [measure_cue_reaction(self.frames, cue) for cue in self.cues]


class ReplyRecorder:
    """Consumes the server's audio track and notes when reply speech is heard."""

    def __init__(self) -> None:
        self._resampler = MonoResampler(WEBRTC_RATE_HZ)
        self._pieces: list[np.ndarray] = []
        self._samples = 0
        self.heard: list[tuple[float, int]] = []  # (monotonic time, sample index) per frame
        self.frames: list[ReceivedFrame] = []
        self.last_audible_at: float | None = None
        self.heard_s = 0.0

    async def run(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame):
                self._record(frame, time.monotonic())

    def _record(self, frame: av.AudioFrame, now: float) -> None:
        samples = self._resampler.resample(frame)
        audible = len(samples) > 0 and int(np.abs(samples.astype(np.int32)).max()) > AUDIBLE_PEAK
        pts = frame.pts if frame.pts is not None else self._samples
        self.frames.append(ReceivedFrame(now, pts, len(samples), audible))
        if audible:
            self.heard.append((now, self._samples))
            self.last_audible_at = now
            self.heard_s += len(samples) / WEBRTC_RATE_HZ
        self._pieces.append(samples)
        self._samples += len(samples)

    def audio(self) -> np.ndarray:
        return np.concatenate(self._pieces) if self._pieces else np.zeros(0, dtype=np.int16)

    def reply_after(self, moment: float | None) -> tuple[float | None, float]:
        """Return (first audible time after moment, seconds from there to the last audible)."""
        if moment is None:
            return None, 0.0
        after = [(at, index) for at, index in self.heard if at >= moment]
        if not after:
            return None, 0.0
        first_at, first_index = after[0]
        last_index = after[-1][1] + 960
        return first_at, (last_index - first_index) / WEBRTC_RATE_HZ


@dataclass
class EventLog:
    """The call's events from the data channel, each with its monotonic arrival time."""

    events: list[dict[str, Any]] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    # The call's start until the first event arrives.
    last_at: float = field(default_factory=time.monotonic)

    def on_message(self, message: str | bytes) -> None:
        event = json.loads(message)
        # The greeting shows the channel works. It is not part of the conversation.
        if event.get("type") == "connection:ready":
            return
        self.last_at = time.monotonic()
        self.events.append(event)
        self.received_at.append(self.last_at)


@dataclass
class CueProgress:
    """The state of the call passed to a cue's condition, counted from the cue's arming."""

    armed_at: float
    recorder: ReplyRecorder
    log: EventLog
    heard_s_at_arming: float

    def heard_since_armed_s(self) -> float:
        return self.recorder.heard_s - self.heard_s_at_arming

    def last_event_at(self, event_type: str, role: str | None = None) -> float | None:
        """Return the arrival time of the newest event of event_type since the arming,
        with data.role equal to role when role is given."""
        log = self.log
        for event, at in zip(reversed(log.events), reversed(log.received_at), strict=True):
            if at < self.armed_at:
                return None
            if event.get("type") != event_type:
                continue
            if role is None or event.get("data", {}).get("role") == role:
                return at
        return None


def after_reply_heard(total_ms: float) -> CueCondition:
    """Return a condition that is true once reply audio has been audible for total_ms in
    total since the arming."""
    return lambda progress: progress.heard_since_armed_s() * 1000 >= total_ms


def after_event(event_type: str, delay_ms: float = 0.0, *, role: str | None = None) -> CueCondition:
    """Return a condition that is true delay_ms after the newest event of event_type (with
    data.role, when role is given) that arrived since the arming."""

    def holds(progress: CueProgress) -> bool:
        at = progress.last_event_at(event_type, role)
        return at is not None and time.monotonic() - at >= delay_ms / 1000

    return holds


def after_reply_finished(quiet_ms: float = 1000.0) -> CueCondition:
    """Return a condition that is true once an assistant message:received arrived since
    the arming and no reply audio was heard for quiet_ms.

    The event can arrive while its audio still plays, since piper runs faster than real
    time. NOTE: a pause between chunks longer than quiet_ms (up to 2 s) after that event
    also satisfies it.
    """

    def holds(progress: CueProgress) -> bool:
        answered_at = progress.last_event_at("message:received", "assistant")
        if answered_at is None:
            return False
        quiet_since = max(answered_at, progress.recorder.last_audible_at or 0.0)
        return time.monotonic() - quiet_since >= quiet_ms / 1000

    return holds


class CueSpeaker:
    """Arms the cues one at a time once the file has been sent, and plays each on the
    track as soon as its condition is true."""

    def __init__(
        self,
        cues: Sequence[SpeechCue],
        clips: Sequence[AudioClip],
        track: FileAudioTrack,
        recorder: ReplyRecorder,
        log: EventLog,
    ) -> None:
        self._conditions = [cue.when for cue in cues]
        self._track = track
        self._recorder = recorder
        self._log = log
        self.results = [
            CueResult(cue.label or f"cue {number}", clip)
            for number, (cue, clip) in enumerate(zip(cues, clips, strict=True), start=1)
        ]
        # The armed cue whose condition has not been true yet.
        self.waiting: CueResult | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="caller-cues")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def check(self) -> None:
        """Raise the error of a cue condition that failed."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    @property
    def playing(self) -> bool:
        return any(
            result.condition_held_at is not None and not result.clip.finished.is_set()
            for result in self.results
        )

    @property
    def last_activity_at(self) -> float:
        """Return the latest arming or end of a cue's playing, or 0.0 before any."""
        times = [result.clip.finished_at or result.armed_at or 0.0 for result in self.results]
        return max(times, default=0.0)

    async def _run(self) -> None:
        await self._track.finished.wait()
        for condition, result in zip(self._conditions, self.results, strict=True):
            result.armed_at = time.monotonic()
            progress = CueProgress(
                result.armed_at, self._recorder, self._log, self._recorder.heard_s
            )
            self.waiting = result
            # Polled, not awaited as an event: conditions like "500 ms after an event"
            # become true by the clock alone.
            while not condition(progress):  # noqa: ASYNC110
                await asyncio.sleep(CUE_POLL_S)
            self.waiting = None
            result.condition_held_at = time.monotonic()
            self._track.play(result.clip)
            await result.clip.finished.wait()


@dataclass
class _CallParts:
    pc: RTCPeerConnection
    track: FileAudioTrack
    recorder: ReplyRecorder
    log: EventLog
    speaker: CueSpeaker
    offer_sent_at: float | None = None
    hung_up_at: float | None = None


async def place_call(
    server_url: str,
    audio_path: str,
    *,
    timeout_s: float = 120.0,
    quiet_s: float = 2.5,
    turn_wait_s: float = 20.0,
    token: str | None = None,
    conversation_id: str | None = None,
    level: str | None = None,
    hang_up_when: Callable[[list[dict[str, Any]]], bool] | None = None,
    channel_messages: Sequence[str] = (),
    cues: Sequence[SpeechCue] = (),
) -> CallResult:
    """Call the server, speak the file in real time, then each cue when its condition is
    true, and wait until the replies are done.

    hang_up_when, given the events so far, can end the call early (for example mid-reply).
    channel_messages are sent on the data channel as soon as it opens. A cue whose
    condition is still false after turn_wait_s of a quiet call is not spoken.
    """
    speech_48k, onset_s, end_s = await asyncio.to_thread(_decode_speech, audio_path)
    track = FileAudioTrack(speech_48k, end_s, onset_s)
    clips = []
    for cue in cues:
        samples, cue_onset_s, cue_end_s = await asyncio.to_thread(_decode_speech, cue.speech)
        clips.append(AudioClip(samples, cue_onset_s, cue_end_s))

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    recorder = ReplyRecorder()
    log = EventLog()
    speaker = CueSpeaker(cues, clips, track, recorder, log)
    call = _CallParts(pc, track, recorder, log, speaker)
    tasks: list[asyncio.Task[None]] = []

    pc.addTrack(track)
    channel = pc.createDataChannel("events")

    def on_open() -> None:
        for message in channel_messages:
            channel.send(message)

    channel.on("message", log.on_message)
    channel.on("open", on_open)
    pc.on("track", lambda remote: tasks.append(asyncio.create_task(recorder.run(remote))))

    try:
        await pc.setLocalDescription(await pc.createOffer())
        call.offer_sent_at = time.monotonic()
        answer = await _negotiate(pc, server_url, token, conversation_id, level)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        # The same short receive buffer as the server's: 40 ms, close to a browser's.
        shorten_audio_jitter_buffers(pc, CALLER_JITTER_PREFETCH_PACKETS)
        speaker.start()
        # A file with speech in it waits up to turn_wait_s for the server's first event.
        first_event_wait_s = turn_wait_s if end_s > 0 else 0.0
        waiting = _wait_for_replies(
            call, timeout_s, quiet_s, first_event_wait_s, cue_wait_s=turn_wait_s
        )
        if hang_up_when is None:
            await waiting
        else:
            await _wait_until(lambda: hang_up_when(log.events), waiting, timeout_s)
    finally:
        await speaker.close()
        call.hung_up_at = time.monotonic()
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return _call_result(answer["conversationId"], call)


def _decode_speech(source: str | Path | np.ndarray) -> tuple[np.ndarray, float | None, float]:
    """Return the speech as 48 kHz samples with the start and end of its voiced part in
    seconds. Blocking: decodes the file and runs webrtcvad on a 16 kHz copy."""
    if isinstance(source, np.ndarray):
        speech_48k = np.ascontiguousarray(source, dtype=np.int16)
    else:
        speech_48k = read_audio_file(str(source), WEBRTC_RATE_HZ)
    speech_16k = resample_samples(speech_48k, WEBRTC_RATE_HZ, VAD_RATE_HZ)
    return speech_48k, find_speech_start_s(speech_16k), find_speech_end_s(speech_16k)


def _call_result(conversation_id: str, call: _CallParts) -> CallResult:
    track, recorder, events = call.track, call.recorder, call.log.events
    for cue in call.speaker.results:
        if cue.armed_at is not None and cue.condition_held_at is None:
            logger.warning(
                "conversation %s: %s was not spoken because its condition never became true",
                conversation_id,
                cue.label,
            )

    first_at, reply_seconds = recorder.reply_after(track.speech_end_sent_at)
    first_audio_ms = None
    if first_at is not None and track.speech_end_sent_at is not None:
        first_audio_ms = round((first_at - track.speech_end_sent_at) * 1000, 1)
    received = [e.get("data", {}) for e in events if e.get("type") == "message:received"]
    return CallResult(
        conversation_id=conversation_id,
        user_transcript=" ".join(d["content"] for d in received if d.get("role") == "user"),
        reply_text=" ".join(d["content"] for d in received if d.get("role") == "assistant"),
        reply_audio_seconds=reply_seconds,
        first_audio_ms=first_audio_ms,
        events=events,
        reply_audio=recorder.audio(),
        event_received_at=call.log.received_at,
        frames=recorder.frames,
        cues=call.speaker.results,
        speech_end_sent_at=track.speech_end_sent_at,
        first_reply_heard_at=first_at,
        offer_sent_at=call.offer_sent_at,
        hung_up_at=call.hung_up_at,
    )


async def _negotiate(
    pc: RTCPeerConnection,
    server_url: str,
    token: str | None,
    conversation_id: str | None,
    level: str | None,
) -> dict[str, Any]:
    """Send the local description as the offer; return the server's answer."""
    body: dict[str, Any] = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
    if conversation_id:
        body["conversationId"] = conversation_id
    if level:
        body["level"] = level
    url = server_url.rstrip("/") + "/api/rtc/offer"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers=headers) as response,
    ):
        payload: dict[str, Any] = await response.json()
        if response.status != 200:
            raise RuntimeError(f"offer rejected with HTTP {response.status}: {payload}")
    return payload


async def _wait_for_replies(
    call: _CallParts,
    timeout_s: float,
    quiet_s: float,
    first_event_wait_s: float,
    cue_wait_s: float,
) -> None:
    """Return once the file and the cues are sent, the newest user turn got a reply or an
    error, and neither audio nor events have arrived for quiet_s. While no event has come at all,
    the quiet period is first_event_wait_s instead, since a slow transcription sends
    nothing yet, and while a cue waits for its condition it is cue_wait_s."""
    events = call.log.events
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if call.pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"the connection to the server is {call.pc.connectionState}")
        call.speaker.check()
        if not call.track.finished.is_set() or call.speaker.playing:
            continue
        quiet_since = max(
            call.log.last_at,
            call.recorder.last_audible_at or 0.0,
            call.track.finished_at or 0.0,
            call.speaker.last_activity_at,
        )
        needed_quiet_s = quiet_s if events else max(quiet_s, first_event_wait_s)
        if call.speaker.waiting is not None:
            needed_quiet_s = max(needed_quiet_s, cue_wait_s)
        if _newest_turn_answered(events) and time.monotonic() - quiet_since >= needed_quiet_s:
            return
    raise TimeoutError(f"the reply did not finish within {timeout_s:.0f} s")


async def _wait_until(
    condition: Callable[[], bool], waiting: Coroutine[Any, Any, None], timeout_s: float
) -> None:
    """Return when condition() holds, or when waiting finishes first."""
    waiter = asyncio.ensure_future(waiting)
    deadline = time.monotonic() + timeout_s
    try:
        while not waiter.done() and time.monotonic() < deadline:
            if condition():
                return
            await asyncio.sleep(0.02)
        await waiter
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


def _newest_turn_answered(events: list[dict[str, Any]]) -> bool:
    """Return whether the newest user turn has a finished reply or an error after it.

    Only the newest counts: the caller's next turn can cut an earlier reply before its
    first chunk, and such a reply sends no message at all. A reply stored as interrupted
    after the newest turn is the reply to an earlier turn, cut by the newest.
    """
    waiting = False
    for event in events:
        data = event.get("data", {})
        received = event.get("type") == "message:received"
        finished_reply = (
            received
            and data.get("role") == "assistant"
            and (data.get("metadata") or {}).get("status") != "interrupted"
        )
        if received and data.get("role") == "user":
            waiting = True
        elif finished_reply or event.get("type") == "conversation:error":
            waiting = False
    return not waiting


# -- Measures of a finished call


def measure_cue_reaction(frames: Sequence[ReceivedFrame], cue: CueResult) -> CueReaction | None:
    """Return how the reply reacted to the cue's speech; None when its onset was never sent.

    The reply was playing when it was heard within REPLY_STOP_SILENCE_S before the onset.
    It stops at the end of the last audible frame before the first silence of that length
    that begins after the onset. A silence that runs to the end of the recording counts
    once it lasted that long.
    """
    onset = cue.speech_onset_sent_at
    if onset is None or cue.armed_at is None:
        return None
    armed = frames[_first_arrival_index(frames, cue.armed_at) :]
    audible = [frame for frame in armed if frame.audible]
    before = [frame for frame in audible if frame.arrived_at < onset]
    heard_s = sum(frame.sample_count for frame in before) / WEBRTC_RATE_HZ
    if not before or onset - before[-1].end_at >= REPLY_STOP_SILENCE_S:
        return CueReaction(onset, False, None, round(heard_s, 3), 0.0)

    last_end = before[-1].end_at
    stopped_at: float | None = None
    after_onset_s = 0.0
    for frame in audible[len(before) :]:
        if last_end >= onset and frame.arrived_at - last_end >= REPLY_STOP_SILENCE_S:
            stopped_at = last_end
            break
        after_onset_s += frame.sample_count / WEBRTC_RATE_HZ
        last_end = frame.end_at
    else:
        if last_end >= onset and armed[-1].end_at - last_end >= REPLY_STOP_SILENCE_S:
            stopped_at = last_end
    total_s = round(heard_s + after_onset_s, 3)
    return CueReaction(onset, True, stopped_at, total_s, round(after_onset_s, 3))


def measure_drift(frames: Sequence[ReceivedFrame], window_s: float = 60.0) -> DriftReport | None:
    """Return how the frames' arrival drifted from their timestamps between the first and
    the last window_s of the stream, and the lasting steps in it; None with fewer than two
    frames. The windows overlap when the stream is shorter than two of them."""
    if len(frames) < 2:
        return None
    first = frames[0]
    media_s = np.array([frame.pts - first.pts for frame in frames]) / WEBRTC_RATE_HZ
    arrival_s = np.array([frame.arrived_at - first.arrived_at for frame in frames])
    offsets_ms = (arrival_s - media_s) * 1000
    duration_s = float(media_s[-1])
    head = offsets_ms[media_s <= window_s]
    tail = offsets_ms[media_s >= duration_s - window_s]
    steps_ms, spread_ms = _split_floor_at_steps(_floors_ms(media_s, offsets_ms))
    return DriftReport(
        window_s=window_s,
        duration_s=round(duration_s, 3),
        first_p50_ms=round(float(np.median(head)), 2),
        first_max_ms=round(float(head.max()), 2),
        last_p50_ms=round(float(np.median(tail)), 2),
        last_max_ms=round(float(tail.max()), 2),
        steps_ms=steps_ms,
        drift_between_steps_ms=round(spread_ms, 2),
    )


def _floors_ms(media_s: np.ndarray, offsets_ms: np.ndarray) -> np.ndarray:
    """Return the smallest offset in each FLOOR_WINDOW_S of the stream. Delays only add to
    an offset, so the smallest one is that of the least delayed frame."""
    windows = (media_s // FLOOR_WINDOW_S).astype(np.int64)
    starts = np.flatnonzero(np.diff(windows, prepend=windows[0] - 1))
    floors: np.ndarray = np.minimum.reduceat(offsets_ms, starts)
    return floors


def _split_floor_at_steps(floors_ms: np.ndarray) -> tuple[list[float], float]:
    """Return the steps of at least STEP_MIN_MS between one floor and the next, and the
    largest spread of the floor inside a stretch without a step.

    The floor of the second before a step is left out of both, because a loaded sender
    falls behind gradually before it stalls: by 5 to 10 ms in test calls at a load average
    of 8 on 2 cores.
    """
    steps: list[float] = []
    stretches: list[list[float]] = [[float(floors_ms[0])]]
    for previous, floor in itertools.pairwise(float(floor) for floor in floors_ms):
        if abs(floor - previous) < STEP_MIN_MS:
            stretches[-1].append(floor)
            continue
        if len(stretches[-1]) > 1:
            stretches[-1].pop()
        steps.append(round(floor - stretches[-1][-1], 1))
        stretches.append([floor])
    spread = max(max(stretch) - min(stretch) for stretch in stretches)
    return steps, spread


async def fetch_chunk_audio(
    server_url: str, token: str, result: CallResult
) -> dict[str, np.ndarray]:
    """Download the stored audio of every chunk of the call's replies with GET on its
    audioUrl, resampled to 48 kHz as the server does before it plays it.

    Raises RuntimeError when a download fails.
    """
    urls = {
        chunk["chunkId"]: chunk["audioUrl"]
        for data, _at in result.replies()
        for chunk in data.get("chunks", [])
        if chunk.get("audioUrl")
    }
    audio: dict[str, np.ndarray] = {}
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for chunk_id, url in urls.items():
            async with http.get(server_url.rstrip("/") + url) as response:
                if response.status != 200:
                    raise RuntimeError(f"GET {url} failed with HTTP {response.status}")
                body = await response.read()
            audio[chunk_id] = await asyncio.to_thread(_decode_wav_48k, body)
    return audio


def measure_reply_pacing(
    result: CallResult, chunk_audio: Mapping[str, np.ndarray]
) -> list[ReplyPacing]:
    """Find each reply's chunks in the received audio by their stored audio (see
    fetch_chunk_audio) and compare their starts with where the first chunk's start and the
    announced durations and pauses put them. Blocking: it correlates whole chunks."""
    stream = received_stream(result)
    return [_place_chunks(result, stream, data, chunk_audio) for data, _at in result.replies()]


def received_stream(result: CallResult) -> np.ndarray:
    """Return the received audio laid out by RTP timestamp from 0 at the first frame, with
    silence where frames are missing."""
    frames = result.frames
    if not frames:
        return np.zeros(0, dtype=np.int16)
    first_pts = frames[0].pts
    size = max(frame.pts - first_pts + frame.sample_count for frame in frames)
    stream = np.zeros(size, dtype=np.int16)
    offset = 0
    for frame in frames:
        start = frame.pts - first_pts
        if start >= 0:
            stream[start : start + frame.sample_count] = result.reply_audio[
                offset : offset + frame.sample_count
            ]
        offset += frame.sample_count
    return stream


def _place_chunks(
    result: CallResult,
    stream: np.ndarray,
    data: dict[str, Any],
    chunk_audio: Mapping[str, np.ndarray],
) -> ReplyPacing:
    chunks: list[dict[str, Any]] = data.get("chunks", [])
    ready_at = _event_times(result, "chunk:audio-ready", "chunkId")
    generated_at = _event_times(result, "chunk:generated", "chunkId")
    first_generated_at = generated_at.get(chunks[0]["chunkId"], 0.0) if chunks else 0.0
    start_s = _stream_s_at(result.frames, first_generated_at)
    search_s = (start_s + FIRST_CHUNK_SEARCH_S[0], start_s + FIRST_CHUNK_SEARCH_S[1])
    expected_s: float | None = None
    placements: list[ChunkPlacement] = []
    for chunk in chunks:
        duration_s = float(chunk.get("audioDuration") or 0.0)
        pause_s = float(chunk.get("pause") or 0.0)
        audio = chunk_audio.get(chunk["chunkId"])
        found_s = None if audio is None else _find_clip(audio, stream, search_s)
        if expected_s is None:
            expected_s = found_s
        slot_at = None if expected_s is None else _arrival_at(result.frames, expected_s)
        chunk_ready_at = ready_at.get(chunk["chunkId"])
        placements.append(
            ChunkPlacement(
                chunk_id=chunk["chunkId"],
                chunk_index=chunk.get("chunkIndex", len(placements)),
                duration_s=duration_s,
                pause_s=pause_s,
                expected_start_s=expected_s,
                found_start_s=found_s,
                ready_before_slot=slot_at is not None
                and chunk_ready_at is not None
                and chunk_ready_at <= slot_at - READY_MARGIN_S,
            )
        )

        # The next chunk is searched after this one, where it was found or expected.
        base_s = found_s if found_s is not None else expected_s
        if base_s is not None:
            end_s = base_s + duration_s
            search_s = (end_s + NEXT_CHUNK_SEARCH_S[0], end_s + pause_s + NEXT_CHUNK_SEARCH_S[1])
        if expected_s is not None:
            expected_s += duration_s + pause_s
    return ReplyPacing(str(data.get("messageId")), placements)


def _find_clip(clip: np.ndarray, stream: np.ndarray, search_s: tuple[float, float]) -> float | None:
    """Return the start in seconds where clip best matches stream with a start inside
    search_s, by normalised cross-correlation; None when no place matches MIN_CHUNK_MATCH."""
    start = max(int(search_s[0] * WEBRTC_RATE_HZ), 0)
    stop = int(search_s[1] * WEBRTC_RATE_HZ)
    template = clip.astype(np.float64)
    window = stream[start : stop + len(template)].astype(np.float64)
    if len(template) == 0 or len(window) < len(template):
        return None

    size = 1 << (len(window) + len(template) - 1).bit_length()
    spectrum = np.fft.rfft(window, size) * np.conj(np.fft.rfft(template, size))
    correlation = np.fft.irfft(spectrum, size)[: len(window) - len(template) + 1]
    # Energy of each window the clip's length, from a running sum of squares.
    running = np.concatenate(([0.0], np.cumsum(window**2)))
    window_energy = running[len(template) :] - running[: -len(template)]
    template_energy = float(np.dot(template, template))
    # Near-silent windows are skipped, because they would divide by almost 0 and cannot
    # match speech.
    audible = window_energy > 1e-6 * template_energy
    score = np.zeros_like(correlation)
    score[audible] = correlation[audible] / np.sqrt(window_energy[audible] * template_energy)

    best = int(np.argmax(score))
    if score[best] < MIN_CHUNK_MATCH:
        return None
    return (start + best) / WEBRTC_RATE_HZ


def _decode_wav_48k(body: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(body)) as wav:
        rate_hz = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return resample_samples(samples, rate_hz, WEBRTC_RATE_HZ)


def _event_times(result: CallResult, event_type: str, key: str) -> dict[str, float]:
    """Return the first arrival time of each event of event_type, by its data[key]."""
    times: dict[str, float] = {}
    for event, at in zip(result.events, result.event_received_at, strict=True):
        if event.get("type") == event_type:
            times.setdefault(event.get("data", {}).get(key), at)
    return times


def _first_arrival_index(frames: Sequence[ReceivedFrame], at: float) -> int:
    return bisect.bisect_left(frames, at, key=lambda frame: frame.arrived_at)


def _stream_s_at(frames: Sequence[ReceivedFrame], at: float) -> float:
    """Return the stream position in seconds of the first frame that arrived at or after at."""
    if not frames:
        return 0.0
    index = min(_first_arrival_index(frames, at), len(frames) - 1)
    return (frames[index].pts - frames[0].pts) / WEBRTC_RATE_HZ


def _arrival_at(frames: Sequence[ReceivedFrame], stream_s: float) -> float | None:
    """Return when the frame holding stream position stream_s arrived."""
    if not frames:
        return None
    target = frames[0].pts + int(stream_s * WEBRTC_RATE_HZ)
    index = bisect.bisect_right(frames, target, key=lambda frame: frame.pts) - 1
    return frames[max(index, 0)].arrived_at
