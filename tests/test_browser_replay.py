"""Recorded calls and replay in the browser client, in a real headless Chromium against a real
server: the "Record calls" setting and the recording indicator, the list of recordings with
Replay, Export and Delete, the replay view whose transcript follows the audio, and the replay
of a text conversation's stored chunk audio through the page's audio queue.

Screenshots of each step go to artifacts/browser/.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from server.caller import place_call
from tests.browser import (
    CHROMIUM_PATH,
    ParleyPage,
    Playwright,
    async_playwright,
    open_parley_page,
)
from tests.conftest import RunningServer, speech_file
from tests.ollama_standin import OllamaStandIn, ScriptedReply

# 3.1 s of speech: "This isn't part of your testing routine, is it?"
SPEECH = "librispeech_251-137823-0002_en.wav"
# The microphone of the page's own calls and of the text-only tests: silence, so no turn
# starts and no reply talks over the call.
QUIET = "generated_silence_10s_16k.wav"
# A reply with two emotions whose chunks after the short first one are long sentences, so
# that a moment inside one is easy to catch.
CALL_REPLY = [
    " [happy] Hello there, it is so nice to hear your voice again this morning.",
    " [curious] How are you feeling about the test today?",
]
# A moment this far inside a line is clear of its edges, where the highlight may still show
# the line before for one animation frame.
EDGE_MARGIN_MS = 150
SEEK_TOLERANCE_MS = 300
# A recorded call sends recording:started when the server accepts it. The unrecorded call
# stays up this long after connecting, well past when that event would have come.
UNRECORDED_CALL_S = 2.0

INDICATOR_VISIBLE_JS = "!document.getElementById('recording-indicator').hidden"

# Test instrumentation: every change of the recording indicator, as {shown, recordingId}.
RECORD_INDICATOR_SCRIPT = """
window.parleyTestIndicator = [];
document.addEventListener('DOMContentLoaded', () => {
  const indicator = document.getElementById('recording-indicator');
  const note = () => window.parleyTestIndicator.push({
    shown: !indicator.hidden, recordingId: indicator.dataset.recordingId || '',
  });
  note();
  new MutationObserver(note).observe(indicator, { attributes: true });
});
"""

# Returns the replay's state once the audio plays inside [fromMs, toMs], else false: the
# audio's time, the highlighted lines, the icon area and the icon shown on each line.
REPLAY_STATE_JS = """([fromMs, toMs]) => {
  const audio = document.getElementById('replay-audio');
  const nowMs = audio.currentTime * 1000;
  if (audio.paused || audio.seeking || nowMs < fromMs || nowMs > toMs) return false;
  const current = [...document.querySelectorAll('#replay-transcript li.is-current')];
  return {
    nowMs,
    current: current.map((item) => ({
      index: Number(item.dataset.index),
      atMs: Number(item.dataset.atMs),
      ariaCurrent: item.getAttribute('aria-current'),
    })),
    iconArea: document.getElementById('replay-icon').textContent,
    lineIcons: [...document.querySelectorAll('#replay-transcript li')].map(
      (item) => item.querySelector('.icon').textContent),
  };
}"""

# Returns the audio's time once a seek has finished and the audio plays again.
SEEKED_JS = """(targetMs) => {
  const audio = document.getElementById('replay-audio');
  const nowMs = audio.currentTime * 1000;
  if (audio.paused || audio.seeking || Math.abs(nowMs - targetMs) > 2000) return false;
  return nowMs;
}"""

# Test instrumentation for the text replay: after each render of the message list, the
# reply item marked current and the chunk marked playing. Repeats in a row are recorded once.
RECORD_CURRENT_SCRIPT = """
window.parleyTestCurrent = [];
document.addEventListener('DOMContentLoaded', () => {
  const list = document.getElementById('messages');
  let previous = '';
  new MutationObserver(() => {
    const item = list.querySelector('li.is-current');
    const chunk = list.querySelector('.chunk.playing');
    const view = {
      messageId: item ? item.dataset.messageId : null,
      ariaCurrent: item ? item.getAttribute('aria-current') : null,
      chunkId: chunk ? chunk.dataset.chunkId : null,
    };
    const key = JSON.stringify(view);
    if (key === previous) return;
    previous = key;
    window.parleyTestCurrent.push(view);
  }).observe(list, { childList: true });
});
"""


@pytest.fixture(scope="module")
async def driver() -> AsyncIterator[Playwright]:
    if not CHROMIUM_PATH.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM_PATH}; install Debian's chromium package")
    async with async_playwright() as playwright:
        yield playwright


@pytest.fixture(autouse=True)
def fresh_script(standin: OllamaStandIn) -> None:
    standin.replies.clear()


async def get_json(server: RunningServer, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url + path, headers=server.auth()) as response,
    ):
        return response.status, await response.json(content_type=None)


async def listed_recordings(server: RunningServer, conversation_id: str) -> list[dict[str, Any]]:
    status, body = await get_json(server, f"/api/conversations/{conversation_id}/recordings")
    assert status == 200, body
    recordings: list[dict[str, Any]] = body["recordings"]
    return recordings


def transcript_lines(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the timeline's entries that the replay shows as lines, in the page's order."""
    lines = [entry for entry in timeline if entry["type"] in ("transcript", "chunk")]
    return sorted(lines, key=lambda entry: entry["atMs"])


def expected_line(lines: list[dict[str, Any]], now_ms: float) -> int:
    """Return the index of the line that is heard at now_ms: the line that contains it (the
    latest to start when several do), else the last line started; -1 before any."""
    started = [index for index, line in enumerate(lines) if line["atMs"] <= now_ms]
    containing = [index for index in started if now_ms < lines[index].get("endMs", 0)]
    if containing:
        return containing[-1]
    return started[-1] if started else -1


async def catch_replay_inside(page: ParleyPage, line: dict[str, Any]) -> dict[str, Any]:
    """Wait until the replay plays inside the line, clear of its edges; return its state."""
    window_ms = [line["atMs"] + EDGE_MARGIN_MS, line["endMs"] - EDGE_MARGIN_MS]
    state: dict[str, Any] = await page.wait_for_value(REPLAY_STATE_JS, window_ms, 30)
    return state


async def test_recorded_call_replays_in_step(
    driver: Playwright, chat_server: RunningServer, standin: OllamaStandIn
) -> None:
    speech = speech_file(SPEECH)
    standin.replies.append(ScriptedReply(CALL_REPLY))
    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "replay") as page:
        await page.page.context.add_init_script(RECORD_INDICATOR_SCRIPT)
        await page.sign_in(chat_server.token)
        conversation_id = await page.create_conversation("Recorded call")
        assert await page.page.is_checked("#record-calls")
        assert await page.page.is_hidden("#recording-indicator")

        # The page watches the conversation while the test caller speaks into it.
        call = asyncio.create_task(
            place_call(
                chat_server.url,
                str(speech),
                token=chat_server.token,
                conversation_id=conversation_id,
                quiet_s=1.0,
                timeout_s=60,
            )
        )
        try:
            await page.wait_for(INDICATOR_VISIBLE_JS, 20)
            indicator_during_call = await page.page.inner_text("#recording-indicator")
            call_running_at_indicator = not call.done()
            await page.screenshot("1-recording")
            result = await call
        finally:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
        assert result.reply_text, "the call got no reply\n" + chat_server.log_tail()

        await page.wait_for(
            "document.querySelector(\"#recording-list li[data-status='completed']\") !== null", 20
        )
        await page.screenshot("2-listed")
        indicator_log = await page.page.evaluate("window.parleyTestIndicator")
        row = page.page.locator("#recording-list li")
        row_count = await row.count()
        row_id = await row.first.get_attribute("data-recording-id")
        row_text = await row.first.locator(".summary").inner_text()
        export_href = await row.first.locator("a.export").get_attribute("href")
        export_head = await page.page.evaluate(
            """async (href) => {
              const response = await fetch(href);
              const bytes = new Uint8Array(await response.arrayBuffer());
              return {status: response.status, magic: String.fromCharCode(bytes[0], bytes[1])};
            }""",
            export_href,
        )

        status, recording = await get_json(chat_server, f"/api/recordings/{row_id}")
        assert status == 200, recording
        lines = transcript_lines(recording["timeline"])
        transcripts = [index for index, line in enumerate(lines) if line["type"] == "transcript"]
        chunks = [index for index, line in enumerate(lines) if line["type"] == "chunk"]
        assert transcripts, f"no transcript in the timeline: {recording['timeline']}"
        assert len(chunks) >= 2, f"fewer than 2 chunks in the timeline: {recording['timeline']}"
        first_line = transcripts[0]
        # The longest chunk before the last line: the highlight reaches it by playing on,
        # and the last line is left for the click.
        heard_chunk = max(
            (index for index in chunks if first_line < index < len(lines) - 1),
            key=lambda index: lines[index]["endMs"] - lines[index]["atMs"],
        )
        clicked_line = len(lines) - 1

        await row.first.locator("button.replay").click()
        await page.wait_for(
            f"document.getElementById('replay').dataset.recordingId === '{row_id}'", 10
        )
        line_count = await page.page.locator("#replay-transcript li").count()
        page_at_ms = [
            int(value)
            for value in await page.page.locator("#replay-transcript li").evaluate_all(
                "(items) => items.map((item) => item.dataset.atMs)"
            )
        ]
        early = await catch_replay_inside(page, lines[first_line])
        await page.screenshot("3-learner-line")
        later = await catch_replay_inside(page, lines[heard_chunk])
        await page.screenshot("4-parley-line")

        await page.page.click(f"#replay-transcript li[data-index='{clicked_line}']")
        clicked_at_ms = lines[clicked_line]["atMs"]
        seeked_ms: float = await page.wait_for_value(SEEKED_JS, clicked_at_ms, 10)
        after_click = await page.page.evaluate(
            "[...document.querySelectorAll('#replay-transcript li.is-current')]"
            ".map((item) => Number(item.dataset.index))"
        )
        await page.screenshot("5-clicked")
        assert page.page_errors == []

    # The indicator showed this recording while the call ran, and went when it stopped.
    assert call_running_at_indicator
    assert "Recording" in indicator_during_call
    shown = [entry for entry in indicator_log if entry["shown"]]
    assert shown, indicator_log
    assert {entry["recordingId"] for entry in shown} == {row_id}
    assert indicator_log[-1]["shown"] is False

    assert row_count == 1
    assert row_id == recording["id"]
    assert "completed" in row_text
    assert export_href is not None
    assert f"/api/recordings/{row_id}/export?token=" in export_href
    assert export_head == {"status": 200, "magic": "PK"}

    assert line_count == len(lines)
    assert page_at_ms == [line["atMs"] for line in lines]

    # The highlight follows the audio: the learner's line, then a later line of Parley's.
    for state in (early, later):
        expected = expected_line(lines, state["nowMs"])
        assert [item["index"] for item in state["current"]] == [expected], state
        assert state["current"][0]["atMs"] == lines[expected]["atMs"]
        assert state["current"][0]["ariaCurrent"] == "true"
    assert early["current"][0]["index"] == first_line
    assert later["current"][0]["index"] == heard_chunk
    assert later["nowMs"] > early["nowMs"]

    # The chunk heard shows its icon; chunks reached so far show theirs, later ones none.
    assert later["iconArea"] == lines[heard_chunk]["icon"]
    for index in chunks:
        reached = lines[index]["atMs"] <= later["nowMs"]
        assert later["lineIcons"][index] == (lines[index]["icon"] if reached else ""), index
    assert early["iconArea"] == ""

    assert abs(seeked_ms - clicked_at_ms) <= SEEK_TOLERANCE_MS, (seeked_ms, clicked_at_ms)
    assert after_click == [clicked_line]


async def test_unrecorded_call_leaves_nothing(
    driver: Playwright, chat_server: RunningServer
) -> None:
    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "unrecorded") as page:
        await page.page.context.add_init_script(RECORD_INDICATOR_SCRIPT)
        await page.sign_in(chat_server.token)
        conversation_id = await page.create_conversation("Unrecorded call")
        await page.page.uncheck("#record-calls")
        await page.wait_for("window.parleyStore.state.current.settings.recordCalls === false", 10)

        await page.page.click("#call")
        await page.wait_for("window.parleyStore.state.call.state === 'connected'", 30)
        await asyncio.sleep(UNRECORDED_CALL_S)
        await page.screenshot("1-in-call")
        indicator_in_call = await page.page.is_visible("#recording-indicator")
        await page.page.click("#hang-up")
        await page.wait_for("window.parleyStore.state.call.state === 'idle'", 15)
        health = await chat_server.wait_for_idle()
        indicator_log = await page.page.evaluate("window.parleyTestIndicator")

        # The setting is stored: a reload shows it unchecked.
        await page.page.reload()
        await page.wait_for(
            "window.parleyStore.state.connection === 'open'"
            f" && window.parleyStore.state.recordingsFor === '{conversation_id}'",
            15,
        )
        await page.screenshot("2-reloaded")
        checked_after_reload = await page.page.is_checked("#record-calls")
        rows = await page.page.locator("#recording-list li").count()
        empty_note = await page.page.is_visible("#no-recordings")
        assert page.page_errors == []

    assert health["calls"] == 0, health
    assert indicator_in_call is False
    assert [entry for entry in indicator_log if entry["shown"]] == []
    assert await listed_recordings(chat_server, conversation_id) == []
    assert checked_after_reload is False
    assert rows == 0
    assert empty_note is True


async def test_text_chat_replay_plays_chunks(
    driver: Playwright, chat_server: RunningServer
) -> None:
    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "text-replay") as page:
        await page.page.context.add_init_script(RECORD_CURRENT_SCRIPT)
        await page.sign_in(chat_server.token)
        conversation_id = await page.create_conversation("Text replay")
        await page.send_message("I went hiking on Saturday.")
        await page.wait_for_replies(1)
        await page.send_message("It rained all afternoon.")
        await page.wait_for_replies(2)

        # After a reload the page has the replies only as the server stored them.
        await page.page.reload()
        await page.wait_for(
            "window.parleyStore.state.connection === 'open' && !window.parleyStore.state.loading"
            f" && window.parleyStore.state.currentId === '{conversation_id}'"
            " && window.parleyStore.state.messages.length === 4",
            15,
        )
        replies: list[dict[str, Any]] = await page.state(
            "state.messages.filter(m => m.role === 'assistant').map(m => ({"
            " messageId: m.messageId,"
            " chunks: m.chunks.map(c => ({chunkId: c.chunkId, pause: c.pause,"
            " audioUrl: c.audioUrl}))}))"
        )
        chunk_order = [chunk for reply in replies for chunk in reply["chunks"]]
        message_of = {
            chunk["chunkId"]: reply["messageId"] for reply in replies for chunk in reply["chunks"]
        }
        assert await page.page.is_enabled("#replay-conversation")

        await page.page.click("#replay-conversation")
        await page.wait_for(
            "window.parleyPlayback.filter(entry => entry.event === 'end').length"
            f" >= {len(chunk_order)}",
            60,
        )
        await page.wait_for("window.parleyStore.state.audio.playingChunkId === null", 10)
        await page.screenshot("1-replayed")
        playback: list[dict[str, Any]] = await page.page.evaluate("window.parleyPlayback")
        current_views: list[dict[str, Any]] = await page.page.evaluate("window.parleyTestCurrent")

        # Stop ends the replay like a live reply: the chunk playing ends, no other starts.
        await page.page.click("#replay-conversation")
        await page.wait_for(
            f"window.parleyPlayback.length > {len(playback)}"
            " && window.parleyStore.state.audio.playingChunkId !== null",
            15,
        )
        await page.page.click("#stop-audio")
        await page.wait_for("window.parleyStore.state.audio.playingChunkId === null", 5)
        await asyncio.sleep(1.5)
        await page.screenshot("2-stopped")
        after_stop: list[dict[str, Any]] = (await page.page.evaluate("window.parleyPlayback"))[
            len(playback) :
        ]
        assert page.page_errors == []

    assert all(chunk["audioUrl"] for chunk in chunk_order), chunk_order
    assert [(entry["chunkId"], entry["event"]) for entry in playback] == [
        (chunk["chunkId"], event) for chunk in chunk_order for event in ("start", "end")
    ]
    # Each chunk's pause passes between its end and the next chunk's start.
    for index, chunk in enumerate(chunk_order[:-1]):
        ended_at = playback[2 * index + 1]["at"]
        next_started_at = playback[2 * index + 2]["at"]
        gap_ms = next_started_at - ended_at
        pause_ms = (chunk["pause"] or 0) * 1000
        assert gap_ms >= pause_ms - 5, (index, gap_ms, pause_ms)
        assert gap_ms < pause_ms + 500, (index, gap_ms, pause_ms)

    # The reply being heard was the page's current item, chunk by chunk, in order.
    playing = [view for view in current_views if view["chunkId"] is not None]
    assert [view["chunkId"] for view in playing] == [chunk["chunkId"] for chunk in chunk_order]
    for view in playing:
        assert view["messageId"] == message_of[view["chunkId"]]
        assert view["ariaCurrent"] == "true"

    assert [entry["event"] for entry in after_stop] == ["start", "end"]
    assert after_stop[0]["chunkId"] == chunk_order[0]["chunkId"]


async def test_page_call_recorded_then_deleted(
    driver: Playwright, chat_server: RunningServer
) -> None:
    async with open_parley_page(driver, chat_server.url, speech_file(QUIET), "delete") as page:
        await page.sign_in(chat_server.token)
        conversation_id = await page.create_conversation("Deleted recording")
        await page.page.click("#call")
        await page.wait_for("window.parleyStore.state.call.state === 'connected'", 30)
        await page.wait_for(INDICATOR_VISIBLE_JS, 10)
        await page.screenshot("1-recording")
        await page.page.click("#hang-up")
        await page.wait_for("window.parleyStore.state.call.state === 'idle'", 15)
        await page.wait_for("document.getElementById('recording-indicator').hidden", 5)
        await page.wait_for(
            "document.querySelector(\"#recording-list li[data-status='completed']\") !== null", 20
        )
        await page.screenshot("2-listed")
        recording_id = await page.page.get_attribute("#recording-list li", "data-recording-id")
        listed_before = await listed_recordings(chat_server, conversation_id)

        await page.page.click(f"#recording-list li[data-recording-id='{recording_id}'] .delete")
        await page.wait_for("document.querySelector('#recording-list li') === null", 10)
        await page.screenshot("3-deleted")
        empty_note = await page.page.is_visible("#no-recordings")

        await page.page.reload()
        await page.wait_for(
            "window.parleyStore.state.connection === 'open'"
            f" && window.parleyStore.state.recordingsFor === '{conversation_id}'",
            15,
        )
        rows_after_reload = await page.page.locator("#recording-list li").count()
        assert page.page_errors == []

    assert [recording["id"] for recording in listed_before] == [recording_id]
    assert empty_note is True
    assert rows_after_reload == 0
    assert await listed_recordings(chat_server, conversation_id) == []
    status, _ = await get_json(chat_server, f"/api/recordings/{recording_id}")
    assert status == 404
