"""Token counts for context budgets: the embedded model's own tokenizer, or an estimate.

A chat prompt costs more than its texts: the chat template wraps every message in role
markers, and the prompt ends with the assistant's opening. Counters report both overheads
so that a context's count is the count of the prompt the model will really read.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# Slack per message for the tokenizer merging a message's first or last characters with
# the template's markers, which counting texts one by one cannot see.
MERGE_SLACK_TOKENS = 1


class TokenCounter(Protocol):
    @property
    def name(self) -> str: ...

    # Tokens the template adds around each message, and once per prompt.
    message_overhead: int
    prompt_overhead: int

    def count(self, text: str) -> int:
        """Tokens in a text alone. Fast enough for the event loop on short texts."""
        ...


class EstimatedTokenCounter:
    """An approximation for models whose tokenizer the server does not have (Ollama's).

    An ASCII word costs one token per 4 letters, rounded up, or per 2 letters when it has
    two or more capitals. Every digit and sign costs one, and so does a space before one,
    because tokenizers such as SmolLM2's and Llama 3's split numbers into digits. Each
    whitespace character after the first of a run costs one, and any other character costs
    one per UTF-8 byte. On ordinary English it counts about 1.4 times what SmolLM2's
    tokenizer does. It is an estimate: text full of misspelt or rare words can take more
    tokens than counted, so the manager compares it with the counts Ollama reports and
    shrinks budgets when they were higher.
    """

    name = "estimate"
    message_overhead = 5
    prompt_overhead = 4

    def count(self, text: str) -> int:
        tokens = 0
        for piece in _PIECES.findall(text):
            if piece.isascii() and piece[0].isalpha():
                # Words in capitals split into short pieces.
                capitals = sum(1 for letter in piece if letter.isupper())
                tokens += math.ceil(len(piece) / (2 if capitals > 1 else 4))
            elif piece.isspace():
                tokens += len(piece) - 1
            elif piece.isascii():
                tokens += 1
            else:
                tokens += len(piece.encode())
        return tokens + len(_SPACE_BEFORE_SIGN.findall(text))


# ASCII words, single digits, runs of whitespace, and any other single character.
_PIECES = re.compile(r"[A-Za-z]+|\s+|.", re.DOTALL)
_SPACE_BEFORE_SIGN = re.compile(r"\s(?=[^A-Za-z\s])")


class LlamaTokenCounter:
    """Counts with the tokenizer of the GGUF model that llama.cpp runs.

    llama.cpp reads the vocabulary only, so tokenizing is safe beside a generation running
    on the model's worker thread.
    """

    def __init__(self, llama: Any, model_name: str) -> None:
        self._llama = llama
        self.name = f"llama.cpp:{model_name}"
        self.message_overhead, self.prompt_overhead = _template_overheads(llama, self.count)

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=False))

    def count_prompt(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the whole prompt as llama.cpp formats it. For checks, not for budgets."""
        formatted = _formatter(self._llama)(messages=messages).prompt
        return len(self._llama.tokenize(formatted.encode(), add_bos=False, special=True))


def _formatter(llama: Any) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def token_text(token: int) -> str:
        return str(llama._model.token_get_text(token)) if token >= 0 else ""

    return Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=token_text(llama.token_eos()),
        bos_token=token_text(llama.token_bos()),
    )


def _template_overheads(llama: Any, count: Callable[[str], int]) -> tuple[int, int]:
    """Measure what the chat template adds per message and per prompt, by formatting
    one and two messages and subtracting their texts."""
    if "tokenizer.chat_template" not in llama.metadata:
        # llama.cpp falls back to a generic template; assume ChatML-like markers.
        return 5 + MERGE_SLACK_TOKENS, 4
    format_prompt = _formatter(llama)
    text = "Hello there."

    def prompt_tokens(messages: list[dict[str, str]]) -> int:
        formatted = format_prompt(messages=messages).prompt
        return len(llama.tokenize(formatted.encode(), add_bos=False, special=True))

    one = prompt_tokens([{"role": "system", "content": text}])
    two = prompt_tokens([{"role": "system", "content": text}, {"role": "user", "content": text}])
    per_message = two - one - count(text)
    per_prompt = one - count(text) - per_message
    logger.info(
        "chat template adds %d tokens per message and %d per prompt", per_message, per_prompt
    )
    return per_message + MERGE_SLACK_TOKENS, max(per_prompt, 0)


class CachedCounts:
    """Token counts of stored texts by key (a message or summary id), kept for the texts
    most recently used. Stored texts do not change, so their counts never go stale.
    Contexts are assembled in worker threads, so the cache takes a lock."""

    def __init__(self, counter: TokenCounter, capacity: int) -> None:
        self.counter = counter
        self._capacity = capacity
        self._counts: OrderedDict[object, int] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, key: object, text: str) -> int:
        with self._lock:
            cached = self._counts.get(key)
            if cached is not None:
                self._counts.move_to_end(key)
                return cached
        tokens = self.counter.count(text)
        with self._lock:
            self._counts[key] = tokens
            if len(self._counts) > self._capacity:
                self._counts.popitem(last=False)
        return tokens

    def cached(self, key: object) -> bool:
        with self._lock:
            return key in self._counts

    def count_text(self, text: str) -> int:
        """Count a text that has no id, such as a system message, keyed by its hash."""
        return self.count(("text", hash(text), len(text)), text)
