"""Remote candidate filtering: only well-formed candidates on allowed addresses remain."""

from __future__ import annotations

from server.ice import filter_remote_candidates

GOOD = "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"
OTHER_HOST = "a=candidate:2 1 udp 2130706431 10.1.2.3 50001 typ host"
BAD_PORT = "a=candidate:3 1 udp 2130706431 127.0.0.1 99999999 typ host"
BAD_TRANSPORT = "a=candidate:4 1 sctp 2130706431 127.0.0.1 50002 typ host"
SHORT = "a=candidate:5 1 udp"


def sdp_with(*candidates: str) -> str:
    return "\r\n".join(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", *candidates]) + "\r\n"


def test_allowed_candidate_is_kept() -> None:
    assert GOOD in filter_remote_candidates(sdp_with(GOOD), ["127.0.0.1"])


def test_other_address_is_dropped() -> None:
    result = filter_remote_candidates(sdp_with(GOOD, OTHER_HOST), ["127.0.0.1"])
    assert OTHER_HOST not in result
    assert GOOD in result


def test_no_restriction_keeps_other_address() -> None:
    assert OTHER_HOST in filter_remote_candidates(sdp_with(OTHER_HOST), [])


def test_malformed_candidates_are_dropped() -> None:
    for restriction in ([], ["127.0.0.1"]):
        result = filter_remote_candidates(sdp_with(BAD_PORT, BAD_TRANSPORT, SHORT), restriction)
        assert "a=candidate" not in result


def test_other_lines_are_kept() -> None:
    result = filter_remote_candidates(sdp_with(BAD_PORT), ["127.0.0.1"])
    assert result.startswith("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
