"""Barge-in decisions and what was heard, on a real outbound track that is read frame by
frame as a connection would read it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from media.frames import WEBRTC_RATE_HZ
from media.tracks import QueuedSpeech, ReplyAudioTrack
from media.vad import Utterance
from server.barge_in import BargeIn
from server.playout import heard_content, heard_words, playout_of
from server.settings import Settings
from tests.test_tracks import pcm, receive

SETTINGS = Settings(barge_in_echo_grace_ms=200, barge_in_min_speech_ms=600)


def tone(seconds: float) -> np.ndarray:
    return np.full(int(seconds * WEBRTC_RATE_HZ), 1000, dtype=np.int16)


def utterance(speech_ms: int) -> Utterance:
    return Utterance(
        samples=np.zeros(16000, dtype=np.int16),
        start_s=0.0,
        speech_end_s=1.0,
        truncated=False,
        speech_ms=speech_ms,
    )


async def play(track: ReplyAudioTrack, seconds: float) -> np.ndarray:
    """Read seconds of the track's frames and return their samples."""
    return pcm(await receive(track, round(seconds / 0.02)))


@pytest.fixture
def track() -> Iterator[ReplyAudioTrack]:
    reply_track = ReplyAudioTrack()
    yield reply_track
    reply_track.stop()


async def test_onset_pauses_and_fade_resumes_from_the_same_place(track: ReplyAudioTrack) -> None:
    barge_in = BargeIn("test", track, SETTINGS)
    speech = QueuedSpeech(np.arange(1, 48001, dtype=np.int16), 0.0)
    await track.enqueue(speech)
    before = await play(track, 0.4)

    barge_in.on_onset(time.monotonic())
    held = await play(track, 0.2)
    barge_in.on_faded()
    after = await play(track, 0.2)

    assert not held.any(), "a paused track sends silence"
    assert after[0] == before[-1] + 1, "the reply resumes at the sample after the pause"
    assert barge_in.takes_turn(utterance(300)) is False, "short speech over a reply is no turn"
    barge_in.close()


async def test_confirmed_speech_cuts_the_reply(track: ReplyAudioTrack) -> None:
    barge_in = BargeIn("test", track, SETTINGS)
    reasons: list[str] = []
    track.watch_interrupts(reasons.append)
    first = QueuedSpeech(tone(0.5), 0.1)
    second = QueuedSpeech(tone(0.5), 0.1)
    await track.enqueue(first)
    await track.enqueue(second)
    await play(track, 0.3)

    barge_in.on_onset(time.monotonic())
    barge_in.on_confirmed()
    rest = await play(track, 0.4)

    assert reasons == ["barge-in"]
    assert not rest.any()
    assert track.idle
    assert playout_of("one two three four", first).status == "cut"
    assert playout_of("five six", second).status == "unspoken"
    assert barge_in.takes_turn(utterance(900)) is True
    barge_in.close()


async def test_speech_in_echo_grace_does_not_pause(track: ReplyAudioTrack) -> None:
    barge_in = BargeIn("test", track, SETTINGS)
    await track.enqueue(QueuedSpeech(tone(1.0), 0.0))
    await play(track, 0.1)

    barge_in.on_onset(time.monotonic())
    heard = await play(track, 0.1)

    assert heard.all(), "the first 200 ms of our audio may be echo, so it plays on"
    barge_in.close()


async def test_no_reply_means_no_barge_in(track: ReplyAudioTrack) -> None:
    barge_in = BargeIn("test", track, SETTINGS)

    barge_in.on_onset(time.monotonic())
    barge_in.on_confirmed()

    assert not track.paused
    assert barge_in.takes_turn(utterance(300)) is True, "speech with no reply is a turn"
    barge_in.close()


async def test_reply_waits_while_caller_speaks_then_is_dropped(track: ReplyAudioTrack) -> None:
    barge_in = BargeIn("test", track, SETTINGS)
    reasons: list[str] = []
    remove = track.watch_interrupts(reasons.append)
    barge_in.on_onset(time.monotonic())
    barge_in.on_confirmed()
    speech = QueuedSpeech(tone(0.5), 0.0)
    await track.enqueue(speech)

    heard = await play(track, 0.2)

    assert not heard.any(), "no reply starts over a caller in the middle of a turn"
    assert reasons == ["barge-in"]
    assert speech.played == 0
    remove()
    barge_in.close()


@pytest.mark.parametrize(
    ("fraction", "heard"),
    [
        (0.0, ""),
        (0.3, "Hello"),
        (0.55, "Hello there,"),
        (0.99, "Hello there, my"),
        (1.0, "Hello there, my friend"),
    ],
)
def test_heard_words_keep_whole_words(fraction: float, heard: str) -> None:
    assert heard_words("Hello there, my friend", fraction) == heard


def test_heard_content_joins_heard_parts() -> None:
    spoken = QueuedSpeech(tone(0.1), 0.0, played=4800)
    cut = QueuedSpeech(tone(0.2), 0.0, played=4800)
    playouts = [playout_of("Good morning.", spoken), playout_of("How are you today?", cut)]

    assert [p.status for p in playouts] == ["spoken", "cut"]
    assert playouts[1].played_ms == 100
    assert heard_content(playouts) == "Good morning. How are"
