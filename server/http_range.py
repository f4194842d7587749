"""Single byte ranges of HTTP Range requests (RFC 9110, section 14), for seeking in audio."""

from __future__ import annotations

import re

from server.errors import RangeNotSatisfiableError

# ASCII digits only: \d would also match other scripts' digits, which int() accepts.
_SINGLE_RANGE = re.compile(r"bytes=([0-9]{0,30})-([0-9]{0,30})")


def byte_range(
    header: str | None, size: int, *, if_range: str | None = None
) -> tuple[int, int] | None:
    """Return the (first, last) bytes, inclusive, that a Range header requests in a file of
    size bytes, or None to send the whole file.

    A header that is missing, malformed or requests several ranges gets the whole file, as
    the RFC allows a server to ignore Range. A valid range that starts past the end raises
    RangeNotSatisfiableError (416). With an If-Range header the whole file is sent too:
    these responses carry no validator (ETag, Last-Modified) that it could match.
    """
    if header is None or if_range is not None:
        return None
    match = _SINGLE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        # A suffix range: the last n bytes.
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiableError(f"range {header!r} selects no bytes", size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else None
    if last is not None and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiableError(
            f"range {header!r} starts at or past the end of the {size} bytes", size
        )
    return first, size - 1 if last is None else min(last, size - 1)
