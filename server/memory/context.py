"""Fitting a conversation's memory into one prompt within its token budget.

`assemble` is pure: it takes what the manager loaded (the newest messages, the latest
summary, key facts, messages retrieved by similarity) and returns the prompt. Every
strategy keeps the system prompt and the newest message. The other layers take at most
their share of the budget, and the newest messages that still fit fill the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.llm.base import ChatMessage
from server.memory.tokens import MERGE_SLACK_TOKENS, CachedCounts
from storage.memory import ContextMessage, KeyFact, Summary

STRATEGIES = ("sliding", "summarization", "hierarchical", "semantic")

# Largest share of the budget each layer may take, by strategy. What a layer leaves unused
# goes to the newest messages.
FACT_SHARE = {"hierarchical": 0.15}
DEFAULT_FACT_SHARE = 0.10
SUMMARY_SHARE = {"summarization": 0.40, "hierarchical": 0.25}
RETRIEVAL_SHARE = {"semantic": 0.35}

FACT_LABELS = {
    "personal_info": "About them",
    "learning_goal": "Goal",
    "level": "Level",
    "weakness": "Needs practice",
    "strength": "Strong at",
    "user_preference": "Prefers",
    "interest": "Interested in",
}
FACTS_HEADER = (
    "What you know about the learner (use it: aim at their goals, practise their weak "
    "points, talk about their interests):"
)
SUMMARY_HEADER = "Summary of the conversation before the messages below:"
RETRIEVED_HEADER = "Earlier messages of this conversation that relate to the newest one:"
ROLE_NAMES = {"user": "Learner", "assistant": "You"}
TRUNCATION_MARK = "…"


@dataclass(frozen=True)
class MemorySettings:
    """A conversation's memory settings, as stored in its row."""

    strategy: str
    max_messages: int
    max_tokens: int
    auto_summarize: bool
    summarize_threshold: int

    @classmethod
    def from_row(cls, row: Any) -> MemorySettings:
        return cls(
            strategy=row["memory_strategy"] or "sliding",
            max_messages=row["max_context_messages"] or 20,
            max_tokens=row["max_context_tokens"] or 4000,
            auto_summarize=bool(row["auto_summarize"]),
            summarize_threshold=row["summarize_threshold"] or 50,
        )

    @property
    def keeps_summaries(self) -> bool:
        return self.strategy in ("summarization", "hierarchical") or self.auto_summarize

    @property
    def keeps_facts(self) -> bool:
        return self.strategy == "hierarchical" or self.auto_summarize


@dataclass
class MemorySources:
    """The inputs the manager loaded for one context."""

    system_prompt: str
    # The newest messages, oldest first. The last one is the message the reply is for.
    recent: list[ContextMessage]
    summary: Summary | None = None
    facts: list[KeyFact] = field(default_factory=list)
    # Older messages most similar to the newest one, best first, with their similarity.
    retrieved: list[tuple[ContextMessage, float]] = field(default_factory=list)


@dataclass
class AssembledContext:
    messages: list[ChatMessage]
    strategy: str
    budget: int
    token_count: int
    # Sequence numbers of the messages included word for word, oldest first.
    message_sequences: list[int]
    summary: Summary | None
    facts: list[KeyFact]
    retrieved_sequences: list[int]
    newest_truncated: bool

    def event_data(self) -> dict[str, Any]:
        """Return the memory:context-updated payload, without the conversation id."""
        return {
            "messageCount": len(self.message_sequences),
            "tokenCount": self.token_count,
            "tokenBudget": self.budget,
            "strategy": self.strategy,
            "messageRange": _range(self.message_sequences),
            "summaryRange": (
                {"start": self.summary.start, "end": self.summary.end} if self.summary else None
            ),
            "keyFactCount": len(self.facts),
            "retrievedSequences": self.retrieved_sequences,
        }


def _range(sequences: list[int]) -> dict[str, int] | None:
    return {"start": sequences[0], "end": sequences[-1]} if sequences else None


class _Budget:
    """Tokens left in the prompt, counted with the model's tokenizer."""

    def __init__(self, counts: CachedCounts, total: int) -> None:
        self.counts = counts
        self.counter = counts.counter
        self.total = total
        self.used = self.counter.prompt_overhead

    @property
    def left(self) -> int:
        return self.total - self.used

    def line_cost(self, text: str) -> int:
        # A line joined into the system message: its tokens, its newline, merge slack.
        return self.counter.count(text) + 1 + MERGE_SLACK_TOKENS

    def message_cost(self, message: ContextMessage) -> int:
        return self.counts.count(message.id, message.content) + self.counter.message_overhead


def assemble(
    sources: MemorySources, settings: MemorySettings, budget_tokens: int, counts: CachedCounts
) -> AssembledContext:
    """Build the prompt for the reply to the newest message of `sources.recent`.

    Blocking while it tokenizes texts it has not counted before: the manager runs it in a
    worker thread.
    """
    budget = _Budget(counts, budget_tokens)
    strategy = settings.strategy
    system_prompt, newest, newest_truncated = _fit_mandatory(sources, budget)

    sections: list[str] = []
    facts = _fit_facts(sources.facts, budget, FACT_SHARE.get(strategy, DEFAULT_FACT_SHARE))
    if facts:
        sections.append(_facts_section(facts))
    summary = sources.summary if strategy in SUMMARY_SHARE else None
    if summary is not None:
        summary_text = _fit_summary(summary, budget, SUMMARY_SHARE[strategy])
        if summary_text:
            sections.append(f"{SUMMARY_HEADER}\n{summary_text}")
        else:
            summary = None
    retrieved: list[ContextMessage] = []
    if strategy in RETRIEVAL_SHARE:
        retrieved = _fit_retrieved(sources.retrieved, budget, RETRIEVAL_SHARE[strategy])
        if retrieved:
            sections.append(_retrieved_section(retrieved))

    older = _fit_recent(sources.recent[:-1], budget, settings.max_messages - 1)
    newest_list = [newest] if newest is not None else []
    messages = _build(system_prompt, sections, older + newest_list)
    token_count = count_messages(messages, counts)
    # The layers were counted line by line. Should joining them cost more than counted,
    # the oldest messages make room.
    while token_count > budget_tokens and older:
        older.pop(0)
        messages = _build(system_prompt, sections, older + newest_list)
        token_count = count_messages(messages, counts)
    kept = older + newest_list
    return AssembledContext(
        messages=messages,
        strategy=strategy,
        budget=budget_tokens,
        token_count=token_count,
        message_sequences=[message.sequence_number for message in kept],
        summary=summary,
        facts=facts,
        retrieved_sequences=[message.sequence_number for message in retrieved],
        newest_truncated=newest_truncated,
    )


def _build(
    system_prompt: str, sections: list[str], kept: list[ContextMessage]
) -> list[ChatMessage]:
    messages = [ChatMessage("system", "\n\n".join([system_prompt, *sections]))]
    messages += [ChatMessage(message.role, message.content) for message in kept]
    return messages


def count_messages(messages: list[ChatMessage], counts: CachedCounts) -> int:
    """Tokens of a whole prompt as the budget counts them."""
    counter = counts.counter
    return counter.prompt_overhead + sum(
        counts.count_text(message.content) + counter.message_overhead for message in messages
    )


def _fit_mandatory(
    sources: MemorySources, budget: _Budget
) -> tuple[str, ContextMessage | None, bool]:
    """Reserve the system prompt and the newest message, shortening them only when the two
    alone exceed the budget: the newest message keeps its end, the system prompt its start."""
    counter = budget.counter
    newest = sources.recent[-1] if sources.recent else None
    system_cost = budget.counts.count_text(sources.system_prompt) + counter.message_overhead
    newest_cost = budget.message_cost(newest) if newest is not None else 0
    room = budget.left
    system_prompt = sources.system_prompt
    truncated = False
    if system_cost + newest_cost > room and newest is not None:
        # Keep at least a quarter of the budget for the learner's words.
        newest_room = max(room - system_cost, room // 4) - counter.message_overhead
        content = truncate_tokens(newest.content, newest_room, counter.count, keep="end")
        newest = ContextMessage(newest.id, newest.role, content, newest.sequence_number)
        newest_cost = counter.count(content) + counter.message_overhead
        truncated = True
    if system_cost + newest_cost > room:
        system_room = room - newest_cost - counter.message_overhead
        system_prompt = truncate_tokens(system_prompt, system_room, counter.count, keep="start")
        system_cost = counter.count(system_prompt) + counter.message_overhead
    budget.used += system_cost + newest_cost
    return system_prompt, newest, truncated


def _fit_facts(facts: list[KeyFact], budget: _Budget, share: float) -> list[KeyFact]:
    """Take the most confident facts that fit the layer's share."""
    room = min(int(budget.total * share), budget.left)
    cost = budget.line_cost(FACTS_HEADER) + 1
    kept: list[KeyFact] = []
    for fact in facts:
        line_cost = budget.line_cost(_fact_line(fact))
        if cost + line_cost > room:
            continue
        cost += line_cost
        kept.append(fact)
    if kept:
        budget.used += cost
    return kept


def _fact_line(fact: KeyFact) -> str:
    label = FACT_LABELS.get(fact.fact_type, fact.fact_type.replace("_", " ").capitalize())
    return f"- {label}: {fact.text}"


def _facts_section(facts: list[KeyFact]) -> str:
    return "\n".join([FACTS_HEADER, *(_fact_line(fact) for fact in facts)])


def _fit_summary(summary: Summary, budget: _Budget, share: float) -> str:
    room = min(int(budget.total * share), budget.left) - budget.line_cost(SUMMARY_HEADER) - 1
    if room <= 8:
        return ""
    text = truncate_tokens(summary.text, room, budget.counter.count, keep="start")
    budget.used += budget.line_cost(SUMMARY_HEADER) + 1 + budget.counter.count(text) + 1
    return text


def _fit_retrieved(
    candidates: list[tuple[ContextMessage, float]], budget: _Budget, share: float
) -> list[ContextMessage]:
    """Take the most similar messages that fit the layer's share, oldest first."""
    room = min(int(budget.total * share), budget.left)
    cost = budget.line_cost(RETRIEVED_HEADER) + 1
    kept: list[ContextMessage] = []
    for message, _similarity in candidates:
        line_cost = budget.line_cost(_retrieved_line(message))
        if cost + line_cost > room:
            continue
        cost += line_cost
        kept.append(message)
    if not kept:
        return []
    budget.used += cost
    return sorted(kept, key=lambda message: message.sequence_number)


def _retrieved_line(message: ContextMessage) -> str:
    speaker = ROLE_NAMES.get(message.role, message.role)
    return f"- {speaker} (message {message.sequence_number}): {message.content}"


def _retrieved_section(messages: list[ContextMessage]) -> str:
    return "\n".join([RETRIEVED_HEADER, *(_retrieved_line(message) for message in messages)])


def _fit_recent(
    older: list[ContextMessage], budget: _Budget, max_messages: int
) -> list[ContextMessage]:
    """Take the newest of the older messages that fit, stopping at the first that does not,
    so the kept messages run without gaps up to the newest."""
    kept: list[ContextMessage] = []
    for message in reversed(older):
        if len(kept) >= max_messages:
            break
        cost = budget.message_cost(message)
        if cost > budget.left:
            break
        budget.used += cost
        kept.append(message)
    kept.reverse()
    return kept


def truncate_tokens(text: str, max_tokens: int, count: Any, *, keep: str) -> str:
    """Shorten text to at most max_tokens by the given counter, keeping its start or its
    end and marking the cut with an ellipsis."""
    if max_tokens <= 0:
        return ""
    if count(text) <= max_tokens:
        return text
    # Binary search on the number of characters kept; counts grow with length.
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count(_cut(text, middle, keep)) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return _cut(text, low, keep) if low > 0 else ""


def _cut(text: str, length: int, keep: str) -> str:
    if keep == "start":
        return text[:length].rstrip() + TRUNCATION_MARK
    return TRUNCATION_MARK + text[len(text) - length :].lstrip()
