"""The browser client in a real headless Chromium: a voice call with a fake microphone, text
chat with chunk playback, a reload, a denied microphone and a dropped WebSocket.

Screenshots of each step go to artifacts/browser/.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.browser import (
    CHROMIUM_PATH,
    ParleyPage,
    Playwright,
    async_playwright,
    open_parley_page,
)
from tests.conftest import RunningServer, speech_file
from tests.ollama_standin import OllamaStandIn, ScriptedReply

JFK = "jfk_inaugural_1961_male_en.wav"
# The microphone of the text-only tests: they never start a call, so any speech file will do.
QUIET = "generated_silence_10s_16k.wav"

# The stand-in's default reply, "[happy] Hello there! [curious] How are you *today*?", is
# cut into these chunks (text, icon), in chunkIndex order.
DEFAULT_REPLY_CHUNKS = [("Hello there!", "😊"), ("How are you today?", "🤔")]
# The server stops a reply after 4 sentences (llm_max_reply_sentences), so the scripted
# reply of the dropped-socket test has 4.
WORDS = ("one", "two", "three", "four")

# Reads the call's inbound audio from the page's RTCPeerConnection.
INBOUND_AUDIO_JS = """async () => {
  const pc = window.parleyCall && window.parleyCall.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  for (const stats of report.values()) {
    if (stats.type === 'inbound-rtp' && stats.kind === 'audio') {
      return {bytesReceived: stats.bytesReceived || 0, audioLevel: stats.audioLevel || 0};
    }
  }
  return null;
}"""

CHUNKS_IN_PAGE_JS = """() => [...document.querySelectorAll('#messages li.assistant')].map(
  (item) => [...item.querySelectorAll('.chunk')].map((chunk) => ({
    chunkId: chunk.dataset.chunkId,
    chunkIndex: Number(chunk.dataset.chunkIndex),
    icon: chunk.querySelector('.icon').textContent.trim(),
    text: chunk.textContent.slice(chunk.querySelector('.icon').textContent.length),
  })))"""


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())


@pytest.fixture(scope="module")
async def driver() -> AsyncIterator[Playwright]:
    if not CHROMIUM_PATH.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM_PATH}; install Debian's chromium package")
    async with async_playwright() as playwright:
        yield playwright


@pytest.fixture(autouse=True)
def fresh_script(standin: OllamaStandIn) -> None:
    standin.replies.clear()


async def wait_for_playback(page: ParleyPage, chunk_count: int, timeout_s: float = 60) -> None:
    await page.wait_for(
        f"window.parleyPlayback.filter(entry => entry.event !== 'start').length >= {chunk_count}",
        timeout_s,
    )


async def wait_for_server_chunks(
    server: RunningServer, conversation_id: str, count: int, timeout_s: float = 10
) -> None:
    """Wait until the server has logged `count` chunk:generated events for the conversation."""
    pool = await server.db()
    deadline = time.monotonic() + timeout_s
    logged = 0
    while time.monotonic() < deadline:
        logged = await pool.fetchval(
            "SELECT count(*) FROM conversation_events"
            " WHERE conversation_id = $1 AND event_type = 'chunk:generated'",
            uuid.UUID(conversation_id),
        )
        if logged >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout_s} s: the server logged {logged} of {count} chunk:generated"
        " events"
    )


async def test_call_transcribes_and_replies(
    driver: Playwright, embedded_server: RunningServer
) -> None:
    async with open_parley_page(driver, embedded_server.url, speech_file(JFK), "call") as page:
        await page.sign_in(embedded_server.token)
        await page.create_conversation("Browser call")
        await page.page.check("#raw-audio")
        await page.page.click("#call")
        await page.wait_for("window.parleyStore.state.call.state === 'connected'", 30)
        await page.screenshot("1-connected")

        # The fake microphone loops the speech, so wait for the first transcript, a reply to
        # it, and audio from the tutor, sampling the page's inbound-rtp stats meanwhile.
        max_bytes = 0
        max_level = 0.0
        transcript = ""
        reply = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            inbound = await page.page.evaluate(INBOUND_AUDIO_JS)
            if inbound:
                max_bytes = max(max_bytes, inbound["bytesReceived"])
                max_level = max(max_level, inbound["audioLevel"])
            transcript = " ".join(await page.page.locator("#messages li.user").all_inner_texts())
            reply = " ".join(
                await page.page.locator("#messages li.assistant .chunk").all_inner_texts()
            )
            if transcript and reply and max_bytes > 0 and max_level > 0:
                break
            await asyncio.sleep(0.25)
        await page.screenshot("2-replied")

        transcript_words = normalise(transcript)
        assert "fellow americans" in transcript_words or "ask not" in transcript_words, transcript
        assert reply.strip(), "no assistant reply in the page\n" + embedded_server.log_tail()
        assert max_bytes > 0, "no inbound audio bytes in getStats"
        assert max_level > 0, "inbound audio stayed silent in getStats"
        assert "(voice)" in await page.page.inner_text("#messages li.user")

        await page.page.click("#hang-up")
        await page.wait_for("window.parleyStore.state.call.state === 'idle'", 15)
        await page.screenshot("3-hung-up")
        assert await page.page.is_visible("#call")
        assert await page.page.is_hidden("#hang-up")
        assert page.page_errors == []
        assert page.dialogs == []


async def test_text_chat_plays_chunks_in_order(
    driver: Playwright, chat_server: RunningServer
) -> None:
    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "chat") as page:
        await page.sign_in(chat_server.token)
        await page.create_conversation("Browser chat")
        await page.send_message("I went hiking on Saturday.")
        await page.wait_for_replies(1)
        await wait_for_playback(page, len(DEFAULT_REPLY_CHUNKS))
        await page.screenshot("1-replied")

        page_chunks = (await page.page.evaluate(CHUNKS_IN_PAGE_JS))[0]
        assert [(c["text"], c["icon"]) for c in page_chunks] == DEFAULT_REPLY_CHUNKS
        assert [c["chunkIndex"] for c in page_chunks] == list(range(len(DEFAULT_REPLY_CHUNKS)))

        playback = await page.page.evaluate("window.parleyPlayback")
        expected = [(c["chunkId"], event) for c in page_chunks for event in ("start", "end")]
        assert [(entry["chunkId"], entry["event"]) for entry in playback] == expected
        times = [entry["at"] for entry in playback]
        assert times == sorted(times)
        assert page.page_errors == []


async def test_reload_restores_conversation(driver: Playwright, chat_server: RunningServer) -> None:
    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "reload") as page:
        await page.sign_in(chat_server.token)
        conversation_id = await page.create_conversation("Reload me")
        await page.send_message("Tell me about your weekend.")
        await page.wait_for_replies(1)
        await page.screenshot("1-before")
        messages_js = (
            "state.messages.map(m => ({id: m.messageId, role: m.role, content: m.content,"
            " chunks: (m.chunks || []).map(c => c.text)}))"
        )
        before_messages = await page.state(messages_js)
        before_list = await page.state("state.conversations.map(c => c.conversationId)")
        assert conversation_id in before_list
        assert len(before_messages) == 2

        await page.page.reload()
        await page.wait_for(
            "window.parleyStore.state.connection === 'open'"
            f" && window.parleyStore.state.currentId === '{conversation_id}'"
            " && !window.parleyStore.state.loading"
            f" && window.parleyStore.state.messages.length >= {len(before_messages)}",
            15,
        )
        await page.screenshot("2-after")

        assert await page.state("state.conversations.map(c => c.conversationId)") == before_list
        assert await page.state(messages_js) == before_messages
        assert await page.page.inner_text("#conversation-title") == "Reload me"
        assert "Reload me" in await page.page.inner_text("#conversation-list")
        assert await page.page.locator("#messages li").count() == len(before_messages)


async def test_denied_microphone_keeps_text_chat(
    driver: Playwright, chat_server: RunningServer
) -> None:
    async with open_parley_page(
        driver,
        chat_server.url,
        speech_file(JFK),
        "denied",
        grant_microphone=False,
    ) as page:
        await page.sign_in(chat_server.token)
        await page.create_conversation("No microphone")
        await page.page.click("#call")
        await page.wait_for("window.parleyStore.state.error !== ''", 15)
        await page.screenshot("1-denied")

        error = page.page.locator("#error")
        assert await error.is_visible()
        assert "microphone access was denied" in await error.inner_text()
        assert await page.state("state.call.state") == "idle"
        assert await page.page.is_visible("#call")
        assert page.dialogs == []

        await page.send_message("Can we just write instead?")
        await page.wait_for_replies(1)
        await page.screenshot("2-text-reply")
        page_chunks = (await page.page.evaluate(CHUNKS_IN_PAGE_JS))[0]
        assert [(c["text"], c["icon"]) for c in page_chunks] == DEFAULT_REPLY_CHUNKS
        assert page.dialogs == []


async def test_dropped_socket_shows_chunks_once(
    driver: Playwright, chat_server: RunningServer, standin: OllamaStandIn
) -> None:
    # Three pieces a sentence at 0.4 s each: the reply streams for about 5 s.
    pieces = []
    for word in WORDS:
        pieces += [" [calm] Sentence", f" {word}", " is here."]
    standin.replies.append(ScriptedReply(pieces, delay_s=0.4))

    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "drop") as page:
        await page.sign_in(chat_server.token)
        conversation_id = await page.create_conversation("Dropped socket")
        await page.send_message("Count for me, please.")
        await page.wait_for(
            "window.parleyStore.state.messages.some(m => m.role === 'assistant'"
            " && m.metadata.status === 'generating' && m.chunks.length >= 1)",
            30,
        )
        await page.screenshot("1-streaming")
        chunks_js = "state.messages.find(m => m.role === 'assistant').chunks.length"
        dropped_at = await page.state(chunks_js)

        # Keep the page disconnected until the server has made a chunk that the page missed.
        await page.page.evaluate(
            "window.parleyTestBlockSockets = true;"
            " window.parleyTestSockets.at(-1).close(4000, 'test drop')"
        )
        await page.wait_for("window.parleyStore.state.connection === 'reconnecting'", 5)
        await wait_for_server_chunks(chat_server, conversation_id, dropped_at + 1)
        assert await page.state(chunks_js) == dropped_at
        await page.screenshot("2-offline")
        await page.page.evaluate("window.parleyTestBlockSockets = false")
        await page.wait_for("window.parleyStore.state.connection === 'open'", 15)
        await page.wait_for_replies(1, 30)
        await page.screenshot("3-finished")

        final: dict[str, Any] = await page.state("state.messages.find(m => m.role === 'assistant')")
        page_chunks = (await page.page.evaluate(CHUNKS_IN_PAGE_JS))[0]
        assert dropped_at < len(page_chunks), "the reply had finished before the drop"
        assert [c["chunkIndex"] for c in page_chunks] == list(range(len(final["chunks"])))
        assert [c["chunkId"] for c in page_chunks] == [c["chunkId"] for c in final["chunks"]]
        texts = [c["text"] for c in page_chunks]
        assert texts == [f"Sentence {word} is here." for word in WORDS]
        assert await page.page.locator("#messages li.assistant").count() == 1

        await wait_for_playback(page, len(page_chunks))
        starts = [
            entry["chunkId"]
            for entry in await page.page.evaluate("window.parleyPlayback")
            if entry["event"] == "start"
        ]
        assert starts == [c["chunkId"] for c in page_chunks]
        log = await page.state("state.log.map(entry => entry.text)")
        assert any("(reconnected)" in line for line in log), log
