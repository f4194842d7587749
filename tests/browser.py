"""Drive the browser client in a real headless Chromium with a fake microphone.

Chromium is Debian's build at CHROMIUM_PATH. Playwright only drives it, so no browser is ever
downloaded. Every page is served by a test server on 127.0.0.1, and the host resolver rule keeps
Chromium's own background lookups from leaving the machine.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_DIR

pytest.importorskip("playwright.async_api", reason="playwright is not installed (dev extra)")

from playwright.async_api import (
    BrowserContext,
    Page,
    Playwright,
    async_playwright,
    expect,
)

__all__ = ["Playwright", "async_playwright", "expect"]

CHROMIUM_PATH = Path("/usr/lib/chromium/chromium")
ARTIFACTS_DIR = REPO_DIR / "artifacts" / "browser"

BASE_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]

# Test instrumentation: keep every WebSocket the page opens in window.parleyTestSockets, so
# a test can close the event bus's socket as a dropped network would. While
# window.parleyTestBlockSockets is true, new sockets carry an empty token, so the server
# rejects them and the page keeps retrying as if the server were unreachable.
RECORD_SOCKETS_SCRIPT = """
window.parleyTestSockets = [];
window.parleyTestBlockSockets = false;
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(url, ...rest) {
    const blocked = window.parleyTestBlockSockets;
    super(blocked ? String(url).replace(/token=[^&]*/, 'token=') : url, ...rest);
    window.parleyTestSockets.push(this);
  }
};
"""


def chromium_args(fake_audio: Path, *, grant_microphone: bool = True) -> list[str]:
    """Return the launch flags. Without grant_microphone, Chromium denies the microphone."""
    args = [*BASE_ARGS, f"--use-file-for-fake-audio-capture={fake_audio}"]
    if grant_microphone:
        args.append("--use-fake-ui-for-media-stream")
    return args


class ParleyPage:
    """One tab of the Parley page, with the steps the tests share."""

    def __init__(self, page: Page, base_url: str, shot_prefix: str) -> None:
        self.page = page
        self.base_url = base_url
        self.shot_prefix = shot_prefix
        self.console: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("dialog", self._record_dialog)

    async def _record_dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    async def sign_in(self, token: str) -> None:
        await self.page.goto(self.base_url + "/")
        await self.page.fill("#token", token)
        await self.page.click("#sign-in button")
        await self.wait_for("window.parleyStore.state.connection === 'open'", 15)

    async def create_conversation(self, title: str, level: str = "B1") -> str:
        previous = await self.page.evaluate("window.parleyStore.state.currentId")
        await self.page.fill("#new-title", title)
        await self.page.select_option("#new-level", level)
        await self.page.click("#new-conversation button")
        # Wait for the new conversation, not the one open before the click.
        previous_js = "null" if previous is None else f"'{previous}'"
        await self.wait_for(
            "(() => { const s = window.parleyStore.state;"
            f" return s.currentId !== null && s.currentId !== {previous_js}"
            " && s.current !== null && s.current.conversationId === s.currentId"
            " && !s.loading; })()",
            15,
        )
        conversation_id: str = await self.page.evaluate("window.parleyStore.state.currentId")
        return conversation_id

    async def send_message(self, text: str) -> None:
        await self.page.fill("#message-text", text)
        await self.page.click("#send")

    async def wait_for_replies(self, count: int, timeout_s: float = 60) -> None:
        """Wait until `count` assistant messages have finished generating."""
        await self.wait_for(
            "window.parleyStore.state.messages.filter(m => m.role === 'assistant'"
            f" && m.metadata.status === 'completed').length >= {count}",
            timeout_s,
        )

    async def wait_for(self, expression: str, timeout_s: float) -> None:
        try:
            await self.page.wait_for_function(expression, timeout=timeout_s * 1000)
        except Exception:
            await self.screenshot("timed-out")
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for `{expression}`\n" + self.diagnostics()
            ) from None

    async def wait_for_value(self, function: str, arg: Any, timeout_s: float) -> Any:
        """Wait until the JavaScript function, called with arg, returns a truthy value; return
        that value."""
        try:
            handle = await self.page.wait_for_function(function, arg=arg, timeout=timeout_s * 1000)
        except Exception:
            await self.screenshot("timed-out")
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for `{function}` with {arg!r}\n"
                + self.diagnostics()
            ) from None
        return await handle.json_value()

    async def state(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in which `state` is window.parleyStore.state."""
        return await self.page.evaluate(
            f"(() => {{ const state = window.parleyStore.state; return {expression}; }})()"
        )

    async def screenshot(self, step: str) -> Path:
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS_DIR / f"{self.shot_prefix}-{step}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def diagnostics(self) -> str:
        lines = ["console:", *self.console[-30:], "page errors:", *self.page_errors]
        return "\n".join(lines)


@asynccontextmanager
async def open_parley_page(
    driver: Playwright,
    base_url: str,
    fake_audio: Path,
    shot_prefix: str,
    *,
    grant_microphone: bool = True,
) -> AsyncIterator[ParleyPage]:
    """Launch Chromium with a fresh profile and open one tab on the Parley server."""
    with tempfile.TemporaryDirectory(prefix="parley-chromium-") as profile_dir:
        context: BrowserContext = await driver.chromium.launch_persistent_context(
            user_data_dir=profile_dir,
            executable_path=str(CHROMIUM_PATH),
            headless=True,
            args=chromium_args(fake_audio, grant_microphone=grant_microphone),
        )
        try:
            await context.add_init_script(RECORD_SOCKETS_SCRIPT)
            page = context.pages[0] if context.pages else await context.new_page()
            yield ParleyPage(page, base_url, shot_prefix)
        finally:
            await context.close()
