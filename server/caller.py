"""The bundled test caller behind `parley call`: a real aiortc peer that speaks a file and
records the spoken reply."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
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

from media.file_track import FileAudioTrack, find_speech_end_s
from media.frames import WEBRTC_RATE_HZ, MonoResampler, read_audio_file, resample_samples
from media.jitter import shorten_audio_jitter_buffers

logger = logging.getLogger(__name__)

# A received frame whose peak is above this (-44 dBFS) is reply speech. Decoded Opus
# silence stays under 50; piper's first frame of speech peaks above 1000.
AUDIBLE_PEAK = 200
CALLER_JITTER_PREFETCH_PACKETS = 2


@dataclass
class CallResult:
    conversation_id: str
    user_transcript: str
    reply_text: str
    reply_audio_seconds: float
    first_audio_ms: float | None
    events: list[dict[str, Any]]
    reply_audio: np.ndarray = field(repr=False)

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


class ReplyRecorder:
    """Consumes the server's audio track and notes when reply speech is heard."""

    def __init__(self) -> None:
        self._resampler = MonoResampler(WEBRTC_RATE_HZ)
        self._pieces: list[np.ndarray] = []
        self._samples = 0
        self.heard: list[tuple[float, int]] = []  # (monotonic time, sample index) per frame
        self.last_audible_at: float | None = None

    async def run(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            samples = self._resampler.resample(frame)
            if len(samples) and int(np.abs(samples.astype(np.int32)).max()) > AUDIBLE_PEAK:
                now = time.monotonic()
                self.heard.append((now, self._samples))
                self.last_audible_at = now
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
) -> CallResult:
    """Call the server, speak the file in real time, and wait until the replies are done.

    hang_up_when, given the events so far, can end the call early (for example mid-reply).
    channel_messages are sent on the data channel as soon as it opens.
    """
    # Decoded once; the 16 kHz copy is for finding where the speech in the file ends.
    speech_48k = await asyncio.to_thread(read_audio_file, audio_path, WEBRTC_RATE_HZ)
    speech_16k = await asyncio.to_thread(resample_samples, speech_48k, WEBRTC_RATE_HZ, 16000)
    speech_end_s = await asyncio.to_thread(find_speech_end_s, speech_16k)
    track = FileAudioTrack(speech_48k, speech_end_s)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    recorder = ReplyRecorder()
    events: list[dict[str, Any]] = []
    last_event_at = [time.monotonic()]
    tasks: list[asyncio.Task[None]] = []

    def on_message(message: str | bytes) -> None:
        event = json.loads(message)
        # The greeting shows the channel works. It is not part of the conversation.
        if event.get("type") == "connection:ready":
            return
        events.append(event)
        last_event_at[0] = time.monotonic()

    pc.addTrack(track)
    channel = pc.createDataChannel("events")

    def on_open() -> None:
        for message in channel_messages:
            channel.send(message)

    channel.on("message", on_message)
    channel.on("open", on_open)
    pc.on("track", lambda remote: tasks.append(asyncio.create_task(recorder.run(remote))))

    try:
        answer = await _negotiate(pc, server_url, token, conversation_id, level)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        # The same short receive buffer as the server's: 40 ms, close to a browser's.
        shorten_audio_jitter_buffers(pc, CALLER_JITTER_PREFETCH_PACKETS)
        # A file with speech in it waits up to turn_wait_s for the server's first event.
        first_event_wait_s = turn_wait_s if speech_end_s > 0 else 0.0
        waiting = _wait_for_replies(
            pc, track, recorder, events, last_event_at, timeout_s, quiet_s, first_event_wait_s
        )
        if hang_up_when is None:
            await waiting
        else:
            await _wait_until(lambda: hang_up_when(events), waiting, timeout_s)
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    first_at, reply_seconds = recorder.reply_after(track.speech_end_sent_at)
    first_audio_ms = None
    if first_at is not None and track.speech_end_sent_at is not None:
        first_audio_ms = round((first_at - track.speech_end_sent_at) * 1000, 1)
    received = [e.get("data", {}) for e in events if e.get("type") == "message:received"]
    return CallResult(
        conversation_id=answer["conversationId"],
        user_transcript=" ".join(d["content"] for d in received if d.get("role") == "user"),
        reply_text=" ".join(d["content"] for d in received if d.get("role") == "assistant"),
        reply_audio_seconds=reply_seconds,
        first_audio_ms=first_audio_ms,
        events=events,
        reply_audio=recorder.audio(),
    )


async def _negotiate(
    pc: RTCPeerConnection,
    server_url: str,
    token: str | None,
    conversation_id: str | None,
    level: str | None,
) -> dict[str, Any]:
    await pc.setLocalDescription(await pc.createOffer())
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
    pc: RTCPeerConnection,
    track: FileAudioTrack,
    recorder: ReplyRecorder,
    events: list[dict[str, Any]],
    last_event_at: list[float],
    timeout_s: float,
    quiet_s: float,
    first_event_wait_s: float,
) -> None:
    """Return once the file is sent, every user turn got a reply or an error, and neither
    audio nor events have arrived for quiet_s. While no event has come at all, the quiet
    period is first_event_wait_s instead, since a slow transcription sends nothing yet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if pc.connectionState in ("failed", "closed"):
            raise ConnectionError(f"the connection to the server is {pc.connectionState}")
        if not track.finished.is_set():
            continue
        turns = _count(events, "message:received", "user")
        answers = _count(events, "message:received", "assistant")
        errors = sum(1 for e in events if e.get("type") == "conversation:error")
        quiet_since = max(last_event_at[0], recorder.last_audible_at or 0.0)
        if track.finished_at is not None:
            quiet_since = max(quiet_since, track.finished_at)
        needed_quiet_s = quiet_s if events else max(quiet_s, first_event_wait_s)
        if answers + errors >= turns and time.monotonic() - quiet_since >= needed_quiet_s:
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


def _count(events: list[dict[str, Any]], event_type: str, role: str) -> int:
    return sum(
        1 for e in events if e.get("type") == event_type and e.get("data", {}).get("role") == role
    )
