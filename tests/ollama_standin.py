"""A stand-in Ollama server on loopback that speaks Ollama's HTTP protocol.

It serves `/api/tags`, `/api/version`, streaming `/api/chat` (newline-delimited JSON,
one message piece per line, then a `done` line with token counts) and `/api/embed`, so the
real `ollama` client uses it exactly as it uses Ollama. Tests queue scripted replies or set
`answer` to choose one per request; a script can stop mid-reply by cutting the connection,
as a crashed Ollama would, or wait for an event before answering.

Its embeddings are hashed bags of words: texts sharing words are similar, which is all a
test of the retrieval path needs.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

MODEL = "tutor:latest"
EMBED_MODEL = "all-minilm:latest"
EMBED_DIMENSIONS = 256


@dataclass
class ScriptedReply:
    pieces: list[str]
    delay_s: float = 0.01
    # Cut the connection after this many pieces instead of finishing.
    fail_after: int | None = None
    # Hold the response until this event is set.
    wait_for: asyncio.Event | None = None


@dataclass
class OllamaStandIn:
    replies: deque[ScriptedReply] = field(default_factory=deque)
    default_reply: ScriptedReply = field(
        default_factory=lambda: ScriptedReply(
            ["[happy] Hello", " there!", " [curious] How", " are you *today*?"]
        )
    )
    requests: list[dict[str, Any]] = field(default_factory=list)
    embed_requests: list[dict[str, Any]] = field(default_factory=list)
    # Picks the reply to a request; None falls back to the queue and the default reply.
    answer: Callable[[dict[str, Any]], ScriptedReply | None] | None = None
    # Size of the embeddings it returns, and an event embed requests wait for when set.
    embed_dimensions: int = EMBED_DIMENSIONS
    embed_wait: asyncio.Event | None = None
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/version", self._version)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/embed", self._embed)
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
        embed_model = {**model, "name": EMBED_MODEL, "model": EMBED_MODEL}
        return web.json_response({"models": [model, embed_model]})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-standin"})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if body.get("model") != MODEL:
            return web.json_response(
                {"error": f"model '{body.get('model')}' not found"}, status=404
            )
        script = self.answer(body) if self.answer is not None else None
        if script is None:
            script = self.replies.popleft() if self.replies else self.default_reply

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        if script.wait_for is not None:
            await script.wait_for.wait()
        for index, piece in enumerate(script.pieces):
            if script.fail_after is not None and index >= script.fail_after:
                # Drop the connection mid-body, as a crashed server would.
                if request.transport is not None:
                    request.transport.abort()
                return response
            await asyncio.sleep(script.delay_s)
            try:
                await response.write(_line(piece, done=False))
            except ConnectionResetError:
                # The client stopped reading (a cancelled or preempted request).
                return response
        await response.write(_line("", done=True, prompt_tokens=prompt_tokens(body["messages"])))
        await response.write_eof()
        return response

    async def _embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.embed_requests.append(body)
        if body.get("model") != EMBED_MODEL:
            return web.json_response(
                {"error": f"model '{body.get('model')}' not found"}, status=404
            )
        if self.embed_wait is not None:
            await self.embed_wait.wait()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = [bag_of_words(text, self.embed_dimensions).tolist() for text in texts]
        return web.json_response({"model": EMBED_MODEL, "embeddings": vectors})


def bag_of_words(text: str, dimensions: int = EMBED_DIMENSIONS) -> np.ndarray:
    """A unit vector counting the text's lowercase words in hashed buckets."""
    vector = np.zeros(dimensions, dtype=np.float32)
    for word in re.findall(r"[a-z]+", text.lower()):
        vector[zlib.crc32(word.encode()) % dimensions] += 1.0
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """What this stand-in reports as prompt_eval_count: about 4.2 characters a token."""
    return sum(math.ceil(len(m["content"]) / 4.2) + 4 for m in messages)


def _line(content: str, *, done: bool, prompt_tokens: int = 10) -> bytes:
    payload: dict[str, Any] = {
        "model": MODEL,
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": done,
    }
    if done:
        payload.update(
            done_reason="stop", total_duration=1, prompt_eval_count=prompt_tokens, eval_count=5
        )
    return (json.dumps(payload) + "\n").encode()
