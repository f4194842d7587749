"""Server settings, read from environment variables with built-in defaults.

Every setting has an environment variable; `parley serve` flags override a few of them.
The defaults run Parley with nothing to set up: an embedded PostgreSQL, Whisper tiny.en,
the joe piper voice and SmolLM2 through llama.cpp, all shipped by PyPI packages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs


class SettingsError(ValueError):
    """An environment variable contains a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    # HTTP
    host: str = "127.0.0.1"
    port: int = 8080
    # "uvloop" (libuv) or "asyncio" (the standard library's loop).
    event_loop: str = "uvloop"

    # Storage: with database_url unset, an embedded PostgreSQL runs in data_dir/postgres.
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("parley")))
    database_url: str | None = None
    db_pool_max_size: int = 10
    # Record every call whose conversation allows it (docs/recording.md).
    record_calls: bool = True

    # Language model: "auto" uses Ollama when it responds at ollama_host, else llama.cpp.
    llm_backend: str = "auto"
    ollama_host: str = "http://127.0.0.1:11434"
    ollama_model: str = "smollm2:135m"
    # Ollama models a conversation may choose in its aiSettings; empty allows only
    # ollama_model, so one user cannot load arbitrary models on a shared Ollama.
    ollama_allowed_models: tuple[str, ...] = ()
    ollama_probe_timeout_s: float = 2.0
    llm_model_path: str = ""
    llm_context_tokens: int = 2048
    llm_threads: int = 0
    llm_max_reply_tokens: int = 120
    # Generation stops after this many sentences: a spoken turn, not an essay.
    llm_max_reply_sentences: int = 4
    # Also a cap on chunks, for replies that run on in clauses without a full stop.
    llm_max_reply_chunks: int = 12
    llm_temperature: float = 0.6
    # The first chunk of a reply is cut after this many words, mid-sentence if need be,
    # because the caller hears nothing until it is synthesised. Fewer words reply sooner
    # (about 40 ms a word on 2 cores) at some cost to the first phrase's intonation.
    first_chunk_words: int = 4

    # Conversation memory. Ollama's context window, sent as num_ctx with every request.
    ollama_context_tokens: int = 4096
    # Where message embeddings come from: "auto" (Ollama's embed endpoint when Ollama serves
    # the chat model, else the packaged all-MiniLM-L6-v2), "ollama", "local" or "off".
    embeddings: str = "auto"
    ollama_embed_model: str = "all-minilm"
    # Messages retrieved by similarity at most, under the semantic strategy.
    memory_semantic_top_k: int = 8
    # Conversations whose embeddings stay in memory for similarity search.
    memory_index_conversations: int = 64
    # Background summaries wait until no reply or turn has run for this long.
    memory_quiet_s: float = 1.0
    # A new summary folds in at least this many messages that left the recent window.
    memory_summary_batch: int = 10
    # Messages given to the model for one summary, in tokens; a longer backlog takes
    # several summaries. Keep it well inside the model's context window.
    memory_summary_input_tokens: int = 1000
    memory_summary_words: int = 120
    # Wait before retrying a summary or fact extraction that failed.
    memory_retry_s: float = 30.0
    # A summary, fact extraction or embedding batch running longer than this is stopped and
    # retried later, so one stalled request cannot hold every conversation's memory work.
    memory_step_timeout_s: float = 300.0

    # Speech to text: a faster-whisper model name ("small", "base.en") or a model folder.
    stt_model: str = ""
    stt_compute_type: str = "int8"
    stt_threads: int = 0
    stt_language: str = "en"
    stt_beam_size: int = 1

    # Text to speech: a piper voice .onnx path (its .onnx.json beside it).
    tts_voice: str = ""
    tts_length_scale: float = 1.0

    # Turn-taking: webrtcvad proposes speech and silence, Silero confirms (docs/turn-taking.md
    # explains each value and how the defaults were measured).
    vad_aggressiveness: int = 2
    vad_frame_ms: int = 20
    vad_onset_ms: int = 140
    vad_preroll_ms: int = 500
    # The maximum pause inside a turn. A turn whose words read as a finished sentence ends
    # after vad_quick_end_ms instead.
    vad_end_silence_ms: int = 1000
    vad_quick_end_ms: int = 300
    vad_pause_ms: int = 160
    vad_min_utterance_ms: int = 300
    vad_max_utterance_s: float = 15.0
    vad_silero_threshold: float = 0.5
    vad_silero_noise_threshold: float = 0.35
    # Interim transcripts of speech in progress, at most one per this many seconds.
    interim_transcript_s: float = 1.0
    # Barge-in: a reply pauses after this much of the caller's speech ...
    barge_in_onset_ms: int = 40
    # ... and is cut once the caller has spoken this long; shorter speech (a cough, an
    # "mm-hm") lets it resume.
    barge_in_min_speech_ms: int = 600
    # The first audio of a call that no speech can interrupt, while the caller's echo
    # canceller learns the echo of our voice.
    barge_in_echo_grace_ms: int = 1000
    # A paused reply resumes after this long if the caller's speech neither stops nor
    # confirms.
    barge_in_resume_ms: int = 1500

    # WebRTC: no ICE servers by default, so nothing leaves the machine unless configured.
    ice_servers: tuple[str, ...] = ()
    media_addresses: tuple[str, ...] = ()
    # Inbound audio frames held back against reordering: 2 frames of 20 ms.
    jitter_prefetch_packets: int = 2
    call_idle_timeout_s: float = 60.0
    call_turn_queue_size: int = 4
    max_offer_bytes: int = 64 * 1024

    # Client events, on a call's data channel or on /ws.
    # Maximum length of a text message a client may send, in characters.
    max_message_chars: int = 4000
    # Largest event in bytes, except a voice message:send, which may be max_voice_event_bytes.
    max_event_bytes: int = 16 * 1024
    max_voice_event_bytes: int = 4 * 1024 * 1024
    max_voice_s: float = 60.0
    # Each connection may send this many events a second on average, in bursts of burst.
    client_events_per_s: float = 20.0
    client_event_burst: int = 40
    # Events waiting to be written to a slow client; past this the connection is closed
    # and the client catches up with afterSeq when it reconnects.
    client_outbox_size: int = 2048
    # Replies running or waiting per conversation; a message:send past this is rejected.
    max_waiting_replies: int = 4

    @property
    def audio_dir(self) -> Path:
        return self.data_dir / "audio"

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def effective_media_addresses(self) -> tuple[str, ...]:
        """Addresses for WebRTC media: the setting, or loopback when HTTP is loopback-only,
        since no remote peer can reach such a server anyway."""
        if self.media_addresses:
            return self.media_addresses
        if self.host in ("127.0.0.1", "localhost"):
            return ("127.0.0.1",)
        if self.host == "::1":
            return ("::1",)
        return ()

    def validate(self) -> None:
        """Raise SettingsError for values that would only fail later, after start-up work."""
        if not 0 < self.port < 65536:
            raise SettingsError(f"PARLEY_PORT={self.port} is invalid: use 1-65535")
        for variable, number in (
            ("PARLEY_INTERIM_TRANSCRIPT_S", self.interim_transcript_s),
            ("PARLEY_BARGE_IN_ECHO_GRACE_MS", self.barge_in_echo_grace_ms),
        ):
            if number < 0:
                raise SettingsError(f"{variable}={number} is invalid: it cannot be negative")
        if self.barge_in_resume_ms <= 0:
            raise SettingsError(
                f"PARLEY_BARGE_IN_RESUME_MS={self.barge_in_resume_ms} is invalid: use 1 or more"
            )
        if not 1 <= self.jitter_prefetch_packets <= 8:
            raise SettingsError(
                f"PARLEY_JITTER_PREFETCH_PACKETS={self.jitter_prefetch_packets} is invalid: use 1-8"
            )
        if self.embeddings not in EMBEDDING_SOURCES:
            raise SettingsError(
                f"PARLEY_EMBEDDINGS={self.embeddings!r} is invalid: use one of "
                + ", ".join(EMBEDDING_SOURCES)
            )
        for variable, number in (
            ("PARLEY_MEMORY_SUMMARY_BATCH", self.memory_summary_batch),
            ("PARLEY_MEMORY_INDEX_CONVERSATIONS", self.memory_index_conversations),
            ("PARLEY_MEMORY_SEMANTIC_TOP_K", self.memory_semantic_top_k),
            ("PARLEY_MEMORY_SUMMARY_WORDS", self.memory_summary_words),
            ("PARLEY_OLLAMA_CONTEXT_TOKENS", self.ollama_context_tokens),
        ):
            if number < 1:
                raise SettingsError(f"{variable}={number} is invalid: use 1 or more")
        if self.memory_summary_input_tokens < 100:
            raise SettingsError(
                f"PARLEY_MEMORY_SUMMARY_INPUT_TOKENS={self.memory_summary_input_tokens} "
                "is invalid: use 100 or more"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(
                f"PARLEY_EVENT_LOOP={self.event_loop!r} is invalid: use uvloop or asyncio"
            )
        if self.llm_backend not in LLM_BACKENDS:
            raise SettingsError(
                f"PARLEY_LLM_BACKEND={self.llm_backend!r} is invalid: use one of "
                + ", ".join(LLM_BACKENDS)
            )
        for name, value in (
            ("PARLEY_LLM_MODEL_PATH", self.llm_model_path),
            ("PARLEY_TTS_VOICE", self.tts_voice),
        ):
            if value and not Path(value).is_file():
                raise SettingsError(f"{name}={value!r} is not found: give the path of a file")
        stt_path = Path(self.stt_model).expanduser()
        if "/" in self.stt_model and not stt_path.is_dir():
            raise SettingsError(
                f"PARLEY_STT_MODEL={self.stt_model!r} is not found: give a model folder "
                "or a faster-whisper model name such as 'small.en'"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from PARLEY_* variables (plus DATABASE_URL and OLLAMA_HOST)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = _ENV_NAMES.get(spec.name, "PARLEY_" + spec.name.upper())
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[spec.name] = _convert(name, raw, spec.type)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


LLM_BACKENDS = ("auto", "ollama", "embedded")
EMBEDDING_SOURCES = ("auto", "ollama", "local", "off")
EVENT_LOOPS = ("uvloop", "asyncio")

# Settings that keep the names their ecosystems already use.
_ENV_NAMES = {"database_url": "DATABASE_URL", "ollama_host": "OLLAMA_HOST"}


def _convert(name: str, raw: str, type_name: Any) -> Any:
    kind = str(type_name)
    if kind == "bool":
        return _convert_bool(name, raw)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw).expanduser()
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is invalid: expected {kind}") from exc
    return raw


def _convert_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is invalid: expected true or false")
