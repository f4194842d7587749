"""The client-to-server events of the protocol, as typed pydantic models.

A client sends `{"type": ..., "data": {...}, "requestId"?: ...}`. `parse_event` validates the
whole envelope in one pass (strict types, bounded lengths, no unknown fields) and turns every
failure into a ClientError with a stable code. The same models validate REST bodies.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import uuid
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from server.errors import ClientError

ModelT = TypeVar("ModelT", bound=BaseModel)

PROTOCOL_VERSION = "1.0"

# Message sequence numbers are PostgreSQL INTEGER, event seqs BIGINT.
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1

Level = Literal["A1", "A2", "B1", "B2", "C1", "C2"]
Status = Literal["active", "paused", "completed", "archived"]
MemoryStrategy = Literal["sliding", "summarization", "hierarchical", "semantic"]
# Client request ids are echoed back verbatim, so they are kept short and printable.
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[ -~]+$")]
Title = Annotated[str, StringConstraints(max_length=255)]
SearchQuery = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_storable(value: str | None) -> str | None:
    # PostgreSQL text cannot contain NUL, and lone surrogates cannot be encoded as UTF-8.
    if value is None:
        return None
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("is not valid Unicode text") from exc
    return value


# -- data of each client event


class MemoryFields(Model):
    """A conversation's memory settings; a field left out keeps its value or default."""

    memoryStrategy: MemoryStrategy | None = None
    maxContextMessages: int | None = Field(default=None, ge=1, le=1000)
    maxContextTokens: int | None = Field(default=None, ge=256, le=1_000_000)
    autoSummarize: bool | None = None
    summarizeThreshold: int | None = Field(default=None, ge=2, le=10_000)


class ConversationSettings(MemoryFields):
    """A conversation's settings shared by create and update, beside title and level."""

    # Record this conversation's calls (when the server records calls at all).
    recordCalls: bool | None = None


class CreateConversation(ConversationSettings):
    title: Title | None = None
    level: Level | None = None
    templateId: uuid.UUID | None = None

    _storable = field_validator("title")(_check_storable)

    def given_settings(self) -> dict[str, Any]:
        """Return the memory and recording settings given, by their field names."""
        return {
            name: getattr(self, name)
            for name in ConversationSettings.model_fields
            if getattr(self, name) is not None
        }


class LoadConversation(Model):
    conversationId: uuid.UUID
    # Replay every stored event after this seq, then continue live.
    afterSeq: int | None = Field(default=None, ge=0, le=MAX_INT64)
    messageLimit: int = Field(default=50, ge=0, le=200)


class ListConversations(Model):
    status: Status | None = None
    limit: int = Field(default=20, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=100_000)


class MessageHistory(Model):
    conversationId: uuid.UUID
    # Newest first, from before this sequence number (default: the newest message).
    beforeSequence: int | None = Field(default=None, ge=1, le=MAX_INT32)
    # Oldest first, from after this sequence number. Excludes beforeSequence.
    afterSequence: int | None = Field(default=None, ge=0, le=MAX_INT32)
    limit: int = Field(default=50, ge=1, le=200)

    @model_validator(mode="after")
    def _one_direction(self) -> MessageHistory:
        if self.beforeSequence is not None and self.afterSequence is not None:
            raise ValueError("give beforeSequence or afterSequence, not both")
        return self


class SearchMessages(Model):
    query: SearchQuery
    limit: int = Field(default=20, ge=1, le=100)

    _storable = field_validator("query")(_check_storable)


class SetStatus(Model):
    conversationId: uuid.UUID
    status: Status


class AiSettings(Model):
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    model: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


class SettingsChange(ConversationSettings):
    """Conversation settings to change; a field left out keeps its value."""

    title: Title | None = None
    level: Level | None = None
    aiSettings: AiSettings | None = None

    _storable = field_validator("title")(_check_storable)

    def changed_settings(self) -> set[str]:
        return self.model_fields_set & set(SettingsChange.model_fields)

    @model_validator(mode="after")
    def _no_nulls(self) -> SettingsChange:
        # Leaving a field out keeps its value; null would erase a setting that must exist.
        for name in sorted(self.changed_settings()):
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null: leave it out to keep its value")
        return self


class UpdateSettings(SettingsChange):
    conversationId: uuid.UUID

    @model_validator(mode="after")
    def _something_to_change(self) -> UpdateSettings:
        if not self.changed_settings():
            raise ValueError("name at least one setting to change")
        return self


class ConversationPatch(SettingsChange):
    """Body of PATCH /api/conversations/{id}: a status change, settings, or both."""

    status: Status | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> ConversationPatch:
        if "status" in self.model_fields_set and self.status is None:
            raise ValueError("status cannot be null: leave it out to keep the status")
        if self.status is None and not self.changed_settings():
            raise ValueError("name a status or at least one setting to change")
        return self


class ConversationRef(Model):
    conversationId: uuid.UUID


class SendMessage(Model):
    conversationId: uuid.UUID
    inputMethod: Literal["text", "voice"] = "text"
    # Text of a text message; its maximum length is the max_chars validation context.
    content: str | None = None
    # A voice message: base64 of an audio file in any format FFmpeg reads (WebM, Ogg, WAV).
    audio: str | None = None
    # False skips synthesis: the reply arrives as text chunks without audio.
    speak: bool = True

    @field_validator("content")
    @classmethod
    def _content_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        max_chars = (info.context or {}).get("max_chars", 4000)
        if len(value) > max_chars:
            raise PydanticCustomError(
                "too_large",
                "is {length} characters, over the limit of {max_chars}",
                {"length": len(value), "max_chars": max_chars},
            )
        if not value.strip():
            raise ValueError("is empty")
        return _check_storable(value)

    @model_validator(mode="after")
    def _matches_input_method(self) -> SendMessage:
        if self.inputMethod == "text" and (self.content is None or self.audio is not None):
            raise ValueError("a text message needs content and no audio")
        if self.inputMethod == "voice" and (self.audio is None or self.content is not None):
            raise ValueError("a voice message needs audio and no content")
        return self

    def audio_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.audio or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ClientError(
                "field 'data.audio' is not valid base64", code="invalid_audio"
            ) from exc


class RequestAudio(Model):
    chunkId: uuid.UUID
    messageId: uuid.UUID | None = None


class Empty(Model):
    """Data of an event that needs none."""


# -- envelopes: each event's `type` names it and its `data` has the model above


class Envelope(Model):
    requestId: RequestId | None = None


class CreateConversationEvent(Envelope):
    type: Literal["conversation:create"]
    data: CreateConversation = CreateConversation()


class LoadConversationEvent(Envelope):
    type: Literal["conversation:load"]
    data: LoadConversation


class ListConversationsEvent(Envelope):
    type: Literal["conversation:list"]
    data: ListConversations = ListConversations()


class MessageHistoryEvent(Envelope):
    type: Literal["conversation:history"]
    data: MessageHistory


class SearchEvent(Envelope):
    type: Literal["conversation:search"]
    data: SearchMessages


class SetStatusEvent(Envelope):
    type: Literal["conversation:set-status"]
    data: SetStatus


class UpdateSettingsEvent(Envelope):
    type: Literal["conversation:update"]
    data: UpdateSettings


class UnsubscribeEvent(Envelope):
    type: Literal["conversation:unsubscribe"]
    data: ConversationRef


class DeleteEvent(Envelope):
    type: Literal["conversation:delete"]
    data: ConversationRef


class ListTemplatesEvent(Envelope):
    type: Literal["template:list"]
    data: Empty = Empty()


class SendMessageEvent(Envelope):
    type: Literal["message:send"]
    data: SendMessage


class RequestAudioEvent(Envelope):
    type: Literal["audio:request"]
    data: RequestAudio


class PingEvent(Envelope):
    type: Literal["connection:ping"]
    data: Empty = Empty()


ClientEvent = Annotated[
    CreateConversationEvent
    | LoadConversationEvent
    | ListConversationsEvent
    | MessageHistoryEvent
    | SearchEvent
    | SetStatusEvent
    | UpdateSettingsEvent
    | UnsubscribeEvent
    | DeleteEvent
    | ListTemplatesEvent
    | SendMessageEvent
    | RequestAudioEvent
    | PingEvent,
    Field(discriminator="type"),
]
_CLIENT_EVENT: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)
# get_args(ClientEvent)[0] is the union; each member's `type` is a one-value Literal.
EVENT_TYPES = frozenset(
    get_args(model.model_fields["type"].annotation)[0]
    for model in get_args(get_args(ClientEvent)[0])
)

# The first characters of an unknown event type echoed in its error.
MAX_ECHOED_CHARS = 64


LONE_SURROGATE = "the input contains text that is not valid Unicode (a lone surrogate)"


class _RequestIdOnly(BaseModel):
    """The requestId of an event that failed validation, so its error can echo it."""

    model_config = ConfigDict(extra="ignore")
    requestId: RequestId | None = None


def parse_event(raw: str | bytes, *, max_chars: int) -> ClientEvent:
    """Validate one client event; raise ClientError with the code of its first problem.

    The error carries the event's requestId when that much of the event is valid.
    """
    try:
        return _CLIENT_EVENT.validate_json(raw, strict=True, context={"max_chars": max_chars})
    except ValidationError as exc:
        error = validation_error(exc)
        kind = exc.errors(include_url=False)[0]["type"]
    envelope = _python_json(raw) if kind == "json_invalid" else None
    if isinstance(envelope, dict):
        # pydantic's parser rejects an unpaired surrogate escape such as "\ud800" as bad
        # JSON. It is valid JSON; the problem is text that cannot be stored as UTF-8.
        error = ClientError(LONE_SURROGATE)
    elif envelope is not None:
        error = ClientError("an event must be a JSON object", code="bad_json")
    if error.code != "bad_json" or envelope is not None:
        with contextlib.suppress(ValidationError, ValueError):
            if envelope is None:
                envelope = _RequestIdOnly.model_validate_json(raw).model_dump()
            error.request_id = _RequestIdOnly.model_validate(envelope).requestId
    raise error


def _python_json(raw: str | bytes) -> Any:
    """Parse with the json module, which accepts what pydantic's parser does not; None if
    this parse fails too."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def parse_body(model: type[ModelT], raw: str | bytes) -> ModelT:
    """Validate a REST body (JSON text) against one of the data models."""
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        error = validation_error(exc)
        kind = exc.errors(include_url=False)[0]["type"]
    if kind == "json_invalid" and isinstance(_python_json(raw), dict):
        error = ClientError(LONE_SURROGATE)
    raise error


def validation_error(exc: ValueError) -> ClientError:
    """Turn pydantic's first error into a ClientError with a stable code."""
    if not isinstance(exc, ValidationError):
        return ClientError(str(exc))
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    parts = list(error["loc"])
    if parts and parts[0] in EVENT_TYPES:
        # A discriminated union puts the event type first; the client's field path follows.
        parts = parts[1:]
    location = ".".join(str(part) for part in parts)
    if kind == "json_invalid":
        return ClientError(f"the message is not valid JSON: {error['msg']}", code="bad_json")
    if kind in ("model_type", "model_attributes_type", "dict_type") and len(error["loc"]) <= 1:
        return ClientError("an event must be a JSON object", code="bad_json")
    if kind == "union_tag_not_found":
        return ClientError("field 'type' is missing: every event names its type")
    if kind == "union_tag_invalid":
        if not isinstance(error.get("input", {}).get("type"), str):
            return ClientError("field 'type' is invalid: it must be a string naming the event")
        tag = str(error.get("ctx", {}).get("tag", ""))
        if len(tag) > MAX_ECHOED_CHARS:
            tag = tag[:MAX_ECHOED_CHARS] + "…"
        return ClientError(f"event type {tag!r} is not supported", code="unknown_event")
    if kind == "extra_forbidden":
        return ClientError(f"field {location!r} is not allowed here")
    if kind == "too_large":
        return ClientError(f"field {location!r} {error['msg']}", code="too_large")
    if kind == "missing":
        return ClientError(f"field {location!r} is missing")
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    where = f"field {location!r}" if location else "the input"
    return ClientError(f"{where} is invalid: {message}")
