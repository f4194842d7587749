"""The inbound jitter buffer: shorter than aiortc's, reaching its audio receivers, and
recovering from a lost packet."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtp import RtpPacket

from media.jitter import (
    _PRIVATE_NAME,
    CAPACITY_PACKETS,
    MAX_EXCESS_PACKETS,
    DrainingJitterBuffer,
    shorten_audio_jitter_buffers,
)


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


def packets(count: int, *, lost: frozenset[int] = frozenset()) -> list[RtpPacket]:
    """Return audio packets of one 20 ms Opus frame each, leaving out the lost ones."""
    stream = []
    for n in range(count):
        if n in lost:
            continue
        packet = RtpPacket(payload_type=111, sequence_number=n, timestamp=960 * n)
        # aiortc's receiver sets the depayloaded frame before adding a packet.
        packet._data = bytes([n % 256])  # type: ignore[attr-defined]
        stream.append(packet)
    return stream


def feed(buffer: JitterBuffer, stream: list[RtpPacket]) -> tuple[list[int], list[int]]:
    """Add each packet; return the timestamps released and the packets held after each."""
    released, held = [], []
    for packet in stream:
        _, frame = buffer.add(packet)
        if frame is not None:
            released.append(frame.timestamp)
        held.append(sum(1 for slot in buffer._packets if slot is not None))
    return released, held


def test_in_order_packets_pass_with_prefetch_delay() -> None:
    released, held = feed(DrainingJitterBuffer(CAPACITY_PACKETS, prefetch=2), packets(50))

    assert released == [960 * n for n in range(48)]
    assert max(held) == 2


def test_lost_packet_keeps_aiortc_buffer_behind() -> None:
    # Shown for contrast: the stock buffer stays about 15 packets (300 ms) behind.
    _, held = feed(JitterBuffer(CAPACITY_PACKETS, prefetch=2), packets(80, lost=frozenset({10})))

    assert held[-1] >= 14


def test_lost_packet_is_skipped_and_delay_recovers() -> None:
    buffer = DrainingJitterBuffer(CAPACITY_PACKETS, prefetch=2)

    released, held = feed(buffer, packets(80, lost=frozenset({10})))

    missing = {n for n in range(70) if 960 * n not in released}
    # The lost packet, plus at most three dropped beside it to shed the backlog.
    assert 10 in missing
    assert missing <= {7, 8, 9, 10, 11, 12, 13}
    assert len(missing) <= 4
    assert max(held[20:]) <= 2 + MAX_EXCESS_PACKETS


def test_swapped_packets_lose_nothing() -> None:
    stream = packets(30)
    stream[10], stream[11] = stream[11], stream[10]

    released, held = feed(DrainingJitterBuffer(CAPACITY_PACKETS, prefetch=2), stream)

    assert released == [960 * n for n in range(len(released))]
    assert len(released) >= 27
    assert held[-1] <= 2 + MAX_EXCESS_PACKETS
