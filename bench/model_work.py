"""Time one turn's model work in this process, with no server, WebRTC or database:
Whisper on the utterance, the language model up to its first spoken chunk, and piper on
that chunk."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import numpy as np

from media.file_track import find_speech_end_s
from media.frames import read_audio_file
from media.stt import STT_RATE_HZ, SpeechToText
from media.stt import default_model_path as default_stt_model
from media.tts import TextToSpeech, default_voice_path
from server.chunking import ReplyChunk, ReplyChunker
from server.llm.base import ChatMessage, GenerationOptions
from server.llm.llama_chat import LlamaChatModel
from server.llm.llama_chat import default_model_path as default_llm_path
from server.prompts import tutor_system_prompt
from server.settings import Settings

# The call segmenter keeps 150 ms of silence after the last voiced frame of an
# utterance.
UTTERANCE_TAIL_S = 0.15


@dataclass(frozen=True)
class ModelWork:
    transcript: str
    first_chunk_text: str
    stt_ms: float
    first_clause_ms: float
    tts_ms: float

    @property
    def total_ms(self) -> float:
        return self.stt_ms + self.first_clause_ms + self.tts_ms


class TurnModels:
    """Whisper, piper and llama.cpp, built as the server builds them by default."""

    def __init__(self, level: str, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.level = level
        self.stt = SpeechToText(
            self.settings.stt_model or default_stt_model(),
            compute_type=self.settings.stt_compute_type,
            threads=self.settings.stt_threads,
            language=self.settings.stt_language,
            beam_size=self.settings.stt_beam_size,
        )
        self.tts = TextToSpeech(
            self.settings.tts_voice or default_voice_path(),
            length_scale=self.settings.tts_length_scale,
        )
        self.llm = LlamaChatModel(
            self.settings.llm_model_path or default_llm_path(),
            context_tokens=self.settings.llm_context_tokens,
            threads=self.settings.llm_threads,
        )

    async def load(self) -> None:
        """Load the three models one after another, each with its own warm-up.

        Each model loads and runs on its own worker thread, as in the server, so its
        threads run at the server's lowered priority (media/priority.py) against other
        work on the machine.
        """
        await self.stt.open()
        await self.tts.open()
        # The server warms the prefix cache with this prompt too, so the first turn of
        # each side starts from the same cache.
        await self.llm.open(tutor_system_prompt(self.level))

    async def close(self) -> None:
        await self.llm.close()
        self.stt.close()
        self.tts.close()

    async def time_turn(self, audio_path: str, user_text: str | None = None) -> ModelWork:
        """Time STT of the file's speech, then the first clause and its TTS.

        The language model gets user_text when given (the transcript the server used),
        else this process's own transcript.
        """
        samples = await asyncio.to_thread(read_utterance, audio_path)
        started = time.perf_counter()
        transcript = await self.stt.transcribe(samples)
        stt_ms = _ms_since(started)

        chunk, first_clause_ms = await self.time_first_clause(user_text or transcript.text)

        started = time.perf_counter()
        await self.tts.synthesize(chunk.text)
        tts_ms = _ms_since(started)
        return ModelWork(transcript.text, chunk.text, stt_ms, first_clause_ms, tts_ms)

    async def time_first_clause(self, user_text: str) -> tuple[ReplyChunk, float]:
        """Stream a reply as the server does; return its first chunk and the time in ms
        from the request to that chunk."""
        messages = [
            ChatMessage("system", tutor_system_prompt(self.level)),
            ChatMessage("user", user_text),
        ]
        options = GenerationOptions(
            max_tokens=self.settings.llm_max_reply_tokens,
            temperature=self.settings.llm_temperature,
        )
        chunker = ReplyChunker(first_chunk_words=self.settings.first_chunk_words)
        started = time.perf_counter()
        stream = self.llm.stream_chat(messages, options)
        # aclosing: leaving the loop at the first chunk stops the model's thread.
        async with contextlib.aclosing(stream):
            async for text in stream:
                chunks = chunker.feed(text)
                if chunks:
                    return chunks[0], _ms_since(started)
        chunks = chunker.finish()
        if not chunks:
            raise RuntimeError(f"{self.llm.name} returned no text to speak for {user_text!r}")
        return chunks[0], _ms_since(started)


def read_utterance(audio_path: str) -> np.ndarray:
    """Read the file at 16 kHz, up to its end of speech plus the tail that a call
    utterance keeps."""
    samples = read_audio_file(audio_path, STT_RATE_HZ)
    end_s = find_speech_end_s(samples)
    if end_s <= 0:
        return samples
    return samples[: int((end_s + UTTERANCE_TAIL_S) * STT_RATE_HZ)]


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
