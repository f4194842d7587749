"""Pick the language model backend at start-up: Ollama when it responds, else llama.cpp."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

from server.llm.base import ChatMessage, ChatModel, GenerationOptions, LLMUnavailableError
from server.llm.llama_chat import LlamaChatModel, default_model_path
from server.llm.ollama_chat import OllamaChatModel
from server.prompts import tutor_system_prompt
from server.settings import Settings

logger = logging.getLogger(__name__)


class UnavailableChatModel:
    """Stands in when no backend could be started, so every reply fails with a clear reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    @property
    def name(self) -> str:
        return "unavailable"

    async def stream_chat(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncGenerator[str, None]:
        raise LLMUnavailableError(self.reason)
        yield ""  # unreachable; makes this function an async generator

    async def close(self) -> None:
        return None


async def open_chat_model(settings: Settings) -> ChatModel:
    settings.validate()

    if settings.llm_backend in ("auto", "ollama"):
        ollama_model = OllamaChatModel(settings.ollama_host, settings.ollama_model)
        try:
            available = await ollama_model.probe(settings.ollama_probe_timeout_s)
        except LLMUnavailableError as exc:
            await ollama_model.close()
            if settings.llm_backend == "ollama":
                logger.error("%s; every reply will fail with llm_unavailable", exc)
                return UnavailableChatModel(str(exc))
            logger.info("%s; using the embedded model", exc)
        else:
            if not any(
                name.split(":")[0] == settings.ollama_model.split(":")[0] for name in available
            ):
                logger.warning(
                    "Ollama at %s has no model %r: run `ollama pull %s`",
                    settings.ollama_host,
                    settings.ollama_model,
                    settings.ollama_model,
                )
            logger.info("language model: %s at %s", ollama_model.name, settings.ollama_host)
            return ollama_model

    model_path = settings.llm_model_path or default_model_path()
    llama_model = LlamaChatModel(
        model_path, context_tokens=settings.llm_context_tokens, threads=settings.llm_threads
    )
    try:
        await llama_model.open(tutor_system_prompt("A1"))
    except Exception as exc:
        reason = f"embedded model {model_path} failed to load: {exc}"
        logger.error("%s; every reply will fail with llm_unavailable", reason)
        return UnavailableChatModel(reason)
    logger.info("language model: %s", llama_model.name)
    return llama_model
