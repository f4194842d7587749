"""Prometheus metrics on GET /metrics after real replies, calls and errors."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from server.caller import place_call
from tests.conftest import RunningServer, speech_file
from tests.event_client import EventClient

SHORT_QUESTION = "librispeech_251-137823-0002_en.wav"


async def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of /metrics by (name, sorted labels)."""
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def stage_count(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], stage: str, source: str
) -> float:
    labels = (("source", source), ("stage", stage))
    return samples.get(("parley_turn_stage_seconds_count", labels), 0.0)


async def test_reply_counted_with_stages(chat_server: RunningServer) -> None:
    before = await scrape(chat_server)
    client = await EventClient.connect(chat_server.url, chat_server.token)
    try:
        created = await client.request("conversation:create", {"title": "Metrics"})
        conversation_id = created["data"]["conversationId"]
        await client.request(
            "message:send",
            {"conversationId": conversation_id, "content": "Hello!", "speak": False},
        )
        await client.wait_for_reply(conversation_id)
    finally:
        await client.close()
    after = await scrape(chat_server)

    completed = ("parley_turns_total", (("outcome", "completed"),))
    assert after[completed] == before.get(completed, 0.0) + 1
    for stage in ("llm_first_token", "first_chunk_ready"):
        assert stage_count(after, stage, "text") == stage_count(before, stage, "text") + 1
    # A text reply without audio has no audio stages, and no call turn happened.
    assert stage_count(after, "first_audio_sent", "text") == 0
    assert stage_count(after, "llm_first_token", "call") == stage_count(
        before, "llm_first_token", "call"
    )


async def test_call_and_errors_counted(chat_server: RunningServer) -> None:
    before = await scrape(chat_server)
    result = await place_call(
        chat_server.url, token=chat_server.token, audio_path=str(speech_file(SHORT_QUESTION))
    )
    assert result.reply_text
    async with aiohttp.ClientSession() as http:
        async with http.get(
            chat_server.url + "/api/conversations/not-a-uuid", headers=chat_server.auth()
        ) as response:
            assert response.status == 400
        async with http.get(chat_server.url + "/api/me") as response:
            assert response.status == 401
    # The server ends its side of the call (and its recording) just after the hang-up.
    await chat_server.wait_for_idle()
    after = await scrape(chat_server)

    calls = ("parley_calls_total", ())
    assert after[calls] == before.get(calls, 0.0) + 1
    for stage in ("end_of_turn_wait", "stt", "first_audio_sent"):
        assert stage_count(after, stage, "call") == stage_count(before, stage, "call") + 1
    for code in ("invalid_field", "unauthorized"):
        key = ("parley_errors_total", (("code", code),))
        assert after[key] == before.get(key, 0.0) + 1
    assert after[("parley_active_calls", ())] == 0
