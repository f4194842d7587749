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


# Test instrumentation for the audio controls: the queue plays chunks through `new Audio()`
# elements that are never added to the document, so record every media element on which the
# page calls play(). The last one in window.parleyTestAudio is the one playing now.
RECORD_AUDIO_SCRIPT = """
window.parleyTestAudio = [];
const nativePlay = HTMLMediaElement.prototype.play;
HTMLMediaElement.prototype.play = function (...args) {
  if (!window.parleyTestAudio.includes(this)) window.parleyTestAudio.push(this);
  return nativePlay.apply(this, args);
};
"""

CURRENT_AUDIO_JS = """() => {
  const audio = window.parleyTestAudio.at(-1);
  return audio ? {paused: audio.paused, muted: audio.muted, currentTime: audio.currentTime} : null;
}"""

# Long sentences without commas, so each chunk speaks for a few seconds and a click lands
# inside the chunk it is meant for. The server cuts the first chunk after 4 words so that
# the first audio comes early. These sentences therefore make one chunk more than their count.
LONG_SENTENCES = [
    "This first sentence goes on for quite a while so that the test can skip the rest of it"
    " somewhere in the middle without any hurry at all.",
    "Here the second sentence keeps talking about nothing in particular for some time"
    " while the test pauses it and then lets it carry on again.",
    "Then the third sentence is read with the sound turned off because the test has"
    " pressed the mute button just before it started.",
    "Finally the fourth sentence should never be heard because playback was stopped"
    " before it had any chance to begin.",
]
LONG_REPLY_CHUNKS = len(LONG_SENTENCES) + 1


def playback_events(playback: list[dict[str, Any]], chunk_id: str) -> list[str]:
    return [entry["event"] for entry in playback if entry["chunkId"] == chunk_id]


async def test_audio_controls_skip_pause_stop(
    driver: Playwright, chat_server: RunningServer, standin: OllamaStandIn
) -> None:
    standin.replies.append(ScriptedReply([f" [calm] {text}" for text in LONG_SENTENCES]))
    # Chunk 0 is only 4 words, so the controls act on the long chunks after it.
    skipped, paused, muted, never_played = 1, 2, 3, 4

    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "controls") as page:
        await page.page.context.add_init_script(RECORD_AUDIO_SCRIPT)
        await page.sign_in(chat_server.token)
        await page.create_conversation("Audio controls")
        await page.send_message("Read me four long sentences.")
        await page.wait_for_replies(1)
        reply: dict[str, Any] = await page.state("state.messages.find(m => m.role === 'assistant')")
        chunk_ids = [chunk["chunkId"] for chunk in reply["chunks"]]
        assert len(chunk_ids) == LONG_REPLY_CHUNKS

        def started(index: int) -> str:
            return (
                "window.parleyPlayback.some(entry => entry.event === 'start'"
                f" && entry.chunkId === '{chunk_ids[index]}')"
            )

        async def events_of(index: int) -> list[str]:
            return playback_events(
                await page.page.evaluate("window.parleyPlayback"), chunk_ids[index]
            )

        # Skip: the chunk ends long before its audio would, and the next one starts.
        await page.wait_for(started(skipped), 30)
        clicked_at = await page.page.evaluate("performance.now()")
        await page.page.click("#skip")
        await page.wait_for(started(skipped + 1), 10)
        await page.screenshot("1-skipped")
        assert await events_of(0) == ["start", "end"]
        assert await events_of(skipped) == ["start", "end"]
        playback = await page.page.evaluate("window.parleyPlayback")
        times = [entry["at"] for entry in playback if entry["chunkId"] == chunk_ids[skipped]]
        played_s = (times[1] - times[0]) / 1000
        audio_s = reply["chunks"][skipped]["audioDuration"]
        ended_after_click_s = (times[1] - clicked_at) / 1000
        assert ended_after_click_s < 0.5, (
            f"the skipped chunk ended {ended_after_click_s:.2f} s late"
        )
        assert played_s < audio_s - 1, f"the skipped chunk played {played_s:.2f} s of {audio_s} s"

        # Pause: the element stops, its currentTime stays put and no chunk starts for a second.
        await page.page.click("#pause-audio")
        await page.wait_for("window.parleyStore.state.audio.paused", 5)
        assert await page.page.inner_text("#pause-audio") == "Resume audio"
        before = await page.page.evaluate(CURRENT_AUDIO_JS)
        playback_count = len(await page.page.evaluate("window.parleyPlayback"))
        await asyncio.sleep(1.2)
        after = await page.page.evaluate(CURRENT_AUDIO_JS)
        await page.screenshot("2-paused")
        assert before["paused"] is True
        assert after["paused"] is True
        assert after["currentTime"] == before["currentTime"]
        assert len(await page.page.evaluate("window.parleyPlayback")) == playback_count
        assert await events_of(paused) == ["start"]

        # Resume: the same element plays on from where it stopped.
        await page.page.click("#pause-audio")
        await page.wait_for("!window.parleyStore.state.audio.paused", 5)
        await page.wait_for(
            f"window.parleyTestAudio.at(-1).currentTime > {after['currentTime'] + 0.3}", 5
        )
        assert await page.page.inner_text("#pause-audio") == "Pause audio"
        assert (await page.page.evaluate(CURRENT_AUDIO_JS))["paused"] is False
        assert await events_of(paused) == ["start"]

        # Mute: the playing element is muted, and so is the next chunk's element.
        await page.page.click("#mute")
        await page.wait_for("window.parleyStore.state.audio.muted", 5)
        assert await page.page.inner_text("#mute") == "Unmute"
        assert (await page.page.evaluate(CURRENT_AUDIO_JS))["muted"] is True
        await page.wait_for(started(muted), 30)
        current = await page.page.evaluate(CURRENT_AUDIO_JS)
        assert current["muted"] is True
        assert current["paused"] is False
        assert await events_of(paused) == ["start", "end"]
        await page.screenshot("3-muted")

        # Stop: the playing chunk ends at once and the last chunk never starts.
        await page.page.click("#stop-audio")
        await page.wait_for("window.parleyStore.state.audio.playingChunkId === null", 5)
        await asyncio.sleep(1.5)
        await page.screenshot("4-stopped")
        assert await events_of(muted) == ["start", "end"]
        assert await events_of(never_played) == []
        assert (await page.page.evaluate(CURRENT_AUDIO_JS))["paused"] is True
        assert await page.page.inner_text("#live-state") != "speaking"
        assert page.page_errors == []


async def test_list_shows_lifecycle_states(driver: Playwright, chat_server: RunningServer) -> None:
    # Each conversation reaches its status through the page's status buttons, in the order
    # the server allows. Only a completed conversation can be archived.
    clicks_by_title = {
        "Lifecycle paused": ["Pause"],
        "Lifecycle completed": ["Complete"],
        "Lifecycle archived": ["Complete", "Archive"],
    }
    expected_status = {
        "Lifecycle paused": "paused",
        "Lifecycle completed": "completed",
        "Lifecycle archived": "archived",
    }

    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "lifecycle") as page:
        await page.sign_in(chat_server.token)
        ids_by_title = {}
        for title, clicks in clicks_by_title.items():
            conversation_id = await page.create_conversation(title)
            ids_by_title[title] = conversation_id
            for label in clicks:
                await page.page.click(f"#status-controls button:text-is('{label}')")
                status = expected_status[title] if label == clicks[-1] else "completed"
                await page.wait_for(f"window.parleyStore.state.current.status === '{status}'", 10)
            meta = await page.page.inner_text("#conversation-meta")
            assert expected_status[title] in meta, meta
        await page.screenshot("1-list")

        for title, conversation_id in ids_by_title.items():
            item = page.page.locator(
                f"#conversation-list li[data-conversation-id='{conversation_id}']"
            )
            assert await item.count() == 1, f"{title} is missing from the list"
            meta = await item.locator(".meta").inner_text()
            assert f" · {expected_status[title]} · " in meta, f"{title}: {meta}"
            assert await item.locator("strong").inner_text() == title

        # A reload reads the list from the server, not from the events the page saw.
        await page.page.reload()
        await page.wait_for(
            "window.parleyStore.state.connection === 'open'"
            " && window.parleyStore.state.conversations.length >= 3",
            15,
        )
        await page.screenshot("2-reloaded")
        for title, conversation_id in ids_by_title.items():
            item = page.page.locator(
                f"#conversation-list li[data-conversation-id='{conversation_id}']"
            )
            meta = await item.locator(".meta").inner_text()
            assert f" · {expected_status[title]} · " in meta, f"{title} after reload: {meta}"
        assert page.page_errors == []


async def test_memory_strategy_from_page(driver: Playwright, chat_server: RunningServer) -> None:
    """The page changes a conversation's memory strategy and shows the next reply's context."""
    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "memory") as page:
        await page.sign_in(chat_server.token)
        conversation_id = await page.create_conversation("Memory choice")
        assert await page.page.input_value("#memory-strategy") == "sliding"

        await page.page.select_option("#memory-strategy", "summarization")
        await page.wait_for(
            "window.parleyStore.state.current"
            " && window.parleyStore.state.current.settings.memoryStrategy === 'summarization'",
            15,
        )
        await page.send_message("I like to cook on Sundays.")
        await page.wait_for_replies(1)
        await page.wait_for(
            "document.querySelector('#memory-state').textContent.includes('(summarization)')", 15
        )
        await page.screenshot("1-summarization")

        memory_state = await page.page.inner_text("#memory-state")
        # The prompt held the learner's one message, within the server's budget.
        assert re.search(r"last prompt \d+/3976 tokens, 1 message ", memory_state), memory_state
        pool = await chat_server.db()
        stored = await pool.fetchval(
            "SELECT memory_strategy FROM conversations WHERE id = $1", uuid.UUID(conversation_id)
        )
        assert stored == "summarization"
        assert page.page_errors == []
