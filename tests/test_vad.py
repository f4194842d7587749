"""UtteranceSegmenter on real speech recordings."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import webrtcvad

from media.frames import read_audio_file
from media.silero import SileroModel
from media.vad import (
    VAD_RATE_HZ,
    SegmenterConfig,
    SegmenterEvent,
    SpeechConfirmed,
    SpeechFaded,
    SpeechPaused,
    SpeechStarted,
    Utterance,
    UtteranceSegmenter,
    VoiceOnset,
)
from tests.conftest import speech_file

JFK = "jfk_inaugural_1961_male_en.wav"
SILENCE = "generated_silence_10s_16k.wav"


def load(name: str) -> np.ndarray:
    return read_audio_file(str(speech_file(name)), VAD_RATE_HZ)


def zeros(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * VAD_RATE_HZ), dtype=np.int16)


def segment(samples: np.ndarray, config: SegmenterConfig | None = None) -> list[SegmenterEvent]:
    """Return the utterance events: starts, pauses and utterances, without the activity
    reports (VoiceOnset, SpeechConfirmed, SpeechFaded) that tests below check on their own."""
    segmenter = UtteranceSegmenter(config or SegmenterConfig())
    activity = (VoiceOnset, SpeechConfirmed, SpeechFaded)
    return [event for event in segmenter.push(samples) if not isinstance(event, activity)]


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
    return segment(np.concatenate([jfk, zeros(1.5)]))


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
    return segment(np.concatenate([jfk, zeros(1.5)]), SegmenterConfig(max_utterance_s=4))


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
    config = SegmenterConfig(
        frame_ms=30,
        onset_ms=150,
        pause_ms=210,
        quick_end_ms=300,
        end_silence_ms=550,
        max_utterance_s=(cut_frame + 1) * 30 / 1000,
    )
    segmenter = UtteranceSegmenter(config)

    events = segmenter.push(np.concatenate([jfk[: 100 * 480], quiet, zeros(1.5)]))

    assert len(utterances(events)) == 1
    assert utterances(events)[0].truncated is True


# -- clicks, flush and preroll


def test_click_is_dropped_by_min_utterance() -> None:
    click = np.concatenate([zeros(1.0), noise_burst(60), zeros(1.5)])

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
    stream = np.concatenate([zeros(1.0), jfk, zeros(1.5)])
    config = SegmenterConfig()

    events = segment(stream, config)
    started = events[0]
    utterance = utterances(events)[0]
    first_sample = round(utterance.start_s * VAD_RATE_HZ)

    assert isinstance(started, SpeechStarted)
    assert 1.0 <= started.start_s <= 1.5
    assert utterance.start_s < started.start_s
    assert utterance.start_s >= started.start_s - config.preroll_ms / 1000 - 1e-9
    assert np.array_equal(
        utterance.samples, stream[first_sample : first_sample + len(utterance.samples)]
    )


def test_longer_preroll_starts_earlier(jfk: np.ndarray) -> None:
    stream = np.concatenate([zeros(1.0), jfk, zeros(1.5)])

    default = utterances(segment(stream))[0]
    longer = utterances(segment(stream, SegmenterConfig(preroll_ms=600)))[0]

    extra_s = (600 - SegmenterConfig().preroll_ms) / 1000
    assert longer.start_s == pytest.approx(default.start_s - extra_s)


def test_zero_preroll_keeps_onset(jfk: np.ndarray) -> None:
    stream = np.concatenate([zeros(1.0), jfk, zeros(1.5)])

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
    events = segment(np.concatenate([jfk, zeros(1.5)]), SegmenterConfig(frame_ms=frame_ms))
    found = utterances(events)

    # With 10 and 20 ms frames the pauses near 4.5 s and 7.7 s (about 510 ms each) can
    # reach end_silence_ms, so there may be up to three.
    assert 1 <= len(found) <= 3
    assert found[0].start_s == 0.0
    assert 10.5 <= found[-1].speech_end_s <= 11.2


# -- speech-activity events with Silero, fed in 20 ms pieces as a call delivers them

LIBRISPEECH_QUESTION = "librispeech_251-137823-0002_en.wav"
LIBRISPEECH_SENTENCE = "librispeech_251-137823-0003_en.wav"
CMU_SENTENCE = "cmu_arctic_aew_a0001_male_us_en.wav"
COUNTING = "speechrecognition_one_two_three_male_en.wav"
KITCHEN = "speechcommands_doing_the_dishes_noise.wav"
# 20 ms at 16 kHz: one WebRTC packet.
PIECE_SAMPLES = 320
# Files whose speech starts out of a quiet floor, at least 30 dB under the speech. JFK
# is left out: its hiss sits too close to its speech to mark an onset by energy.
ONSET_FILES = (
    LIBRISPEECH_QUESTION,
    LIBRISPEECH_SENTENCE,
    CMU_SENTENCE,
    COUNTING,
    "speechcommands_no_1s_en.wav",
)
SENTENCE_FILES = (LIBRISPEECH_QUESTION, LIBRISPEECH_SENTENCE, CMU_SENTENCE)
ONE_WORD_FILES = ("speechcommands_yes_1s_en.wav", "speechcommands_no_1s_en.wav")


@dataclass(frozen=True)
class Timed:
    # Stream time at which the piece that completed the event ended.
    at_s: float
    event: SegmenterEvent


@pytest.fixture(scope="module")
def silero() -> SileroModel:
    return SileroModel.shared()


def replay(
    stream: np.ndarray,
    speech_model: SileroModel | None,
    config: SegmenterConfig | None = None,
    quick_end_after_s: Callable[[Timed], float | None] | None = None,
) -> list[Timed]:
    """Push the stream in 20 ms pieces and return every event with the time it came out.

    quick_end_after_s, given each SpeechPaused, returns the delay after which the test
    calls allow_quick_end for that pause (as a transcript would arrive), or None."""
    segmenter = UtteranceSegmenter(config or SegmenterConfig(), speech_model)
    due: list[tuple[float, float]] = []
    timed: list[Timed] = []
    for start in range(0, len(stream), PIECE_SAMPLES):
        now_s = min(start + PIECE_SAMPLES, len(stream)) / VAD_RATE_HZ
        for at_s, speech_end_s in [item for item in due if item[0] <= now_s]:
            segmenter.allow_quick_end(speech_end_s)
            due.remove((at_s, speech_end_s))
        for event in segmenter.push(stream[start : start + PIECE_SAMPLES]):
            timed.append(Timed(now_s, event))
            if isinstance(event, SpeechPaused) and quick_end_after_s is not None:
                delay_s = quick_end_after_s(timed[-1])
                if delay_s is not None:
                    due.append((now_s + delay_s, event.speech_end_s))
    return timed


def of_type(timed: list[Timed], kind: type) -> list[Timed]:
    return [item for item in timed if isinstance(item.event, kind)]


def loud_onset_s(samples: np.ndarray) -> float:
    """Return the start of the first 10 ms window within 30 dB of the recording's loud level
    (its 95th percentile): where speech starts, judged by neither webrtcvad nor Silero."""
    window = VAD_RATE_HZ // 100
    count = len(samples) // window
    power = np.mean(samples[: count * window].astype(np.float64).reshape(count, window) ** 2, 1)
    level_db = 10 * np.log10(power + 1.0)
    loud_db = np.percentile(level_db, 95)
    return int(np.argmax(level_db >= loud_db - 30)) / 100


def loud_span(samples: np.ndarray) -> np.ndarray:
    """Return the recording from 50 ms before its first to 50 ms after its last loud window."""
    start_s = loud_onset_s(samples)
    end_s = len(samples) / VAD_RATE_HZ - loud_onset_s(samples[::-1])
    first = max(0, round((start_s - 0.05) * VAD_RATE_HZ))
    return samples[first : round((end_s + 0.05) * VAD_RATE_HZ)]


def cough(duration_ms: int, seed: int) -> np.ndarray:
    """Synthesise a cough: noise shaped around 900 Hz and 2.5 kHz, as a throat's
    resonances shape a burst of air, with a 10 ms attack and a 70 ms decay."""
    rng = np.random.default_rng(seed)
    count = VAD_RATE_HZ * duration_ms // 1000
    spectrum = np.fft.rfft(rng.standard_normal(count))
    freqs_hz = np.fft.rfftfreq(count, 1 / VAD_RATE_HZ)
    shape = np.exp(-0.5 * ((freqs_hz - 900) / 700) ** 2)
    shape += 0.3 * np.exp(-0.5 * ((freqs_hz - 2500) / 600) ** 2)
    burst = np.fft.irfft(spectrum * shape, count)
    time_s = np.arange(count) / VAD_RATE_HZ
    burst *= np.minimum(time_s / 0.01, 1.0) * np.exp(-time_s / 0.07)
    return (burst * 20000 / np.abs(burst).max()).astype(np.int16)


def webrtcvad_flags(samples: np.ndarray, config: SegmenterConfig) -> list[bool]:
    vad = webrtcvad.Vad(config.aggressiveness)
    frame_len = VAD_RATE_HZ * config.frame_ms // 1000
    return [
        vad.is_speech(samples[start : start + frame_len].tobytes(), VAD_RATE_HZ)
        for start in range(0, len(samples) - frame_len + 1, frame_len)
    ]


@pytest.mark.parametrize("name", ONSET_FILES)
def test_voice_onset_within_80_ms_of_speech(silero: SileroModel, name: str) -> None:
    speech = load(name)
    speech_start_s = 1.0 + loud_onset_s(speech)

    timed = replay(np.concatenate([zeros(1.0), speech, zeros(1.5)]), silero)
    onsets = of_type(timed, VoiceOnset)

    # webrtcvad alone reports it, so a breath or click just before the word may come first.
    assert onsets
    assert onsets[0].at_s - speech_start_s <= 0.08 + 1e-9


@pytest.mark.parametrize("name", ONSET_FILES)
def test_voice_onset_comes_before_speech_started(silero: SileroModel, name: str) -> None:
    timed = replay(np.concatenate([zeros(1.0), load(name), zeros(1.5)]), silero)
    onsets = of_type(timed, VoiceOnset)
    started = of_type(timed, SpeechStarted)

    assert onsets
    assert started
    assert onsets[0].at_s < started[0].at_s
    assert timed.index(onsets[0]) < timed.index(started[0])


@pytest.mark.parametrize("name", SENTENCE_FILES)
def test_speech_confirmed_after_600_ms_of_speech(silero: SileroModel, name: str) -> None:
    speech = load(name)
    speech_start_s = 1.0 + loud_onset_s(speech)

    timed = replay(np.concatenate([zeros(1.0), speech, zeros(1.5)]), silero)
    confirmed = of_type(timed, SpeechConfirmed)

    assert len(confirmed) == 1
    assert isinstance(confirmed[0].event, SpeechConfirmed)
    assert confirmed[0].event.speech_ms == 600
    # The sentences run on without a pause for their first second.
    assert 0.58 <= confirmed[0].at_s - speech_start_s <= 0.72
    assert confirmed[0].at_s < of_type(timed, Utterance)[0].at_s


@pytest.mark.parametrize("name", SENTENCE_FILES)
def test_no_speech_faded_once_confirmed(silero: SileroModel, name: str) -> None:
    timed = replay(np.concatenate([zeros(1.0), load(name), zeros(1.5)]), silero)
    confirmed_at_s = of_type(timed, SpeechConfirmed)[0].at_s

    assert [item for item in of_type(timed, SpeechFaded) if item.at_s > confirmed_at_s] == []


@pytest.mark.parametrize("name", ONE_WORD_FILES)
def test_one_word_answer_is_a_turn_not_confirmed(silero: SileroModel, name: str) -> None:
    timed = replay(np.concatenate([zeros(1.0), load(name), zeros(1.5)]), silero)

    assert len(of_type(timed, Utterance)) == 1
    assert of_type(timed, SpeechConfirmed) == []


@pytest.mark.parametrize("burst_ms", [40, 60])
def test_speech_faded_comes_pause_ms_after_voice(burst_ms: int) -> None:
    # A 40 ms burst stays under onset_ms, so no utterance opens; a 60 ms one opens one
    # through webrtcvad's hangover. Both must fade pause_ms after the last voiced frame.
    config = SegmenterConfig()
    stream = np.concatenate([zeros(1.0), noise_burst(burst_ms), zeros(1.0)])
    flags = webrtcvad_flags(stream, config)
    last_voiced_end_s = (len(flags) - flags[::-1].index(True)) * config.frame_ms / 1000

    faded = of_type(replay(stream, None, config), SpeechFaded)

    assert len(faded) == 1
    assert faded[0].at_s == pytest.approx(last_voiced_end_s + config.pause_ms / 1000)


def test_cough_is_noise_to_silero(silero: SileroModel) -> None:
    config = SegmenterConfig()
    for seed, duration_ms in enumerate((150, 200, 250)):
        stream = np.concatenate([zeros(0.5), cough(duration_ms, seed), zeros(0.5)])
        flags = webrtcvad_flags(stream, config)

        # webrtcvad alone takes the cough for speech: that is what Silero is there for.
        assert sum(flags) * config.frame_ms >= duration_ms // 2
        assert max(silero.stream().push(stream)) < config.silero_noise_threshold


@pytest.mark.parametrize(
    "bursts",
    [
        pytest.param([noise_burst(300)], id="noise-300ms"),
        pytest.param([cough(200, seed) for seed in range(4)], id="four-coughs"),
    ],
)
def test_noise_bursts_give_no_turn_with_silero(
    silero: SileroModel, bursts: list[np.ndarray]
) -> None:
    pieces = [zeros(0.5)]
    for burst in bursts:
        pieces += [burst, zeros(0.15)]
    stream = np.concatenate([*pieces, zeros(1.5)])

    with_silero = replay(stream, silero)
    webrtcvad_only = replay(stream, None)

    assert of_type(with_silero, SpeechConfirmed) == []
    assert of_type(with_silero, Utterance) == []
    # The same audio makes a turn when webrtcvad alone judges it.
    assert len(of_type(webrtcvad_only, Utterance)) == 1


def test_kitchen_noise_gives_no_turn_with_silero(silero: SileroModel) -> None:
    kitchen = load(KITCHEN)

    with_silero = replay(kitchen, silero)

    assert of_type(with_silero, Utterance) == []
    assert of_type(with_silero, SpeechConfirmed) == []
    assert len(of_type(replay(kitchen, None), Utterance)) >= 1


def test_silero_events_same_for_any_push_size(silero: SileroModel) -> None:
    stream = np.concatenate([zeros(0.5), load(LIBRISPEECH_SENTENCE), zeros(1.5)])

    def summary(events: list[SegmenterEvent]) -> list[tuple[str, float, float]]:
        return [
            (
                type(event).__name__,
                getattr(event, "start_s", -1.0),
                getattr(event, "speech_end_s", -1.0),
            )
            for event in events
        ]

    timed = replay(stream, silero)
    pieces = summary([item.event for item in timed])
    whole = summary(UtteranceSegmenter(SegmenterConfig(), silero).push(stream))
    # 777 samples (48.6 ms) never line up with the 20 ms frames or Silero's 32 ms windows.
    segmenter = UtteranceSegmenter(SegmenterConfig(), silero)
    uneven: list[SegmenterEvent] = []
    for start in range(0, len(stream), 777):
        uneven += segmenter.push(stream[start : start + 777])

    assert len(of_type(timed, Utterance)) == 1
    assert whole == pieces
    assert summary(uneven) == pieces


# -- quick end of turn


@pytest.fixture(scope="module")
def sentence_stream() -> np.ndarray:
    return np.concatenate([zeros(0.5), load(LIBRISPEECH_SENTENCE), zeros(2.0)])


def test_turn_ends_at_end_silence_without_quick_end(
    silero: SileroModel, sentence_stream: np.ndarray
) -> None:
    config = SegmenterConfig()

    found = of_type(replay(sentence_stream, silero, config), Utterance)

    assert len(found) == 1
    utterance = found[0].event
    assert isinstance(utterance, Utterance)
    assert utterance.quick_end is False
    assert found[0].at_s == pytest.approx(utterance.speech_end_s + config.end_silence_ms / 1000)


def test_allow_quick_end_ends_at_quick_end_ms(
    silero: SileroModel, sentence_stream: np.ndarray
) -> None:
    config = SegmenterConfig()

    found = of_type(replay(sentence_stream, silero, config, lambda pause: 0.0), Utterance)

    assert len(found) == 1
    utterance = found[0].event
    assert isinstance(utterance, Utterance)
    assert utterance.quick_end is True
    assert found[0].at_s == pytest.approx(utterance.speech_end_s + config.quick_end_ms / 1000)


def test_late_allow_quick_end_ends_turn_at_once(
    silero: SileroModel, sentence_stream: np.ndarray
) -> None:
    # The transcript arrives 500 ms after the pause event, well past quick_end_ms.
    timed = replay(sentence_stream, silero, SegmenterConfig(), lambda pause: 0.5)
    last_pause_at_s = of_type(timed, SpeechPaused)[-1].at_s
    found = of_type(timed, Utterance)

    assert len(found) == 1
    assert isinstance(found[0].event, Utterance)
    assert found[0].event.quick_end is True
    assert last_pause_at_s + 0.5 <= found[0].at_s <= last_pause_at_s + 0.52 + 1e-9


@pytest.fixture(scope="module")
def two_sentences() -> tuple[np.ndarray, float]:
    """Return two sentences 400 ms apart, and the time at which the second one starts."""
    first = loud_span(load(LIBRISPEECH_QUESTION))
    second = loud_span(load(LIBRISPEECH_SENTENCE))
    lead = np.concatenate([zeros(0.5), first, zeros(0.4)])
    return np.concatenate([lead, second, zeros(2.0)]), len(lead) / VAD_RATE_HZ


def test_inner_pause_alone_keeps_one_turn(
    silero: SileroModel, two_sentences: tuple[np.ndarray, float]
) -> None:
    stream, second_start_s = two_sentences

    timed = replay(stream, silero)

    assert len(of_type(timed, Utterance)) == 1
    assert any(item.event.speech_end_s < second_start_s for item in of_type(timed, SpeechPaused))


def test_allow_quick_end_in_inner_pause_ends_turn(
    silero: SileroModel, two_sentences: tuple[np.ndarray, float]
) -> None:
    stream, second_start_s = two_sentences

    found = of_type(replay(stream, silero, quick_end_after_s=lambda pause: 0.0), Utterance)

    assert len(found) == 2
    first = found[0].event
    assert isinstance(first, Utterance)
    assert first.quick_end is True
    assert first.speech_end_s < second_start_s


def test_allow_quick_end_ignored_after_speech_resumed(
    silero: SileroModel, two_sentences: tuple[np.ndarray, float]
) -> None:
    stream, second_start_s = two_sentences
    inner: list[Timed] = []

    def late_for_inner_pause(pause: Timed) -> float | None:
        # The inner pause's transcript lands once the second sentence is under way.
        assert isinstance(pause.event, SpeechPaused)
        if pause.event.speech_end_s >= second_start_s:
            return None
        inner.append(pause)
        return second_start_s + 0.3 - pause.at_s

    config = SegmenterConfig()
    found = of_type(replay(stream, silero, config, late_for_inner_pause), Utterance)

    assert inner
    assert len(found) == 1
    utterance = found[0].event
    assert isinstance(utterance, Utterance)
    assert utterance.quick_end is False
    assert found[0].at_s == pytest.approx(utterance.speech_end_s + config.end_silence_ms / 1000)
