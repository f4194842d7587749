"""UtteranceSegmenter on real speech recordings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import webrtcvad

from media.frames import read_audio_file
from media.vad import (
    VAD_RATE_HZ,
    SegmenterConfig,
    SegmenterEvent,
    SpeechPaused,
    SpeechStarted,
    Utterance,
    UtteranceSegmenter,
)
from tests.conftest import speech_file

JFK = "jfk_inaugural_1961_male_en.wav"
SILENCE = "generated_silence_10s_16k.wav"


def load(name: str) -> np.ndarray:
    return read_audio_file(str(speech_file(name)), VAD_RATE_HZ)


def zeros(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * VAD_RATE_HZ), dtype=np.int16)


def segment(samples: np.ndarray, config: SegmenterConfig | None = None) -> list[SegmenterEvent]:
    segmenter = UtteranceSegmenter(config or SegmenterConfig())
    return segmenter.push(samples)


def utterances(events: list[SegmenterEvent]) -> list[Utterance]:
    return [event for event in events if isinstance(event, Utterance)]


def pauses(events: list[SegmenterEvent]) -> list[SpeechPaused]:
    return [event for event in events if isinstance(event, SpeechPaused)]


def voiced_span_s(samples: np.ndarray, config: SegmenterConfig) -> float:
    """Return the time from the first to the end of the last frame webrtcvad marks as speech."""
    vad = webrtcvad.Vad(config.aggressiveness)
    frame_len = VAD_RATE_HZ * config.frame_ms // 1000
    voiced = [
        index
        for index, start in enumerate(range(0, len(samples) - frame_len + 1, frame_len))
        if vad.is_speech(samples[start : start + frame_len].tobytes(), VAD_RATE_HZ)
    ]
    return (voiced[-1] + 1 - voiced[0]) * config.frame_ms / 1000


def noise_burst(duration_ms: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-15000, 15000, VAD_RATE_HZ * duration_ms // 1000).astype(np.int16)


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return load(JFK)


@pytest.fixture(scope="module")
def jfk_events(jfk: np.ndarray) -> list[SegmenterEvent]:
    return segment(np.concatenate([jfk, zeros(1.0)]))


# -- one speech file, default settings


def test_jfk_gives_one_utterance(jfk_events: list[SegmenterEvent]) -> None:
    found = utterances(jfk_events)

    assert len(found) == 1
    assert found[0].truncated is False


def test_jfk_events_start_with_speech_started(jfk_events: list[SegmenterEvent]) -> None:
    assert isinstance(jfk_events[0], SpeechStarted)
    assert isinstance(jfk_events[-1], Utterance)


def test_jfk_utterance_covers_the_speech(jfk: np.ndarray, jfk_events: list[SegmenterEvent]) -> None:
    utterance = utterances(jfk_events)[0]

    # The clip is 11.0 s with speech from about 0.1 s to about 11.0 s.
    assert utterance.start_s == 0.0
    assert 10.5 <= utterance.speech_end_s <= 11.2
    assert utterance.duration_s >= voiced_span_s(jfk, SegmenterConfig())


def test_jfk_inner_pause_gives_speech_paused(jfk_events: list[SegmenterEvent]) -> None:
    utterance = utterances(jfk_events)[0]
    inner = [pause for pause in pauses(jfk_events) if pause.speech_end_s < utterance.speech_end_s]

    assert len(inner) >= 1
    assert all(len(pause.samples) < len(utterance.samples) for pause in inner)


def test_final_pause_samples_equal_utterance(jfk_events: list[SegmenterEvent]) -> None:
    # Early transcription reuses the text of the last pause when speech does not resume,
    # so its samples must be the utterance's exactly.
    utterance = utterances(jfk_events)[0]
    last_pause = pauses(jfk_events)[-1]

    assert last_pause.speech_end_s == utterance.speech_end_s
    assert np.array_equal(last_pause.samples, utterance.samples)


def test_silence_file_gives_no_events() -> None:
    segmenter = UtteranceSegmenter(SegmenterConfig())

    assert segmenter.push(load(SILENCE)) == []
    assert segmenter.flush() == []
    assert segmenter.in_speech is False


# -- maximum length


@pytest.fixture(scope="module")
def jfk_cut_events(jfk: np.ndarray) -> list[SegmenterEvent]:
    return segment(np.concatenate([jfk, zeros(1.0)]), SegmenterConfig(max_utterance_s=4))


def test_max_length_cuts_jfk(jfk_cut_events: list[SegmenterEvent]) -> None:
    found = utterances(jfk_cut_events)

    assert len(found) >= 3
    assert [utterance.truncated for utterance in found[:-1]] == [True] * (len(found) - 1)
    assert found[-1].truncated is False
    assert max(utterance.duration_s for utterance in found) <= 4.0


def test_max_length_pieces_are_contiguous(jfk_cut_events: list[SegmenterEvent]) -> None:
    found = utterances(jfk_cut_events)

    for before, after in itertools.pairwise(found):
        assert after.start_s == pytest.approx(before.start_s + before.duration_s)


def test_max_length_cut_loses_no_samples(
    jfk: np.ndarray, jfk_events: list[SegmenterEvent], jfk_cut_events: list[SegmenterEvent]
) -> None:
    whole = utterances(jfk_events)[0]
    pieces = np.concatenate([utterance.samples for utterance in utterances(jfk_cut_events)])

    assert len(pieces) == len(whole.samples)
    assert np.array_equal(pieces, whole.samples)
    assert len(pieces) / VAD_RATE_HZ == pytest.approx(
        voiced_span_s(jfk, SegmenterConfig()), abs=0.5
    )


def test_max_length_cut_starts_next_speech(jfk_cut_events: list[SegmenterEvent]) -> None:
    started = [event for event in jfk_cut_events if isinstance(event, SpeechStarted)]

    assert len(started) == len(utterances(jfk_cut_events))


@pytest.mark.parametrize("cut_frame", [107, 108])
def test_cut_in_trailing_pause_does_not_raise(jfk: np.ndarray, cut_frame: int) -> None:
    # Speech stops after 100 frames of 30 ms and webrtcvad marks frames up to 102 as speech.
    # The quiet frames after it get quieter, so the cut lands on the newest one: 150 or
    # 180 ms into the pause, just before the 210 ms pause event.
    quiet = np.concatenate([np.full(480, 40 - 3 * step, dtype=np.int16) for step in range(12)])
    config = SegmenterConfig(max_utterance_s=(cut_frame + 1) * 30 / 1000)
    segmenter = UtteranceSegmenter(config)

    events = segmenter.push(np.concatenate([jfk[: 100 * 480], quiet, zeros(1.0)]))

    assert len(utterances(events)) == 1
    assert utterances(events)[0].truncated is True


# -- clicks, flush and preroll


def test_click_is_dropped_by_min_utterance() -> None:
    click = np.concatenate([zeros(1.0), noise_burst(60), zeros(1.0)])

    assert utterances(segment(click)) == []
    assert len(utterances(segment(click, SegmenterConfig(min_utterance_ms=30)))) == 1


def test_flush_finishes_utterance_in_progress(jfk: np.ndarray) -> None:
    segmenter = UtteranceSegmenter(SegmenterConfig())

    pushed = segmenter.push(jfk)
    flushed = segmenter.flush()

    assert utterances(pushed) == []
    assert len(flushed) == 1
    assert isinstance(flushed[0], Utterance)
    assert flushed[0].truncated is False
    assert flushed[0].duration_s >= 10.5
    assert segmenter.in_speech is False
    assert segmenter.flush() == []


def test_preroll_starts_utterance_before_onset(jfk: np.ndarray) -> None:
    stream = np.concatenate([zeros(1.0), jfk, zeros(1.0)])
    config = SegmenterConfig()

    events = segment(stream, config)
    started = events[0]
    utterance = utterances(events)[0]
    first_sample = round(utterance.start_s * VAD_RATE_HZ)

    assert isinstance(started, SpeechStarted)
    assert 1.0 <= started.start_s <= 1.5
    assert utterance.start_s < started.start_s
    assert utterance.start_s >= started.start_s - config.preroll_ms / 1000
    assert np.array_equal(
        utterance.samples, stream[first_sample : first_sample + len(utterance.samples)]
    )


def test_longer_preroll_starts_earlier(jfk: np.ndarray) -> None:
    stream = np.concatenate([zeros(1.0), jfk, zeros(1.0)])

    default = utterances(segment(stream))[0]
    longer = utterances(segment(stream, SegmenterConfig(preroll_ms=600)))[0]

    assert longer.start_s == pytest.approx(default.start_s - 0.3)


def test_zero_preroll_keeps_onset(jfk: np.ndarray) -> None:
    stream = np.concatenate([zeros(1.0), jfk, zeros(1.0)])

    events = segment(stream, SegmenterConfig(preroll_ms=0))
    started = events[0]
    utterance = utterances(events)[0]

    assert isinstance(started, SpeechStarted)
    assert utterance.start_s <= started.start_s


# -- configuration


@pytest.mark.parametrize("aggressiveness", [-1, 4, 5])
def test_invalid_aggressiveness_raises(aggressiveness: int) -> None:
    with pytest.raises(ValueError, match=f"aggressiveness {aggressiveness}"):
        SegmenterConfig(aggressiveness=aggressiveness)


@pytest.mark.parametrize("frame_ms", [5, 25, 40])
def test_invalid_frame_ms_raises(frame_ms: int) -> None:
    with pytest.raises(ValueError, match=f"{frame_ms} ms"):
        SegmenterConfig(frame_ms=frame_ms)


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_every_valid_frame_ms_finds_jfk(jfk: np.ndarray, frame_ms: int) -> None:
    events = segment(np.concatenate([jfk, zeros(1.0)]), SegmenterConfig(frame_ms=frame_ms))
    found = utterances(events)

    # With 10 and 20 ms frames the pauses near 4.5 s and 7.7 s (about 510 ms each) can
    # reach end_silence_ms, so there may be up to three.
    assert 1 <= len(found) <= 3
    assert found[0].start_s == 0.0
    assert 10.5 <= found[-1].speech_end_s <= 11.2
