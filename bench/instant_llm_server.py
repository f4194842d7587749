"""`parley serve` with its language model replaced by an instant in-process stand-in.

For bench.events only: it measures the event path (WebSocket, validation, PostgreSQL,
fan-out) without the cost of any model client. Every reply is the same four pieces, yielded
at once. Run as `python -m bench.instant_llm_server serve --port N`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator

import server.services
from server.cli import main
from server.llm.base import ChatMessage, GenerationOptions
from server.settings import Settings

REPLY_PIECES = ("[happy] Good", " answer.", " [curious] What", " comes next?")


class InstantChatModel:
    @property
    def name(self) -> str:
        return "instant-stand-in"

    async def stream_chat(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncGenerator[str, None]:
        for piece in REPLY_PIECES:
            yield piece

    async def close(self) -> None:
        return None


async def _open_instant_model(settings: Settings) -> InstantChatModel:
    return InstantChatModel()


if __name__ == "__main__":
    # open_services looks the function up in its own module at call time.
    server.services.open_chat_model = _open_instant_model
    sys.exit(main(sys.argv[1:]))
