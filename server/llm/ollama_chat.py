"""Chat through an Ollama server with the official `ollama` client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import httpx
import ollama

from server.llm.base import ChatMessage, GenerationOptions, LLMUnavailableError

logger = logging.getLogger(__name__)


class OllamaChatModel:
    def __init__(self, host: str, model: str) -> None:
        self.host = host
        self.model = model
        self._client = ollama.AsyncClient(host=host)

    @property
    def name(self) -> str:
        return f"ollama:{self.model}"

    async def probe(self, timeout_s: float) -> list[str]:
        """Return the models the server has; raise LLMUnavailableError if it does not answer."""
        try:
            listing = await asyncio.wait_for(self._client.list(), timeout_s)
        except (TimeoutError, httpx.HTTPError, ollama.ResponseError, ConnectionError) as exc:
            raise LLMUnavailableError(f"no Ollama server responded at {self.host}: {exc}") from exc
        return [str(entry.model) for entry in listing.models]

    async def stream_chat(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncGenerator[str, None]:
        payload = [{"role": m.role, "content": m.content} for m in messages]
        settings: dict[str, float | int] = {
            "num_predict": options.max_tokens,
            "temperature": options.temperature,
        }
        for name in ("top_p", "frequency_penalty", "presence_penalty"):
            value = getattr(options, name)
            if value is not None:
                settings[name] = value
        if options.context_tokens is not None:
            settings["num_ctx"] = options.context_tokens
        model = options.model or self.model
        try:
            stream = await self._client.chat(
                model=model, messages=payload, stream=True, options=settings
            )
            async for part in stream:
                text = part.message.content
                if text:
                    yield text
                if part.done and options.usage is not None:
                    options.usage.prompt_tokens = part.prompt_eval_count
                    options.usage.completion_tokens = part.eval_count
        except ollama.ResponseError as exc:
            raise LLMUnavailableError(
                f"Ollama at {self.host} rejected model {model!r}: {exc.error}"
            ) from exc
        except (httpx.HTTPError, ConnectionError, ValueError) as exc:
            # ValueError covers a stream cut off mid-line (invalid JSON from the client).
            raise LLMUnavailableError(
                f"Ollama at {self.host} failed during the reply: {exc!r}"
            ) from exc

    async def close(self) -> None:
        # The client owns an httpx.AsyncClient; closing it releases its connections.
        await self._client._client.aclose()
