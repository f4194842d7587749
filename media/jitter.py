"""A shorter receive jitter buffer for the caller's audio.

aiortc 1.16 gives every audio receiver `JitterBuffer(capacity=16, prefetch=4)`: a frame is
released only after 4 later ones have arrived, which delays all inbound speech, and so the
end of every turn, by about 80 ms. Speech recognition does not need that much protection
against reordering, so the buffer is replaced with a shorter one. aiortc has no option for
it: this sets the receiver's private attribute, and must run after setRemoteDescription
creates the receivers and before any RTP arrives.

aiortc's buffer also never recovers from a lost packet: it waits for the missing one until
16 later packets have arrived, then releases one frame per packet received, so 300 ms of
delay stay for the rest of the call (and every later utterance, and every barge-in,
reaches the server that much later). The buffer here skips a missing packet once a few
later ones wait, and drops the oldest frame when more than it needs have piled up.
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

logger = logging.getLogger(__name__)

# aiortc 1.16's capacity for audio; it must be a power of two.
CAPACITY_PACKETS = 16
# Later packets that wait for a missing one before it is taken as lost: 60 ms.
GAP_WAIT_PACKETS = 3
# Packets held beyond the prefetch before the oldest are dropped to cut the delay.
MAX_EXCESS_PACKETS = 1


class DrainingJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer for audio, which gives up on a lost packet and sheds a
    backlog instead of keeping its delay for good."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        if frame is None and self._waiting() > self._prefetch + GAP_WAIT_PACKETS:
            # A packet is missing in front of these: release the oldest one that arrived.
            frame = self._release_oldest()
        while frame is not None and self._waiting() > self._prefetch + MAX_EXCESS_PACKETS:
            # One frame leaves per packet received, so a backlog only shrinks by dropping.
            self._skip_gap()
            self.remove(1)
        return pli_flag, frame

    def _release_oldest(self) -> JitterFrame | None:
        """Return the oldest packet that arrived as a frame: an audio packet carries one
        whole 20 ms frame."""
        self._skip_gap()
        if self._origin is None:
            return None
        packet = self._packets[self._origin % self._capacity]
        if packet is None:
            return None
        self.remove(1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]

    def _waiting(self) -> int:
        return sum(1 for packet in self._packets if packet is not None)

    def _skip_gap(self) -> None:
        """Move the origin past missing packets to the oldest one that arrived."""
        if self._origin is None:
            return
        for _ in range(self._capacity):
            if self._packets[self._origin % self._capacity] is not None:
                return
            self._origin = uint16_add(self._origin, 1)
_PRIVATE_NAME = "_RTCRtpReceiver__jitter_buffer"


def shorten_audio_jitter_buffers(pc: RTCPeerConnection, prefetch_packets: int) -> None:
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "audio":
            continue
        if not hasattr(receiver, _PRIVATE_NAME):
            logger.warning(
                "this aiortc has no %s; inbound audio keeps its jitter buffer", _PRIVATE_NAME
            )
            return
        setattr(
            receiver,
            _PRIVATE_NAME,
            DrainingJitterBuffer(CAPACITY_PACKETS, prefetch=prefetch_packets),
        )
