"""A shorter receive jitter buffer for the caller's audio.

aiortc 1.16 gives every audio receiver `JitterBuffer(capacity=16, prefetch=4)`: a frame is
released only after 4 later ones have arrived, which delays all inbound speech, and so the
end of every turn, by about 80 ms. Speech recognition does not need that much protection
against reordering, so the buffer is replaced with a shorter one. aiortc has no option for
it: this sets the receiver's private attribute, and must run after setRemoteDescription
creates the receivers and before any RTP arrives.
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer

logger = logging.getLogger(__name__)

# aiortc 1.16's capacity for audio; it must be a power of two.
CAPACITY_PACKETS = 16
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
        setattr(receiver, _PRIVATE_NAME, JitterBuffer(CAPACITY_PACKETS, prefetch=prefetch_packets))
