"""A call's recording: both directions in one stereo Ogg/Opus file, written as the call runs.

The event loop only hands frames and timeline entries to a bounded queue. One worker thread
per recording places them on the recording's clock, encodes them and writes them. Nothing is
kept in memory beyond a fraction of a second of audio, and Ogg pages are closed at least
every 200 ms, so a process that dies leaves a file that plays up to its last page.

The recording's clock is time.monotonic() less the moment the recording started. The
caller's audio is placed at the time it arrived, and the audio sent at the time its frame
was due on the outbound track's schedule.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from media.frames import SAMPLES_PER_FRAME, WEBRTC_RATE_HZ, MonoResampler

logger = logging.getLogger(__name__)

RATE_HZ = WEBRTC_RATE_HZ
CHANNELS = ("caller", "parley")
OPUS_BIT_RATE = 48_000
# The Ogg muxer closes a page after this much audio, which bounds what a crash can lose.
PAGE_DURATION_US = 200_000
# A direction that sends nothing (no caller track yet, a muted microphone) is filled with
# silence up to this long before now, so the other direction is never held back waiting.
SILENCE_FILL_LAG_S = 0.3
# Frames from both directions (100 a second) plus timeline entries: about 10 s of backlog.
MAX_QUEUED_ITEMS = 2000
# The caller's frames are placed by their RTP timestamps, which keeps them gapless despite
# jitter. When those and the arrival times disagree by more than this (lost packets, a
# sender that restarted its clock), placement starts again from the arrival time.
MAX_TIMESTAMP_DRIFT_S = 0.2


@dataclass(frozen=True)
class RecordingOutcome:
    duration_ms: int
    size_bytes: int
    # Items the queue had no room for. Their audio is missing from the file, because the
    # call's audio path never waits for the recorder.
    dropped_items: int
    # Frames handed over in either direction: none means the call never carried audio.
    audio_items: int


class _Channel:
    """One direction's samples waiting to be encoded, and where the next one goes."""

    def __init__(self) -> None:
        self.cursor = 0
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self.pending_samples = 0

    def place(self, samples: np.ndarray, position: int) -> None:
        """Add samples that belong at position. A gap of more than a frame becomes silence.
        An earlier or slightly later position continues at the cursor, so jitter neither
        cuts nor spreads the audio."""
        if position > self.cursor + SAMPLES_PER_FRAME:
            self.fill_to(position)
        self._append(samples)

    def fill_to(self, position: int) -> None:
        if position > self.cursor:
            self._append(np.zeros(position - self.cursor, dtype=np.int16))

    def take(self, count: int) -> np.ndarray:
        """Remove and return the next count samples; the caller checks they are there."""
        pieces = []
        needed = count
        while needed:
            head = self._pending[0]
            if len(head) <= needed:
                pieces.append(self._pending.popleft())
                needed -= len(head)
            else:
                pieces.append(head[:needed])
                self._pending[0] = head[needed:]
                needed = 0
        self.pending_samples -= count
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]

    def _append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._pending.append(samples)
            self.pending_samples += len(samples)
            self.cursor += len(samples)


class _InboundClock:
    """Start times of the caller's frames: from RTP timestamps, anchored at an arrival."""

    def __init__(self) -> None:
        self._anchor: tuple[int, float] | None = None

    def start_of(self, pts: int | None, samples: int, arrived_at: float) -> float:
        arrival_start = arrived_at - samples / RATE_HZ
        if pts is None:
            return arrival_start
        if self._anchor is not None:
            anchor_pts, anchor_t = self._anchor
            start = anchor_t + (pts - anchor_pts) / RATE_HZ
            if abs(start - arrival_start) <= MAX_TIMESTAMP_DRIFT_S:
                return start
        self._anchor = (pts, arrival_start)
        return arrival_start


class CallRecorder:
    """Writes a call's two directions and its timeline entries to disk as they come.

    audio_path gets the stereo Ogg/Opus file (left: caller, right: Parley), journal_path
    the timeline as JSON lines. Feed it from the event loop with inbound(), outbound() and
    mark(); close() finishes the files.
    """

    def __init__(self, name: str, audio_path: Path, journal_path: Path) -> None:
        self.name = name
        self.audio_path = audio_path
        self.journal_path = journal_path
        self.started_at = time.monotonic()
        self._queue: queue.Queue[tuple[str, Any, float] | None] = queue.Queue(
            maxsize=MAX_QUEUED_ITEMS
        )
        self._dropped = 0
        self._audio_items = 0
        self._closed = False
        self._outcome: RecordingOutcome | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-recorder", daemon=True)
        self._thread.start()

    @property
    def queued_items(self) -> int:
        """Items waiting for the worker thread."""
        return self._queue.qsize()

    def offset_ms(self, at: float) -> int:
        """Return the recording's offset in ms of the monotonic time at."""
        return round((at - self.started_at) * 1000)

    def inbound(self, frame: av.AudioFrame, arrived_at: float) -> None:
        """Queue a frame of the caller's audio that arrived at the monotonic time arrived_at."""
        self._audio_items += 1
        self._put(("inbound", frame, arrived_at))

    def outbound(self, samples: np.ndarray, due_at: float) -> None:
        """Queue 48 kHz mono samples sent in the frame due at the monotonic time due_at."""
        self._audio_items += 1
        self._put(("outbound", samples, due_at))

    def mark(self, entry: dict[str, Any]) -> None:
        """Queue a timeline entry; it carries its own atMs."""
        self._put(("mark", entry, 0.0))

    def close(self, end_at: float | None = None) -> RecordingOutcome:
        """Finish the file at the monotonic time end_at (default: now) and return what was
        written. Blocking: call it from a worker thread. Safe to call more than once."""
        if not self._closed:
            self._closed = True
            end_at = time.monotonic() if end_at is None else end_at
            # The worker drains the queue first, so a full queue only delays this put.
            self._queue.put(("end", None, end_at))
            self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"{self.name}: recording failed: {self._error}") from self._error
        assert self._outcome is not None
        return self._outcome

    def _put(self, item: tuple[str, Any, float]) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            # Never wait on the event loop: the audio path matters more than the file.
            self._dropped += 1
            if self._dropped % 100 == 1:
                logger.warning(
                    "%s: the recorder is %d items behind; dropped %d so far",
                    self.name,
                    MAX_QUEUED_ITEMS,
                    self._dropped,
                )

    # -- the worker thread

    def _run(self) -> None:
        try:
            with (
                open(self.audio_path, "wb", buffering=0) as audio_file,
                open(self.journal_path, "a", encoding="utf-8") as journal,
            ):
                writer = _OpusWriter(audio_file)
                self._outcome = self._write(writer, journal)
        except BaseException as exc:
            logger.exception("%s: recording to %s failed", self.name, self.audio_path)
            self._error = exc
            # Keep draining, so producers never fill the queue and close() never blocks.
            while self._queue.get() is not None:
                pass

    def _write(self, writer: _OpusWriter, journal: IO[str]) -> RecordingOutcome:
        caller, parley = _Channel(), _Channel()
        resampler = MonoResampler(RATE_HZ)
        inbound_clock = _InboundClock()
        end_position: int | None = None
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                item = ("tick", None, 0.0)
            if item is None:
                break
            kind, payload, at = item
            if kind == "inbound":
                samples = resampler.resample(payload)
                start = inbound_clock.start_of(payload.pts, payload.samples, at)
                caller.place(samples, self._position(start))
            elif kind == "outbound":
                parley.place(payload, self._position(at))
            elif kind == "mark":
                journal.write(json.dumps(payload, ensure_ascii=False, default=str) + "\n")
                journal.flush()
            elif kind == "end":
                end_position = self._position(at)
                caller.fill_to(end_position)
                parley.fill_to(end_position)
            if end_position is None:
                horizon = self._position(time.monotonic() - SILENCE_FILL_LAG_S)
                caller.fill_to(horizon)
                parley.fill_to(horizon)
            writer.write_ready(caller, parley, end_position)
        size = writer.finish(caller, parley, end_position)
        duration_ms = round(writer.samples_written * 1000 / RATE_HZ)
        return RecordingOutcome(duration_ms, size, self._dropped, self._audio_items)

    def _position(self, at: float) -> int:
        return max(0, round((at - self.started_at) * RATE_HZ))


class _OpusWriter:
    """Encodes stereo frames of the two channels into an Ogg/Opus file object."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        # flush_packets sends each finished page to the file at once instead of buffering.
        self._container = av.open(
            file,
            "w",
            format="ogg",
            options={"page_duration": str(PAGE_DURATION_US), "flush_packets": "1"},
        )
        self._stream = self._container.add_stream("libopus", rate=RATE_HZ)
        self._stream.layout = "stereo"
        self._stream.bit_rate = OPUS_BIT_RATE
        # The headers go out now, so even a recording that ends at once is a valid file.
        self._container.start_encoding()
        self.samples_written = 0

    def write_ready(self, caller: _Channel, parley: _Channel, end: int | None = None) -> None:
        """Encode every whole frame that both channels have samples for, up to end."""
        while min(caller.pending_samples, parley.pending_samples) >= SAMPLES_PER_FRAME:
            if end is not None and self.samples_written + SAMPLES_PER_FRAME > end:
                return
            self._encode(caller.take(SAMPLES_PER_FRAME), parley.take(SAMPLES_PER_FRAME))

    def finish(self, caller: _Channel, parley: _Channel, end: int | None) -> int:
        """Encode what is left up to end, close the file and return its size in bytes."""
        self.write_ready(caller, parley, end)
        rest = min(caller.pending_samples, parley.pending_samples)
        if end is not None:
            rest = min(rest, end - self.samples_written)
        if rest > 0:
            self._encode(caller.take(rest), parley.take(rest))
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._file.flush()
        return self._file.tell()

    def _encode(self, left: np.ndarray, right: np.ndarray) -> None:
        interleaved = np.empty(2 * len(left), dtype=np.int16)
        interleaved[0::2] = left
        interleaved[1::2] = right
        frame = av.AudioFrame.from_ndarray(
            interleaved.reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = RATE_HZ
        frame.pts = self.samples_written
        self.samples_written += len(left)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
