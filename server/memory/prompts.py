"""Prompts for the summaries and key facts the language model writes, and parsing of its
output."""

from __future__ import annotations

import re

from server.llm.base import ChatMessage
from storage.memory import ContextMessage

SUMMARY_INSTRUCTIONS = (
    "You keep the memory of an English lesson between a tutor and a learner. "
    "Write an updated summary of the lesson: the earlier summary plus the new messages. "
    "Keep the learner's name, goals, level, interests and the mistakes they make, and the "
    "topics covered. Write plain sentences in the third person, at most {words} words, "
    "with no tags, lists or greetings."
)
FACTS_INSTRUCTIONS = (
    "You list facts about a language learner from what they said. "
    "Answer only with lines of the form `type: fact`. Types: personal_info, learning_goal, "
    "level, weakness, strength, user_preference, interest. "
    "Write `none` if there are no facts."
)
# One worked example comes before the real request, because SmolLM2-135M ignored the line
# format when only instructed and followed it when shown it. Facts copied from the example
# are dropped.
FACTS_EXAMPLE_MESSAGES = (
    "- Hi, I'm Tom and I work as a nurse.",
    "- I want to speak better English at work.",
    "- I always mix up since and for.",
)
FACTS_EXAMPLE_ANSWER = (
    "personal_info: The learner's name is Tom",
    "personal_info: The learner works as a nurse",
    "learning_goal: speak better English at work",
    "weakness: mixes up since and for",
)
FACT_TYPES = (
    "personal_info",
    "learning_goal",
    "level",
    "weakness",
    "strength",
    "user_preference",
    "interest",
)
# Names small models use for a type instead of the one asked for.
FACT_TYPE_ALIASES = {
    "name": "personal_info",
    "personal": "personal_info",
    "goal": "learning_goal",
    "goals": "learning_goal",
    "preference": "user_preference",
    "preferences": "user_preference",
    "weaknesses": "weakness",
    "mistake": "weakness",
    "strengths": "strength",
    "interests": "interest",
    "hobby": "interest",
}
MAX_FACT_CHARS = 200
MAX_FACTS_PER_EXTRACTION = 10
# Extracted facts start below certainty: a small model may misread the learner.
EXTRACTED_CONFIDENCE = 0.7
SPEAKERS = {"user": "Learner", "assistant": "Tutor"}

# "- type: fact text (0.8)", with the bullet, backticks and confidence optional.
_FACT_LINE = re.compile(
    r"^\s*(?:[-*•]|\d+[.)])?\s*`?([A-Za-z_ ]{2,30})`?\s*[:|]\s*(.+?)"
    r"\s*(?:\((0?\.\d+|1(?:\.0+)?)\))?\s*$"
)
_EXAMPLE_FACTS = {line.split(": ", 1)[1].lower() for line in FACTS_EXAMPLE_ANSWER}
_TAG = re.compile(r"\[[a-z]+(?:\s+[\d.]+)?\]|\*", re.IGNORECASE)


def transcript_lines(messages: list[ContextMessage]) -> str:
    return "\n".join(
        f"{SPEAKERS.get(message.role, message.role)}: {message.content}" for message in messages
    )


def summary_request(
    previous: str | None, messages: list[ContextMessage], words: int
) -> list[ChatMessage]:
    earlier = previous or "(none yet)"
    return [
        ChatMessage("system", SUMMARY_INSTRUCTIONS.format(words=words)),
        ChatMessage(
            "user",
            f"Earlier summary:\n{earlier}\n\nNew messages:\n{transcript_lines(messages)}\n\n"
            "Updated summary:",
        ),
    ]


def facts_request(messages: list[ContextMessage]) -> list[ChatMessage]:
    said = "\n".join(f"- {m.content}" for m in messages if m.role == "user")
    return [
        ChatMessage("system", FACTS_INSTRUCTIONS),
        ChatMessage("user", _facts_question("\n".join(FACTS_EXAMPLE_MESSAGES))),
        ChatMessage("assistant", "\n".join(FACTS_EXAMPLE_ANSWER)),
        ChatMessage("user", _facts_question(said)),
    ]


def _facts_question(said: str) -> str:
    return f"What the learner said:\n{said}\n\nFacts:"


def clean_summary(text: str) -> str:
    """Strip the emotion tags and stress marks a tutor model may add out of habit, and a
    last sentence cut off by the token limit."""
    text = " ".join(_TAG.sub("", storable(text)).split())
    if not text or text.endswith((".", "!", "?")):
        return text
    last_end = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    return text[: last_end + 1] if last_end > 0 else text


def storable(text: str) -> str:
    """Drop what PostgreSQL text cannot hold from model output: NUL characters and lone
    surrogates (which a model's byte-level decoding can produce)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def parse_facts(text: str) -> list[tuple[str, str, float]]:
    """Read `type: fact` lines into (type, text, confidence); skip lines of other shapes."""
    facts: list[tuple[str, str, float]] = []
    seen: set[tuple[str, str]] = set()
    for line in storable(text).splitlines():
        match = _FACT_LINE.match(line)
        if match is None:
            continue
        fact_type = _fact_type(match.group(1))
        fact_text = clean_summary(match.group(2)).strip(" .`")[:MAX_FACT_CHARS]
        if fact_type is None or not fact_text or fact_text.lower() == "none":
            continue
        key = (fact_type, fact_text.lower())
        if key in seen or fact_text.lower() in _EXAMPLE_FACTS:
            continue
        seen.add(key)
        confidence = float(match.group(3)) if match.group(3) else EXTRACTED_CONFIDENCE
        facts.append((fact_type, fact_text, min(max(confidence, 0.0), 1.0)))
        if len(facts) == MAX_FACTS_PER_EXTRACTION:
            break
    return facts


def _fact_type(name: str) -> str | None:
    normal = name.strip().lower().replace(" ", "_")
    if normal in FACT_TYPES:
        return normal
    return FACT_TYPE_ALIASES.get(normal)
