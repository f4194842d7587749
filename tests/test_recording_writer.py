"""The call recorder on its own: where it places each direction's audio, what it fills
with silence, the timeline journal, and the byte ranges served from the files."""

from __future__ import annotations

import fractions
import json
import time
from pathlib import Path

import av
import numpy as np
import pytest

from media.frames import SAMPLES_PER_FRAME
from media.recording import CallRecorder
from server.errors import RangeNotSatisfiableError
from server.http_range import byte_range
from storage.recording_files import RecordingFiles

RATE = 48000
FRAME_S = SAMPLES_PER_FRAME / RATE


def tone_frame(index: int, amplitude: int = 8000) -> np.ndarray:
    t = (np.arange(SAMPLES_PER_FRAME) + index * SAMPLES_PER_FRAME) / RATE
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def inbound_frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    """A frame as aiortc decodes one: stereo s16 at 48 kHz with an RTP-clock pts."""
    stereo = np.repeat(samples, 2).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = RATE
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, RATE)
    return frame


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)


def loud_spans_ms(channel: np.ndarray) -> list[tuple[int, int]]:
    """Return the [start, end) spans in ms of 5 ms blocks louder than silence."""
    block = RATE // 200
    levels = np.sqrt(np.mean(channel[: len(channel) // block * block].reshape(-1, block) ** 2, 1))
    loud = levels > 0.02
    spans = []
    start = None
    for index, is_loud in enumerate(loud):
        if is_loud and start is None:
            start = index
        elif not is_loud and start is not None:
            spans.append((start * 5, index * 5))
            start = None
    if start is not None:
        spans.append((start * 5, len(loud) * 5))
    return spans


def recorder_in(tmp_path: Path) -> CallRecorder:
    return CallRecorder("test-call", tmp_path / "call.ogg", tmp_path / "call.timeline.jsonl")


def test_outbound_gap_becomes_silence(tmp_path: Path) -> None:
    recorder = recorder_in(tmp_path)
    start = recorder.started_at
    # 0.5 s of tone from 0.2 s, then a stall of 0.3 s, then 0.5 s more.
    for index in range(25):
        recorder.outbound(tone_frame(index), start + 0.2 + index * FRAME_S)
    for index in range(25):
        recorder.outbound(tone_frame(index), start + 1.0 + index * FRAME_S)
    outcome = recorder.close(start + 2.0)
    assert outcome.duration_ms == 2000
    assert outcome.dropped_items == 0
    audio = decode(tmp_path / "call.ogg")
    assert abs(audio.shape[1] - 2 * RATE) <= SAMPLES_PER_FRAME
    spans = loud_spans_ms(audio[1])
    assert len(spans) == 2
    for (start_ms, end_ms), (expected_start, expected_end) in zip(
        spans, [(200, 700), (1000, 1500)], strict=True
    ):
        assert abs(start_ms - expected_start) <= 10
        assert abs(end_ms - expected_end) <= 10
    assert loud_spans_ms(audio[0]) == [], "the silent caller channel has sound in it"


def test_inbound_jitter_keeps_audio_gapless(tmp_path: Path) -> None:
    recorder = recorder_in(tmp_path)
    start = recorder.started_at
    rng = np.random.default_rng(7)
    # 1 s of contiguous RTP timestamps that arrive up to 15 ms late, from 0.3 s on.
    for index in range(50):
        late_s = float(rng.uniform(0, 0.015))
        arrived_at = start + 0.3 + (index + 1) * FRAME_S + late_s
        recorder.inbound(inbound_frame(tone_frame(index), index * SAMPLES_PER_FRAME), arrived_at)
    recorder.close(start + 1.6)
    spans = loud_spans_ms(decode(tmp_path / "call.ogg")[0])
    assert len(spans) == 1, f"jitter split the audio: {spans}"
    assert abs(spans[0][0] - 300) <= 20
    assert abs(spans[0][1] - spans[0][0] - 1000) <= 10


def test_lost_packets_leave_silence_in_place(tmp_path: Path) -> None:
    recorder = recorder_in(tmp_path)
    start = recorder.started_at
    # Frames 20-29 (200 ms) never arrive; their timestamps are skipped.
    for index in [*range(20), *range(30, 50)]:
        arrived_at = start + (index + 1) * FRAME_S
        recorder.inbound(inbound_frame(tone_frame(index), index * SAMPLES_PER_FRAME), arrived_at)
    recorder.close(start + 1.2)
    spans = loud_spans_ms(decode(tmp_path / "call.ogg")[0])
    assert len(spans) == 2
    assert abs(spans[0][1] - 400) <= 10
    assert abs(spans[1][0] - 600) <= 10
    assert abs(spans[1][1] - 1000) <= 10


def test_restarted_sender_clock_follows_arrival(tmp_path: Path) -> None:
    recorder = recorder_in(tmp_path)
    start = recorder.started_at
    for index in range(10):
        recorder.inbound(
            inbound_frame(tone_frame(index), index * SAMPLES_PER_FRAME),
            start + (index + 1) * FRAME_S,
        )
    # The sender's timestamps jump back to 0, while the audio arrives from 0.8 s on.
    for index in range(10):
        recorder.inbound(
            inbound_frame(tone_frame(index), index * SAMPLES_PER_FRAME),
            start + 0.8 + (index + 1) * FRAME_S,
        )
    recorder.close(start + 1.2)
    spans = loud_spans_ms(decode(tmp_path / "call.ogg")[0])
    assert len(spans) == 2
    assert abs(spans[1][0] - 800) <= 10


def test_journal_is_written_as_marks_come(tmp_path: Path) -> None:
    recorder = recorder_in(tmp_path)
    recorder.mark({"type": "utterance", "atMs": 120, "endMs": 900, "endOfTurn": "silence"})
    recorder.mark({"type": "error", "atMs": 950, "code": "stt_failed", "message": "é"})
    journal = tmp_path / "call.timeline.jsonl"
    # The worker thread writes them; they must be on disk before the recording ends.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        not journal.is_file() or journal.read_text().count("\n") < 2
    ):
        time.sleep(0.02)
    lines = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    assert [line["type"] for line in lines] == ["utterance", "error"]
    assert lines[1]["message"] == "é"
    recorder.close()


def test_close_twice_and_late_frames(tmp_path: Path) -> None:
    recorder = recorder_in(tmp_path)
    start = recorder.started_at
    first = recorder.close(start + 0.5)
    recorder.outbound(tone_frame(0), start + 0.1)
    assert recorder.close() == first
    assert first.duration_ms == 500
    assert loud_spans_ms(decode(tmp_path / "call.ogg")[1]) == []


def test_empty_recording_has_headers(tmp_path: Path) -> None:
    recorder = recorder_in(tmp_path)
    outcome = recorder.close(recorder.started_at)
    assert outcome.duration_ms == 0
    data = (tmp_path / "call.ogg").read_bytes()
    assert data.startswith(b"OggS")
    assert b"OpusHead" in data
    assert outcome.size_bytes == len(data)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 999)),
        ("bytes=-1", (999, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        (" bytes=5-6 ", (5, 6)),
        ("bytes=5-4", None),
        ("bytes=0-1,5-6", None),
        ("bytes=-", None),
        ("lines=0-1", None),
        ("bytes=0x10-20", None),
        ("bytes=" + "9" * 31 + "-", None),
        ("bytes=\u0661-\u0662", None),
    ],
)
def test_byte_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=1000-", 1000),
        ("bytes=1000-2000", 1000),
        ("bytes=-0", 1000),
        ("bytes=-10", 0),
        ("bytes=0-", 0),
    ],
)
def test_unsatisfiable_range(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError) as caught:
        byte_range(header, size)
    assert caught.value.headers() == {"Content-Range": f"bytes */{size}"}
    assert caught.value.http_status == 416


def test_journal_skips_broken_lines(tmp_path: Path) -> None:
    files = RecordingFiles(tmp_path)
    good = [
        {"type": "message", "atMs": 30, "text": "para\u2029graph and line\u2028break"},
        {"type": "chunk", "atMs": 10, "endMs": 20, "icon": "😊"},
    ]
    lines = [json.dumps(entry, ensure_ascii=False).encode() for entry in good]
    broken = [
        b'{"type": "x", "atMs": "12"}',
        b'{"type": "x", "atMs": NaN}',
        b"[1, 2]",
        b"not json",
        # A crash inside a four-byte character.
        '{"type": "chunk", "atMs": 40, "icon": "😊"}'.encode()[:-4],
    ]
    (tmp_path / "call.timeline.jsonl").write_bytes(b"\n".join(lines + broken))
    assert files.read_journal("call.timeline.jsonl") == sorted(good, key=lambda e: e["atMs"])
    assert files.read_journal("missing.timeline.jsonl") == []


def test_paths_stay_under_root(tmp_path: Path) -> None:
    files = RecordingFiles(tmp_path / "recordings")
    with pytest.raises(ValueError, match="leaves"):
        files.resolve("../outside.ogg")
