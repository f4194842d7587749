"""Long conversations for memory tests, and a stand-in language model for memory work.

The stand-in answers the summary and key-fact requests of the memory worker the way a
careful model would, from the request's own text: a summary keeps the earlier summary and
adds what the learner said about themselves; the facts are the learner's name and goal.
It lets tests check where the memory goes (stored rows, assembled contexts) without
depending on what a 135M-parameter model happens to write.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg

from server.memory.prompts import FACTS_INSTRUCTIONS, SUMMARY_INSTRUCTIONS
from storage.conversations import create_conversation, insert_message, update_settings
from tests.ollama_standin import ScriptedReply

FACT_MESSAGE = 3
FACT_TEXT = "My name is Ana and I am preparing for the IELTS exam in March."
QUESTION = "Can you remind me what my name is and which exam I am preparing for?"

LEARNER_LINES = (
    "What is the weather like in London in spring?",
    "Tell me about your favourite food, please.",
    "Do people watch football on Sundays there?",
    "How do you cook rice without a rice cooker?",
    "Which museums should a tourist visit first?",
    "Is it hard to learn to swim as an adult?",
    "What time do shops close on Saturdays?",
    "Could you explain the difference between since and for?",
)
TUTOR_LINES = (
    "[happy] That is a great question! [curious] What do you think?",
    "[encouraging] Nice sentence. [calm] Let us try another one together.",
    "[supportive] Good try, the word is *went*, not goed. [curious] Where did you go?",
    "[excited] Wonderful! [curious] Can you tell me more about it?",
)
LONG_LINE = (
    "Here is a longer story about my weekend, because you asked for more detail. "
    "On Saturday the market was full of people buying fruit, bread and flowers, and the "
    "weather changed three times before lunch, so everybody carried an umbrella. "
) * 6


def message_text(sequence: int, count: int) -> tuple[str, str]:
    """Return (role, content) of message `sequence` of a seeded conversation."""
    if sequence == FACT_MESSAGE:
        return "user", FACT_TEXT
    if sequence == count:
        return "user", QUESTION
    if sequence % 2 == 1:
        if sequence % 25 == 0:
            return "user", LONG_LINE
        return "user", LEARNER_LINES[sequence % len(LEARNER_LINES)]
    return "assistant", TUTOR_LINES[sequence % len(TUTOR_LINES)]


async def seed_conversation(
    pool: asyncpg.Pool, count: int, **settings: Any
) -> tuple[uuid.UUID, uuid.UUID]:
    """Create a user and a conversation of `count` messages, and return (user id,
    conversation id). The third message states the learner's name and goal, and the last
    asks about them."""
    user_id = await pool.fetchval(
        "INSERT INTO users (name) VALUES ($1) RETURNING id", f"learner-{uuid.uuid4()}"
    )
    row = await create_conversation(pool, user_id, title="A long talk", level="B1")
    if settings:
        await update_settings(pool, row["id"], settings)
    for sequence in range(1, count + 1):
        role, content = message_text(sequence, count)
        await insert_message(pool, row["id"], role, content)
    return user_id, row["id"]


def memory_answer(body: dict[str, Any]) -> ScriptedReply | None:
    """Return the reply to a memory worker request, or None for other requests."""
    request = body["messages"][-1]["content"]
    if is_summary_request(body):
        return ScriptedReply([summarise(request)])
    if body["messages"][0]["content"] == FACTS_INSTRUCTIONS:
        return ScriptedReply([extract_facts(request)])
    return None


def is_summary_request(body: dict[str, Any]) -> bool:
    return bool(body["messages"][0]["content"].startswith(SUMMARY_INSTRUCTIONS[:40]))


def summarise(request: str) -> str:
    earlier = request.split("Earlier summary:\n", 1)[1].split("\n\nNew messages:", 1)[0]
    new = request.split("New messages:\n", 1)[1].split("\n\nUpdated summary:", 1)[0]
    said = [
        line.removeprefix("Learner: ")
        for line in new.splitlines()
        if line.startswith(("Learner: My ", "Learner: I "))
    ]
    parts = [] if earlier == "(none yet)" else [earlier]
    parts += [f"The learner said: {text}" for text in said]
    return " ".join(parts) or "The learner and the tutor made small talk."


def extract_facts(request: str) -> str:
    lines = []
    name = re.search(r"My name is (\w+)", request)
    if name:
        lines.append(f"personal_info: The learner's name is {name.group(1)}")
    exam = re.search(r"preparing for the (\w+) exam", request)
    if exam:
        lines.append(f"learning_goal: pass the {exam.group(1)} exam (0.9)")
    return "\n".join(lines) or "none"


def summary_new_messages(body: dict[str, Any]) -> str:
    """The transcript part of a summary request."""
    request: str = body["messages"][-1]["content"]
    return request.split("New messages:\n", 1)[1].split("\n\nUpdated summary:", 1)[0]
