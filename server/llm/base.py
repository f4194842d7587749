"""The one interface every language model backend implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass
class PromptUsage:
    """Token counts a backend reports for one generation; None where it reports none."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int = 160
    temperature: float = 0.6
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    # Another model of the same backend for this reply; None uses the server's.
    model: str | None = None
    # The context window to ask for, in tokens (Ollama's num_ctx); None keeps the backend's.
    context_tokens: int | None = None
    # Filled in by backends that report token counts (Ollama does, at the end of a reply).
    usage: PromptUsage | None = field(default=None, compare=False)


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
