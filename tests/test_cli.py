"""The `parley` command as a user runs it: clear one-line errors, `call --json`, and
`user create`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from storage.users import user_for_token
from tests.conftest import REPO_DIR, RunningServer, free_port, speech_file

SUMMARY_KEYS = {
    "conversation_id",
    "user_transcript",
    "reply_text",
    "reply_audio_seconds",
    "first_audio_ms",
    "events",
    "errors",
}


def run_parley(*args: str, timeout_s: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=REPO_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_call_with_missing_file_fails_cleanly(tmp_path: Path) -> None:
    result = run_parley("call", "--token", "t", "--audio", str(tmp_path / "nope.wav"))
    assert result.returncode == 1
    assert "nope.wav not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_call_to_absent_server_fails_cleanly() -> None:
    audio = str(speech_file("speechcommands_yes_1s_en.wav"))
    result = run_parley(
        "call", "--token", "t", "--audio", audio, "--server", f"http://127.0.0.1:{free_port()}"
    )
    assert result.returncode == 1
    assert "call to http://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_taken_port_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_parley(
            "serve", "--port", str(port), timeout_s=30, PARLEY_DATA_DIR=str(tmp_path)
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "postgres").exists(), "nothing starts before the port is checked"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PARLEY_VAD_AGGRESSIVENESS", "9", "aggressiveness 9 is invalid"),
        ("PARLEY_VAD_PAUSE_MS", "5000", "must be shorter than end_silence_ms"),
        ("PARLEY_VAD_END_SILENCE_MS", "-5", "cannot be negative"),
        ("PARLEY_LLM_BACKEND", "bogus", "PARLEY_LLM_BACKEND='bogus' is invalid"),
        (
            "PARLEY_TTS_VOICE",
            "/nope/voice.onnx",
            "PARLEY_TTS_VOICE='/nope/voice.onnx' is not found",
        ),
        ("PARLEY_LOG_LEVEL", "LOUD", "PARLEY_LOG_LEVEL='LOUD' is invalid"),
        ("PARLEY_PORT", "70000", "PARLEY_PORT=70000 is invalid"),
        ("PARLEY_EMBEDDINGS", "cloud", "PARLEY_EMBEDDINGS='cloud' is invalid"),
        ("PARLEY_MEMORY_SUMMARY_BATCH", "0", "PARLEY_MEMORY_SUMMARY_BATCH=0 is invalid"),
        (
            "PARLEY_MEMORY_SUMMARY_INPUT_TOKENS",
            "50",
            "PARLEY_MEMORY_SUMMARY_INPUT_TOKENS=50 is invalid",
        ),
    ],
)
def test_serve_rejects_bad_setting(tmp_path: Path, variable: str, value: str, message: str) -> None:
    env = {"PARLEY_DATA_DIR": str(tmp_path), "PARLEY_PORT": str(free_port()), variable: value}
    result = run_parley("serve", timeout_s=60, **env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_call_json_prints_summary(embedded_server: RunningServer) -> None:
    audio = str(speech_file("librispeech_251-137823-0003_en.wav"))
    result = run_parley(
        "call",
        "--audio",
        audio,
        "--server",
        embedded_server.url,
        "--json",
        PARLEY_TOKEN=embedded_server.token,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == SUMMARY_KEYS
    assert "another engineer" in summary["user_transcript"].lower()
    assert summary["reply_text"]
    # SmolLM2's sampled reply may be as short as "What's that?" (0.5 s of speech).
    assert summary["reply_audio_seconds"] >= 0.3, summary
    # Interim transcripts are live only and may come anywhere before the message.
    logged = [name for name in summary["events"] if name != "transcript:interim"]
    assert logged[:3] == ["conversation:created", "recording:started", "message:received"]
    assert summary["errors"] == []


async def test_user_create_prints_working_token(fresh_database: str) -> None:
    created = await asyncio.to_thread(
        run_parley, "user", "create", "maria", DATABASE_URL=fresh_database
    )
    again = await asyncio.to_thread(
        run_parley, "user", "create", "maria", DATABASE_URL=fresh_database
    )
    second = await asyncio.to_thread(
        run_parley, "user", "token", "maria", DATABASE_URL=fresh_database
    )
    missing = await asyncio.to_thread(
        run_parley, "user", "token", "nobody", DATABASE_URL=fresh_database
    )
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=1)
    try:
        first_user = await user_for_token(pool, created.stdout.strip())
        second_user = await user_for_token(pool, second.stdout.strip())
    finally:
        await pool.close()

    assert created.returncode == 0, created.stderr
    assert first_user is not None and first_user["name"] == "maria"
    assert second_user is not None and second_user["id"] == first_user["id"]
    assert again.returncode == 1
    assert "user 'maria' already exists" in again.stderr
    assert missing.returncode == 1
    assert "user 'nobody' not found" in missing.stderr
    assert "Traceback" not in again.stderr + missing.stderr


def test_call_without_token_fails_cleanly() -> None:
    audio = str(speech_file("speechcommands_yes_1s_en.wav"))
    env = {key: value for key, value in os.environ.items() if key != "PARLEY_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "call", "--audio", audio],
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert "a token is required" in result.stderr
