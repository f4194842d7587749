"""Errors with the stable codes clients see in `conversation:error` and HTTP bodies.

ClientError is the caller's mistake (bad input); ServiceError is a failure on our side or
in a model. Both carry a code from ERROR_CODES.
"""

from __future__ import annotations

ERROR_CODES = (
    "bad_json",
    "unknown_event",
    "invalid_field",
    "invalid_sdp",
    "invalid_audio",
    "invalid_transition",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "forbidden",
    "conversation_closed",
    "conversation_busy",
    "audio_not_ready",
    "too_large",
    "range_not_satisfiable",
    "recording_active",
    "rate_limited",
    "llm_unavailable",
    "stt_failed",
    "tts_failed",
    "internal",
)


class ParleyError(Exception):
    code = "internal"
    http_status = 500
    # The requestId of the client event that failed, when the event got far enough to
    # name one, so that the error response carries it.
    request_id: str | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            if code not in ERROR_CODES:
                raise ValueError(f"unknown error code {code!r}")
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}

    def headers(self) -> dict[str, str]:
        """Return the HTTP headers an error response carries besides its JSON body."""
        return {}


class ClientError(ParleyError):
    code = "invalid_field"
    http_status = 400


class PayloadTooLargeError(ClientError):
    code = "too_large"
    http_status = 413


class ConflictError(ClientError):
    code = "conversation_busy"
    http_status = 409


class NotFoundError(ClientError):
    code = "not_found"
    http_status = 404


class UnauthorizedError(ClientError):
    code = "unauthorized"
    http_status = 401


class ConversationClosedError(ClientError):
    code = "conversation_closed"
    http_status = 409


class InvalidTransitionError(ClientError):
    code = "invalid_transition"
    http_status = 409


class RateLimitedError(ClientError):
    code = "rate_limited"
    http_status = 429


class RangeNotSatisfiableError(ClientError):
    code = "range_not_satisfiable"
    http_status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size

    def headers(self) -> dict[str, str]:
        # A 416 names the representation's size, so the client can ask again.
        return {"Content-Range": f"bytes */{self.size}"}


class RecordingActiveError(ClientError):
    code = "recording_active"
    http_status = 409


class ServiceError(ParleyError):
    code = "internal"
    http_status = 503
