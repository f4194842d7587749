"""A stand-in Ollama server on loopback that speaks Ollama's HTTP protocol.

It serves `/api/tags`, `/api/version` and streaming `/api/chat` (newline-delimited JSON,
one message piece per line, then a `done` line), so the real `ollama` client uses it
exactly as it uses Ollama. Tests queue scripted replies; a script can stop mid-reply by cutting
the connection, as a crashed Ollama would.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "tutor:latest"


@dataclass
class ScriptedReply:
    pieces: list[str]
    delay_s: float = 0.01
    # Cut the connection after this many pieces instead of finishing.
    fail_after: int | None = None


@dataclass
class OllamaStandIn:
    replies: deque[ScriptedReply] = field(default_factory=deque)
    default_reply: ScriptedReply = field(
        default_factory=lambda: ScriptedReply(
            ["[happy] Hello", " there!", " [curious] How", " are you *today*?"]
        )
    )
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/version", self._version)
        app.router.add_post("/api/chat", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _tags(self, request: web.Request) -> web.Response:
        model = {
            "name": MODEL,
            "model": MODEL,
            "modified_at": "2026-01-01T00:00:00Z",
            "size": 1,
            "digest": "0" * 64,
            "details": {"format": "gguf", "family": "llama", "parameter_size": "135M"},
        }
        return web.json_response({"models": [model]})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-standin"})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if body.get("model") != MODEL:
            return web.json_response(
                {"error": f"model '{body.get('model')}' not found"}, status=404
            )
        script = self.replies.popleft() if self.replies else self.default_reply

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for index, piece in enumerate(script.pieces):
            if script.fail_after is not None and index >= script.fail_after:
                # Drop the connection mid-body, as a crashed server would.
                if request.transport is not None:
                    request.transport.abort()
                return response
            await asyncio.sleep(script.delay_s)
            await response.write(_line(piece, done=False))
        await response.write(_line("", done=True))
        await response.write_eof()
        return response


def _line(content: str, *, done: bool) -> bytes:
    payload: dict[str, Any] = {
        "model": MODEL,
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": done,
    }
    if done:
        payload.update(done_reason="stop", total_duration=1, prompt_eval_count=10, eval_count=5)
    return (json.dumps(payload) + "\n").encode()
