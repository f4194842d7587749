"""Decoding a client's voice message: only known audio containers, never FFmpeg's probing.

FFmpeg picks a demuxer by probing the bytes when none is named, and some demuxers read
other inputs: `concat` opens files the text names, `sdp` opens network sockets. So the
container is recognised here from its leading bytes and its demuxer is named explicitly.
"""

from __future__ import annotations

import io

import numpy as np

from media.frames import read_audio_file

# Leading bytes of each accepted container -> the FFmpeg demuxer that reads it.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"RIFF", 0, "wav"),
    (b"OggS", 0, "ogg"),
    (b"\x1a\x45\xdf\xa3", 0, "matroska,webm"),
    (b"fLaC", 0, "flac"),
    (b"ID3", 0, "mp3"),
    (b"ftyp", 4, "mov,mp4,m4a,3gp,3g2,mj2"),
)
ACCEPTED = "WAV, Ogg, WebM or Matroska, FLAC, MP3 or MP4/M4A"


class UnsupportedAudioError(ValueError):
    """The bytes are not in one of the accepted audio containers."""


def audio_container(data: bytes) -> str:
    """Return the FFmpeg demuxer name for data, or raise UnsupportedAudioError."""
    for signature, offset, demuxer in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            if demuxer == "wav" and data[8:12] != b"WAVE":
                break
            return demuxer
    # An MP3 without an ID3 tag starts with a frame sync: 11 set bits.
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        return "mp3"
    raise UnsupportedAudioError(f"the audio is not in a supported format: send {ACCEPTED}")


def decode_voice(data: bytes, rate_hz: int, max_seconds: float) -> np.ndarray:
    """Decode a voice message to mono int16 at rate_hz. Blocking: run it in a thread.

    Raises ValueError (UnsupportedAudioError included) for anything it cannot use.
    """
    demuxer = audio_container(data)
    return read_audio_file(io.BytesIO(data), rate_hz, max_seconds=max_seconds, format=demuxer)
