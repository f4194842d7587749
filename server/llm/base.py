"""The one interface every language model backend implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int = 160
    temperature: float = 0.6
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    # Another model of the same backend for this reply; None uses the server's.
    model: str | None = None


class LLMUnavailableError(Exception):
    """The model could not be reached or failed while generating; a retry may succeed."""


class ChatModel(Protocol):
    @property
    def name(self) -> str: ...

    def stream_chat(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncGenerator[str, None]:
        """Yield the reply's text as it is generated; raise LLMUnavailableError on failure."""
        ...

    async def close(self) -> None: ...
