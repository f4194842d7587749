"""Keeping the model's prompt prefix warm between turns.

Backends keep the state of the last prompt they read (llama.cpp's prefix cache, Ollama's
loaded context), and reuse it for a new prompt as far as the two agree. After a reply, that
state ends with the model's raw output, while the next prompt carries the reply as stored
(without its tags, or cut where the caller interrupted), so without help the next turn
would read the reply again on its way to the first token. Reading the conversation as it
now stands, right after the reply, moves that work to while the caller is listening.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from server.llm.base import GenerationOptions, LLMUnavailableError
from server.llm.llama_chat import LlamaChatModel

if TYPE_CHECKING:
    import asyncpg

    from server.services import Services

logger = logging.getLogger(__name__)


async def prime_next_turn(services: Services, conversation: asyncpg.Record) -> None:
    """Have the model read the conversation's next prompt up to its newest message."""
    # NOTE: only the embedded model is primed. It reads prompts on the two cores that also
    # run speech. An Ollama server reads them on its own hardware, usually far faster, and
    # priming it would cost a request per reply.
    if not isinstance(services.llm, LlamaChatModel):
        return
    started = time.monotonic()
    ai_settings = conversation["ai_settings"] or {}
    options = GenerationOptions(
        max_tokens=1,
        model=ai_settings.get("model"),
        context_tokens=services.settings.ollama_context_tokens,
    )
    try:
        context = await services.memory.context_for(conversation)
        stream = services.llm.stream_chat(context.messages, options)
        async with contextlib.aclosing(stream):
            async for _ in stream:
                break
    except (LLMUnavailableError, LookupError) as exc:
        # Only a speed-up: the next reply reads the whole prompt itself.
        logger.info("conversation %s: priming the next prompt failed: %s", conversation["id"], exc)
        return
    logger.debug(
        "conversation %s: next prompt primed in %.0f ms",
        conversation["id"],
        (time.monotonic() - started) * 1000,
    )
