"""Prometheus metrics of the server, exposed on GET /metrics.

The metrics are module-level, as prometheus-client expects, in a registry of their own so
that nothing else registered in the process (a library's collectors) is exposed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

REGISTRY = CollectorRegistry()

# Per-turn stages as TurnClock.report() names them (milliseconds), and their label here.
TURN_STAGES = {
    "endOfTurnWait": "end_of_turn_wait",
    "stt": "stt",
    "llmFirstToken": "llm_first_token",
    "firstChunkReady": "first_chunk_ready",
    "ttsFirstAudio": "tts_first_audio",
    "firstAudioSent": "first_audio_sent",
}

TURN_STAGE_SECONDS = Histogram(
    "parley_turn_stage_seconds",
    "Time each stage of a reply took, from the server's turn clock, by turn source "
    "(call, voice message or text message)",
    ["stage", "source"],
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
    registry=REGISTRY,
)
TURNS = Counter(
    "parley_turns_total",
    "Replies that ended, by outcome (completed, failed, interrupted)",
    ["outcome"],
    registry=REGISTRY,
)
CALLS = Counter("parley_calls_total", "WebRTC calls accepted", registry=REGISTRY)
ACTIVE_CALLS = Gauge("parley_active_calls", "WebRTC calls in progress", registry=REGISTRY)
ERRORS = Counter(
    "parley_errors_total",
    "Errors sent to clients, as conversation:error events or HTTP error bodies, by code",
    ["code"],
    registry=REGISTRY,
)

BARGE_INS = Counter(
    "parley_barge_ins_total", "Replies cut because the caller spoke over them", registry=REGISTRY
)
BARGE_IN_PAUSE = Histogram(
    "parley_barge_in_pause_seconds",
    "From the arrival of the caller's speech over a reply to the reply's audio pausing",
    buckets=(0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5),
    registry=REGISTRY,
)
BACKCHANNELS = Counter(
    "parley_backchannels_total",
    "Short speech over a reply (a cough, an mm-hm) that paused it but did not cut it",
    registry=REGISTRY,
)
END_OF_TURN = Counter(
    "parley_end_of_turn_total",
    "Caller turns by how their end was found: quick (the words read as finished), "
    "silence (the longest pause passed) or max_length",
    ["mode"],
    registry=REGISTRY,
)


def observe_turn(outcome: str, source: str, timings_ms: Mapping[str, float | None]) -> None:
    """Count a reply and record the stages it reached."""
    TURNS.labels(outcome=outcome).inc()
    for name, label in TURN_STAGES.items():
        value = timings_ms.get(name)
        if value is not None:
            TURN_STAGE_SECONDS.labels(stage=label, source=source).observe(value / 1000)


def count_error(code: str) -> None:
    ERRORS.labels(code=code).inc()


def track_active_calls(count: Callable[[], int]) -> None:
    ACTIVE_CALLS.set_function(count)


async def handle_metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
