"""The browser client in a real headless Chromium. The tests cover a voice call with a fake
microphone and its live transcript, text chat with chunk playback and latency lines, and a
reply the caller cut off. They also cover a reload, a denied microphone and a dropped
WebSocket.

Screenshots of each step go to artifacts/browser/.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from storage.chunks import insert_chunk, set_playout
from storage.conversations import insert_message
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


# Test instrumentation for the live transcript: after each change to the message list,
# record the user messages and the transcript lines the page shows. Identical views in a row
# are recorded once.
RECORD_VIEWS_SCRIPT = """
window.parleyTestViews = [];
document.addEventListener('DOMContentLoaded', () => {
  const list = document.getElementById('messages');
  let previous = '';
  new MutationObserver(() => {
    const view = {
      users: [...list.querySelectorAll('li.user')].map((item) => item.lastChild.textContent),
      lines: [...list.querySelectorAll('li.interim')].map((item) => ({
        utteranceId: Number(item.dataset.utteranceId),
        final: item.dataset.final === 'true',
        text: item.lastChild.textContent,
      })),
    };
    const key = JSON.stringify(view);
    if (key === previous || window.parleyTestViews.length >= 5000) return;
    previous = key;
    window.parleyTestViews.push(view);
  }).observe(list, { childList: true });
});
"""


async def test_call_shows_transcript_and_latency(
    driver: Playwright, embedded_server: RunningServer
) -> None:
    async with open_parley_page(driver, embedded_server.url, speech_file(JFK), "turns") as page:
        await page.page.context.add_init_script(RECORD_VIEWS_SCRIPT)
        await page.sign_in(embedded_server.token)
        await page.create_conversation("Live transcript")
        await page.page.check("#raw-audio")
        await page.page.click("#call")
        await page.wait_for("document.querySelector('#messages li.interim') !== null", 60)
        await page.screenshot("1-hearing")
        await page.wait_for("document.querySelector('#messages li.user') !== null", 90)
        await page.screenshot("2-message")
        views: list[dict[str, Any]] = await page.page.evaluate("window.parleyTestViews")
        call_line = page.page.locator("#messages li.assistant .latency[data-source='call']")
        await page.wait_for(
            "document.querySelector(\"#messages li.assistant .latency[data-source='call']\")",
            120,
        )
        await page.screenshot("3-latency")
        call_latency = await call_line.first.inner_text()

        await page.page.click("#hang-up")
        await page.wait_for("window.parleyStore.state.call.state === 'idle'", 15)
        lines_after_call = await page.page.locator("#messages li.interim").count()
        assert page.page_errors == []

    first_message = next(index for index, view in enumerate(views) if view["users"])
    lines_before = [line for view in views[:first_message] for line in view["lines"]]
    assert lines_before, "no transcript line appeared before the first user message"
    partial = [line["text"] for line in lines_before if not line["final"]]
    assert partial, f"only final transcript lines appeared: {lines_before}"
    assert all(text.startswith("…") for text in partial), partial

    # The final line showed the text that became the message, and the render that added the
    # message removed that line.
    message_text = views[first_message]["users"][0]
    finals = [line for line in views[first_message - 1]["lines"] if line["final"]]
    assert [line["text"] for line in finals] == [message_text]
    heard_id = finals[0]["utteranceId"]
    assert heard_id not in [line["utteranceId"] for line in views[first_message]["lines"]]
    assert lines_after_call == 0

    # A reply in a call leads with the time from the end of speech to its first audio, or
    # with its first chunk when it was stored before that audio went out. It names how the
    # end of the turn was found.
    assert re.fullmatch(
        r"(answered|first chunk) in \d+ ms · turn end \d+ \((quick|silence|max length)\)"
        r" · STT \d+( \(early\))? · LLM \d+ · TTS \d+",
        call_latency,
    ), call_latency


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
        # The reply's turn:metrics comes live or in the replay after the reconnect.
        await page.wait_for(
            "document.querySelector(\"#messages li.assistant .latency[data-source='text']\")", 10
        )

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


def rounded_ms(value: float) -> int:
    # JavaScript's Math.round: halves round up, where Python's round() goes to even.
    return math.floor(value + 0.5)


async def test_text_reply_shows_latency(driver: Playwright, chat_server: RunningServer) -> None:
    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "latency") as page:
        await page.sign_in(chat_server.token)
        conversation_id = await page.create_conversation("Latency line")
        await page.send_message("How quick was that?")
        await page.wait_for_replies(1)
        # turn:metrics follows the reply's message:received and names the turn's source.
        await page.wait_for(
            "document.querySelector('#messages li.assistant .latency[data-source]') !== null", 15
        )
        await page.screenshot("1-live")
        line = page.page.locator("#messages li.assistant .latency")
        live_text = await line.inner_text()
        assert await line.get_attribute("data-source") == "text"
        assert await page.page.locator("#messages li.user .latency").count() == 0

        await page.page.reload()
        await page.wait_for(
            "window.parleyStore.state.connection === 'open' && !window.parleyStore.state.loading"
            " && document.querySelector('#messages li.assistant .latency') !== null",
            15,
        )
        await page.screenshot("2-reloaded")
        reloaded_text = await line.inner_text()
        assert page.page_errors == []

    pool = await chat_server.db()
    timings = await pool.fetchval(
        "SELECT metadata->'timingsMs' FROM messages WHERE conversation_id = $1"
        " AND role = 'assistant'",
        uuid.UUID(conversation_id),
    )
    # A text reply has no speech and no call: its line starts at the first chunk and leaves
    # out the end-of-turn and STT stages.
    expected = (
        f"first chunk in {rounded_ms(timings['firstChunkReady'])} ms"
        f" · LLM {rounded_ms(timings['llmFirstToken'])}"
        f" · TTS {rounded_ms(timings['ttsFirstAudio'])}"
    )
    assert live_text == expected
    assert reloaded_text == expected


# A reply cut off in a call, stored as the server stores one: each chunk's playout, the heard
# words as content and the written ones in generatedContent. Rows of (text, playout status,
# played ms, heard text).
CUT_REPLY = [
    ("I spent a week in Lisbon in May.", "spoken", 2100, "I spent a week in Lisbon in May."),
    ("The weather was warm and sunny every single day.", "cut", 900, "The weather was"),
    ("Have you ever been to Portugal?", "unspoken", 0, ""),
]
CUT_REPLY_TIMINGS_MS = {
    "endOfTurnWait": 300.2,
    "stt": 120.4,
    "llmFirstToken": 210.5,
    "firstChunkReady": 380.0,
    "ttsFirstAudio": 90.0,
    "firstAudioSent": 640.3,
}
# A text reply stored without playout, shown whole.
TEXT_REPLY = ["Lisbon is lovely.", "What did you see there?"]

# The text of one reply in the page, split into what was heard and what was not. Chunks are
# separate spans, spaced by CSS, so their texts are joined with spaces here.
HEARD_AND_UNHEARD_JS = """(item) => {
  const heard = [...item.querySelectorAll('.chunk')].map((chunk) => {
    const copy = chunk.cloneNode(true);
    for (const node of copy.querySelectorAll('.icon, .cut-mark, .unheard')) node.remove();
    return copy.textContent.trim();
  });
  const unheard = [...item.querySelectorAll('.unheard')];
  return {
    heard: heard.filter(Boolean).join(' '),
    unheard: unheard.map((node) => node.textContent.trim()),
    struck: unheard.map((node) => getComputedStyle(node).textDecorationLine),
  };
}"""


async def store_reply(
    pool: Any,
    conversation_id: uuid.UUID,
    content: str,
    metadata: dict[str, Any],
    chunks: list[tuple[uuid.UUID, str]],
) -> uuid.UUID:
    """Store an assistant message with its chunks (id, text); return the message's id."""
    message = await insert_message(pool, conversation_id, "assistant", content, metadata=metadata)
    for index, (chunk_id, text) in enumerate(chunks):
        await insert_chunk(
            pool,
            chunk_id,
            message.id,
            index,
            text=text,
            emotion="neutral",
            icon="💬",
            pause_after_s=0.0,
            emphasis=False,
        )
    return message.id


async def test_cut_reply_shows_unheard_part(driver: Playwright, chat_server: RunningServer) -> None:
    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "cut") as page:
        await page.sign_in(chat_server.token)
        conversation_id = uuid.UUID(await page.create_conversation("Cut reply"))

        pool = await chat_server.db()
        await insert_message(
            pool, conversation_id, "user", "Hello!", metadata={"inputMethod": "text"}
        )
        text_reply_id = await store_reply(
            pool,
            conversation_id,
            " ".join(TEXT_REPLY),
            {"status": "completed", "timingsMs": {"firstChunkReady": 150.0}},
            [(uuid.uuid4(), text) for text in TEXT_REPLY],
        )
        await insert_message(
            pool,
            conversation_id,
            "user",
            "Where did you travel this year?",
            metadata={"inputMethod": "voice"},
        )
        chunk_ids = [uuid.uuid4() for _ in CUT_REPLY]
        heard_content = " ".join(heard_text for _, _, _, heard_text in CUT_REPLY if heard_text)
        written = " ".join(text for text, _, _, _ in CUT_REPLY)
        interruption = {
            "reason": "barge-in",
            "chunkId": str(chunk_ids[1]),
            "chunkIndex": 1,
            "offsetMs": 900,
            "heardMs": 3000,
        }
        metadata = {
            "status": "interrupted",
            "generatedContent": written,
            "timingsMs": CUT_REPLY_TIMINGS_MS,
            "interruption": interruption,
        }
        chunks = [(chunk_id, row[0]) for chunk_id, row in zip(chunk_ids, CUT_REPLY, strict=True)]
        cut_reply_id = await store_reply(pool, conversation_id, heard_content, metadata, chunks)
        await set_playout(
            pool,
            [
                (chunk_id, status, played_ms, heard_text)
                for chunk_id, (_, status, played_ms, heard_text) in zip(
                    chunk_ids, CUT_REPLY, strict=True
                )
            ],
        )

        # A reload loads the conversation again, with the stored messages.
        await page.page.reload()
        await page.wait_for(
            "window.parleyStore.state.connection === 'open' && !window.parleyStore.state.loading"
            " && window.parleyStore.state.messages.length === 4",
            15,
        )
        await page.screenshot("1-loaded")
        cut_item = page.page.locator(f"#messages li[data-message-id='{cut_reply_id}']")
        text_item = page.page.locator(f"#messages li[data-message-id='{text_reply_id}']")
        cut_parts = await cut_item.evaluate(HEARD_AND_UNHEARD_JS)
        text_parts = await text_item.evaluate(HEARD_AND_UNHEARD_JS)
        cut_role = await cut_item.locator(".role").inner_text()
        cut_latency = await cut_item.locator(".latency").inner_text()
        cut_marks = await cut_item.locator(".cut-mark").count()
        all_marks = await page.page.locator("#messages .cut-mark").count()
        assert page.page_errors == []

    assert cut_parts["heard"] == heard_content
    assert cut_parts["unheard"] == [
        "warm and sunny every single day.",
        "Have you ever been to Portugal?",
    ]
    assert cut_parts["struck"] == ["line-through", "line-through"]
    assert cut_marks == 1
    assert all_marks == 1
    assert cut_role == "assistant · interrupted: you cut in after 3.0 s of it"
    assert cut_latency == "answered in 640 ms · turn end 300 · STT 120 · LLM 211 · TTS 90"

    assert text_parts["heard"] == " ".join(TEXT_REPLY)
    assert text_parts["unheard"] == []
