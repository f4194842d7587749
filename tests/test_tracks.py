"""ReplyAudioTrack pacing and content, plus resample_samples from media.frames."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Iterator

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from media.frames import SAMPLES_PER_FRAME, WEBRTC_RATE_HZ, resample_samples
from media.tracks import QueuedSpeech, ReplyAudioTrack

FRAME_S = 0.02


def ramp(start: int, count: int) -> np.ndarray:
    """Return count distinct non-zero samples, so any lost or moved sample shows."""
    return np.arange(start, start + count, dtype=np.int16)


async def receive(track: ReplyAudioTrack, frames: int) -> list[av.AudioFrame]:
    return [await track.recv() for _ in range(frames)]


def pcm(frames: list[av.AudioFrame]) -> np.ndarray:
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])


@pytest.fixture
def track() -> Iterator[ReplyAudioTrack]:
    reply_track = ReplyAudioTrack()
    yield reply_track
    reply_track.stop()


# -- frame format


async def test_frames_are_20_ms_mono_s16(track: ReplyAudioTrack) -> None:
    frame = await track.recv()

    assert frame.samples == 960
    assert frame.sample_rate == 48000
    assert frame.format.name == "s16"
    assert frame.layout.name == "mono"
    assert frame.time_base == fractions.Fraction(1, 48000)


async def test_pts_increases_by_960(track: ReplyAudioTrack) -> None:
    frames = await receive(track, 5)

    assert [frame.pts for frame in frames] == [0, 960, 1920, 2880, 3840]


async def test_idle_track_sends_silence(track: ReplyAudioTrack) -> None:
    frames = await receive(track, 3)

    assert track.idle is True
    assert not pcm(frames).any()


# -- content


@pytest.mark.parametrize(
    "pause_after_s",
    [
        0.0,
        0.05,
        0.35,
        0.29,
    ],
)
async def test_speech_and_pause_come_out_exactly(
    track: ReplyAudioTrack, pause_after_s: float
) -> None:
    first = ramp(1, 2000)
    second = ramp(3000, 1500)
    pause_samples = round(pause_after_s * WEBRTC_RATE_HZ)
    total = len(first) + pause_samples + len(second)

    await track.enqueue(QueuedSpeech(first, pause_after_s))
    await track.enqueue(QueuedSpeech(second, 0.0))
    out = pcm(await receive(track, total // SAMPLES_PER_FRAME + 2))

    assert np.array_equal(out[: len(first)], first)
    assert not out[len(first) : len(first) + pause_samples].any()
    assert np.array_equal(out[len(first) + pause_samples : total], second)
    assert not out[total:].any()


async def test_speech_longer_than_a_frame_spans_frames(track: ReplyAudioTrack) -> None:
    speech = ramp(-10000, 20000)

    await track.enqueue(QueuedSpeech(speech, 0.0))
    frames = await receive(track, 21)

    assert np.array_equal(pcm(frames)[:20000], speech)
    assert track.idle is True


async def test_callbacks_fire_once_each(track: ReplyAudioTrack) -> None:
    starts: list[float] = []
    ends: list[float] = []
    speech = QueuedSpeech(ramp(1, 1500), 0.05, on_start=starts.append, on_end=ends.append)

    before = time.monotonic()
    await track.enqueue(speech)
    await receive(track, 8)

    assert len(starts) == 1
    assert len(ends) == 1
    assert before <= starts[0] <= ends[0]


async def test_on_end_fires_when_speech_ends(track: ReplyAudioTrack) -> None:
    ends: list[float] = []

    await track.enqueue(QueuedSpeech(ramp(1, 2 * SAMPLES_PER_FRAME), 0.5, on_end=ends.append))
    await receive(track, 2)
    not_yet = list(ends)
    await receive(track, 1)

    assert not_yet == []
    assert len(ends) == 1


async def test_clear_drops_queued_speech(track: ReplyAudioTrack) -> None:
    await track.enqueue(QueuedSpeech(ramp(1, 10 * SAMPLES_PER_FRAME), 0.0))
    await track.enqueue(QueuedSpeech(ramp(1, 10 * SAMPLES_PER_FRAME), 0.0))
    first = await track.recv()

    dropped = track.clear()
    after = await receive(track, 3)

    assert pcm([first]).any()
    assert dropped == 2
    assert track.idle is True
    assert not pcm(after).any()


async def test_full_queue_blocks_enqueue() -> None:
    small = ReplyAudioTrack(max_queued=2)
    await small.enqueue(QueuedSpeech(ramp(1, 100), 0.0))
    await small.enqueue(QueuedSpeech(ramp(1, 100), 0.0))

    waiting = asyncio.create_task(small.enqueue(QueuedSpeech(ramp(1, 100), 0.0)))
    await asyncio.sleep(0.05)
    blocked = not waiting.done()
    await small.recv()
    await asyncio.wait_for(waiting, 1.0)
    small.stop()

    assert blocked is True
    assert waiting.done()


# -- pacing


async def test_50_frames_take_about_one_second(track: ReplyAudioTrack) -> None:
    await track.enqueue(QueuedSpeech(ramp(1, 20000), 0.2))

    started = time.monotonic()
    returned_at = []
    for _ in range(50):
        await track.recv()
        returned_at.append(time.monotonic() - started)

    # Frame i is due i * 20 ms after the first one, and 2 ms covers timer granularity.
    early = [index for index, at in enumerate(returned_at) if at < index * FRAME_S - 0.002]
    assert early == []
    assert 0.9 <= returned_at[-1] <= 1.3


async def test_short_stall_is_caught_up(track: ReplyAudioTrack) -> None:
    await receive(track, 5)
    await asyncio.sleep(0.3)

    started = time.monotonic()
    await receive(track, 20)
    elapsed_s = time.monotonic() - started

    # 15 frames fell due during the stall and come at once; the next 5 keep the schedule.
    assert 0.07 <= elapsed_s <= 0.2


async def test_long_stall_restarts_the_schedule(track: ReplyAudioTrack) -> None:
    await receive(track, 5)
    await asyncio.sleep(1.2)

    started = time.monotonic()
    await receive(track, 10)
    elapsed_s = time.monotonic() - started

    # Past a 1 s stall the schedule restarts, so these 10 frames take about 180 ms.
    assert elapsed_s >= 0.15


async def test_recv_after_stop_raises(track: ReplyAudioTrack) -> None:
    await track.recv()

    track.stop()

    with pytest.raises(MediaStreamError):
        await track.recv()


# -- resample_samples


def tone(frequency_hz: float, rate_hz: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (10000 * np.sin(2 * np.pi * frequency_hz * t)).astype(np.int16)


def dominant_frequency_hz(samples: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    frequencies = np.fft.rfftfreq(len(samples), 1 / rate_hz)
    return float(frequencies[int(np.argmax(spectrum))])


def test_resample_keeps_length_and_frequency() -> None:
    source = tone(440.0, 22050, 1.0)

    out = resample_samples(source, 22050, 48000)

    assert out.dtype == np.int16
    assert len(out) == pytest.approx(48000, rel=0.01)
    assert dominant_frequency_hz(out, 48000) == pytest.approx(440.0, abs=2.0)


def test_resample_keeps_level() -> None:
    source = tone(440.0, 22050, 1.0)

    out = resample_samples(source, 22050, 48000)
    source_rms = float(np.sqrt(np.mean(source.astype(np.float64) ** 2)))
    out_rms = float(np.sqrt(np.mean(out.astype(np.float64) ** 2)))

    assert out_rms == pytest.approx(source_rms, rel=0.05)


def test_resample_same_rate_returns_input() -> None:
    source = tone(440.0, 48000, 0.1)

    assert np.array_equal(resample_samples(source, 48000, 48000), source)


def test_resample_empty_returns_empty() -> None:
    assert len(resample_samples(np.zeros(0, dtype=np.int16), 22050, 48000)) == 0
