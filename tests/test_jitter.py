"""The shorter inbound jitter buffer reaches aiortc's audio receivers."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from media.jitter import _PRIVATE_NAME, shorten_audio_jitter_buffers


async def test_audio_receiver_gets_short_prefetch() -> None:
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    caller.addTrack(AudioStreamTrack())
    await caller.setLocalDescription(await caller.createOffer())
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await server.setRemoteDescription(caller.localDescription)
        receiver = server.getTransceivers()[0].receiver
        assert hasattr(receiver, _PRIVATE_NAME), "aiortc renamed its jitter buffer attribute"

        shorten_audio_jitter_buffers(server, 2)

        buffer = getattr(receiver, _PRIVATE_NAME)
        assert buffer._prefetch == 2
        assert buffer.capacity == 16
    finally:
        await caller.close()
        await server.close()
