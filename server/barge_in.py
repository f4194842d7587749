"""Barge-in: the caller speaking over a reply pauses it at once, and cuts it once the speech
proves to be a real turn. A cough or an "mm-hm" lets it resume.

Pausing at the first 40 ms of speech keeps the caller's wait for silence under 200 ms,
while the decision to cut waits for barge_in_min_speech_ms of speech that Silero confirmed.
A reply that is still being prepared counts too: its audio waits while the caller talks,
and is dropped if the caller turns out to be taking a turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from media.frames import WEBRTC_RATE_HZ
from media.tracks import ReplyAudioTrack
from media.vad import Utterance
from server import metrics
from server.settings import Settings

logger = logging.getLogger(__name__)


class BargeIn:
    def __init__(self, name: str, track: ReplyAudioTrack, settings: Settings) -> None:
        self._name = name
        self._track = track
        self._grace_samples = settings.barge_in_echo_grace_ms * WEBRTC_RATE_HZ // 1000
        self._resume_s = settings.barge_in_resume_ms / 1000
        self._min_speech_ms = settings.barge_in_min_speech_ms
        # The track is paused for speech that may still prove to be a noise.
        self._holding = False
        self._resume_timer: asyncio.TimerHandle | None = None
        # The current utterance began over a reply, has been confirmed as speech, and cut.
        self._over_reply = False
        self._confirmed = False
        self._cut = False
        track.may_start = self._may_start
        # Told of each action taken on the reply: ("paused" | "resumed" | "cut", reason).
        self.on_action: Callable[[str, str], None] | None = None

    def on_onset(self, heard_at: float) -> None:
        """Handle the start of speech. heard_at is when its first audio arrived."""
        if not self._track.active:
            return
        self._over_reply = True
        if self._in_echo_grace():
            logger.info("%s: speech in the first moments of our audio ignored (echo)", self._name)
            return
        if not self._track.paused:
            self._track.pause()
            self._holding = True
            pause_s = time.monotonic() - heard_at
            metrics.BARGE_IN_PAUSE.observe(pause_s)
            logger.info(
                "%s: reply paused %.0f ms after the caller's speech", self._name, pause_s * 1000
            )
            self._report("paused", "the caller started speaking")
        self._arm_resume()

    def on_confirmed(self) -> None:
        """Cut the reply the caller talks over: the utterance has enough speech to be a turn."""
        self._confirmed = True
        if self._track.active and (self._holding or not self._in_echo_grace()):
            self._cut_reply()

    def on_faded(self) -> None:
        """Resume the reply: the speech stopped before it was confirmed."""
        if self._holding and not self._cut:
            self._resume("the caller's speech stopped")

    def takes_turn(self, utterance: Utterance) -> bool:
        """Return whether the finished utterance is a turn. Short speech over a reply that
        did not cut it (a backchannel) is not."""
        over_reply, cut = self._over_reply, self._cut
        self._over_reply = self._confirmed = self._cut = False
        if self._holding:
            self._resume("the caller's speech ended")
        if over_reply and not cut and utterance.speech_ms < self._min_speech_ms:
            metrics.BACKCHANNELS.inc()
            logger.info(
                "%s: %d ms of speech over the reply taken as a backchannel, not a turn",
                self._name,
                utterance.speech_ms,
            )
            return False
        return True

    def close(self) -> None:
        self._release()
        self._track.may_start = None

    def _may_start(self) -> bool:
        """Called by the track before a reply's first audio: hold it while the caller is
        in the middle of a confirmed turn, and drop it when that turn ends."""
        if not self._confirmed:
            return True
        self._cut_reply()
        return False

    def _cut_reply(self) -> None:
        if self._cut:
            return
        self._cut = True
        self._release()
        dropped = self._track.interrupt("barge-in")
        metrics.BARGE_INS.inc()
        logger.info("%s: barge-in cut the reply (%d chunks dropped)", self._name, dropped)
        self._report("cut", "the caller took the turn")

    def _in_echo_grace(self) -> bool:
        return not self._track.idle and self._track.played_samples < self._grace_samples

    def _arm_resume(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        loop = asyncio.get_running_loop()
        self._resume_timer = loop.call_later(self._resume_s, self._resume, "no decision in time")

    def _resume(self, why: str) -> None:
        if not self._holding:
            return
        self._release()
        self._track.resume()
        logger.info("%s: reply resumed (%s)", self._name, why)
        self._report("resumed", why)

    def _report(self, action: str, reason: str) -> None:
        if self.on_action is not None:
            self.on_action(action, reason)

    def _release(self) -> None:
        self._holding = False
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
