"""Interim transcripts: the utterance in progress, transcribed about once a second.

They show the caller that they are being heard. The words two interim transcripts agree
on are passed to Whisper as a fixed prefix for the next ones and for the final transcript,
so words already shown do not change under the caller's eyes.

NOTE: the prefix does not make the final transcript faster. CTranslate2 4.8 feeds forced
prefix tokens one decoder step each (bench/stt_window.py measured 1.00 of the time without
it). What makes it fast is the window fitted to the utterance (media/stt.py) and starting
it at the first pause. Decoding only the tail audio would need word timings per interim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from media.inbound import InboundAudio
from media.stt import SpeechToText, TranscriptionError
from media.vad import VAD_RATE_HZ
from server.turn_end import stable_prefix

logger = logging.getLogger(__name__)

# Less speech than this gives Whisper too little to say anything useful.
MIN_INTERIM_S = 0.6


class InterimTranscripts:
    def __init__(
        self,
        name: str,
        stt: SpeechToText,
        inbound: InboundAudio,
        send: Callable[[dict[str, Any]], None],
        interval_s: float,
        stt_busy: Callable[[], bool],
    ) -> None:
        self._name = name
        self._stt = stt
        self._inbound = inbound
        self._send = send
        self._interval_s = interval_s
        self._stt_busy = stt_busy
        self._texts: list[str] = []
        self._utterance = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def utterance_id(self) -> int:
        return self._utterance

    @property
    def prefix(self) -> str:
        """Text the start of the current utterance will very likely transcribe to."""
        if len(self._texts) < 2:
            return ""
        return stable_prefix(self._texts[-2], self._texts[-1])

    def start(self) -> None:
        """Forget the last utterance and transcribe the new one as it grows."""
        self.stop()
        self._utterance += 1
        self._texts = []
        if self._interval_s > 0:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}-interim")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def send_final(self, utterance_id: int, text: str, audio_s: float) -> None:
        self._send(self._event(utterance_id, text, audio_s, final=True))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            # The end-of-speech transcription matters more: never queue ahead of it.
            if self._stt_busy():
                continue
            samples = await self._inbound.snapshot()
            if len(samples) < MIN_INTERIM_S * VAD_RATE_HZ:
                continue
            try:
                transcript = await self._stt.transcribe(samples, prefix=self.prefix)
            except TranscriptionError as exc:
                logger.warning("%s: interim transcription failed: %s", self._name, exc)
                continue
            if transcript.text:
                self._texts = [*self._texts[-1:], transcript.text]
                self._send(
                    self._event(
                        self._utterance, transcript.text, transcript.duration_s, final=False
                    )
                )

    def _event(
        self, utterance_id: int, text: str, audio_s: float, *, final: bool
    ) -> dict[str, Any]:
        return {
            "utteranceId": utterance_id,
            "text": text,
            "final": final,
            "audioMs": round(audio_s * 1000),
        }
