"""Keep WebRTC media on the addresses the settings allow.

aioice gathers a host candidate for every interface except loopback and takes no option to
choose them, so with PARLEY_MEDIA_ADDRESSES set its address lookup is replaced for the
whole process (aioice 0.13: `aioice.ice.get_host_addresses`). Remote candidates outside
the list are dropped from the offer, so the pair ICE picks uses only allowed addresses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import aioice.ice

logger = logging.getLogger(__name__)


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Make every peer connection of this process gather candidates on these addresses only."""
    if not addresses:
        return
    allowed = list(addresses)

    def allowed_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in allowed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = allowed_host_addresses
    logger.info("WebRTC media restricted to %s", ", ".join(allowed))


def filter_remote_candidates(sdp: str, addresses: Sequence[str]) -> str:
    """Drop `a=candidate` lines that are malformed or, when addresses is not empty, whose
    address is not in it."""
    allowed = set(addresses)
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if not _is_valid_candidate(fields):
                continue
            if allowed and fields[4] not in allowed:
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


def _is_valid_candidate(fields: list[str]) -> bool:
    """Check `a=candidate:foundation component transport priority address port typ ...`;
    aioice raises from inside its send loop on a port it cannot use."""
    if len(fields) < 8 or fields[2].lower() not in ("udp", "tcp"):
        return False
    return fields[5].isdigit() and 1 <= int(fields[5]) <= 65535
