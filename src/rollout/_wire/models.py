"""The wire models of the protocol: frozen attrs classes, and the rules of their fields.

Every JSON body the server reads or writes is one of these (docs/PROTOCOL.md §2, §4 and
§5): :class:`InitRequest` and :class:`InitResponse` (``POST /v1/rollout/init``),
:class:`Message` and :class:`ToolCall` (the OpenAI chat format), :class:`CompletionParams`
(sampling params), :class:`RolloutResult` and :class:`Metrics` (the result). Models hold
data and check their own fields (raising :class:`FieldError`); turning JSON into models and
back is :mod:`rollout._wire.codec`'s one job.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from typing import Any, NewType
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx
from attrs import field, frozen

from .._json import JSON, freeze, thaw

__all__ = [
    "CompletionParams",
    "FieldError",
    "FinishReason",
    "InitRequest",
    "InitResponse",
    "JSONObject",
    "Message",
    "Metrics",
    "RolloutResult",
    "Status",
    "ToolCall",
    "check_api_key",
    "check_server_url",
]

#: Largest ``metadata`` accepted, as UTF-8 JSON (docs/PROTOCOL.md §2.1).
MAX_METADATA_BYTES = 1024 * 1024
#: Longest ``rollout_id`` / ``idempotency_key`` (docs/PROTOCOL.md §2.1).
MAX_ID_CHARS = 256
#: Longest ``api_key`` (docs/PROTOCOL.md §2.5).
MAX_API_KEY_CHARS = 4096
#: Longest ``server_url`` (docs/PROTOCOL.md §2.5).
MAX_URL_CHARS = 2048
#: Roles of the OpenAI chat format that a message may carry.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

#: A JSON object, kept frozen (see :mod:`rollout._json`).
JSONObject = NewType("JSONObject", Mapping[str, Any])


class FieldError(ValueError):
    """One invalid value, raised by validators and structure hooks.

    ``kind`` becomes the ``type`` of the 422 detail entry ("value_error", "string_type", ...).
    """

    def __init__(self, msg: str, kind: str = "value_error", *, field: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.kind = kind
        #: Set by attrs validators, which run after cattrs lost track of the attribute.
        self.field = field


class Status(enum.StrEnum):
    """``status`` of a result (docs/PROTOCOL.md §5.2)."""

    COMPLETED = "COMPLETED"
    ERROR = "ERROR"


class FinishReason(enum.StrEnum):
    """Why a rollout ended: the result's ``finish_reason`` (docs/PROTOCOL.md §5.2).

    ``STOP``/``LENGTH``/``MAX_TURNS``/``MAX_TOKENS`` end a ``COMPLETED`` rollout (a budget is
    not a failure); the others end an ``ERROR`` one.
    """

    STOP = "stop"
    LENGTH = "length"
    MAX_TURNS = "max_turns"
    MAX_TOKENS = "max_tokens"
    TIMEOUT = "timeout"
    ERROR = "error"
    SHUTDOWN = "shutdown"
    CANCELLED = "cancelled"


# --------------------------------------------------------------------------- messages


@frozen
class ToolCall:
    """One entry of an assistant message's ``tool_calls``.

    ``arguments`` is the JSON text exactly as the model produced it: it may be malformed,
    which the agent answers with an error tool message (docs/PROTOCOL.md §7.2).
    ``extra`` keeps unknown keys so that the call goes back to the trainer unchanged.
    """

    id: str
    name: str
    arguments: str
    type: str = "function"
    extra: Mapping[str, JSON] = field(factory=dict, converter=freeze)


@frozen
class Message:
    """One chat message in OpenAI format, immutable.

    ``content`` is a string, ``None`` or a tuple of content parts. Keys this class does not
    model are kept in ``extra`` and sent back verbatim, so that echoing a message never
    rewrites it (docs/PROTOCOL.md §7.1). On the wire ``content`` is always present (``null``
    for a tool-calling assistant message, as in ``tests/fixtures/05_chat_request_turn2.json``);
    the other optional keys are omitted when ``None``.
    """

    role: str
    content: str | tuple[JSON, ...] | None = field(default=None, converter=freeze)
    tool_calls: tuple[ToolCall, ...] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    extra: Mapping[str, JSON] = field(factory=dict, converter=freeze)

    @classmethod
    def system(cls, content: str) -> Message:
        return cls("system", content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls("user", content)

    @classmethod
    def tool(cls, tool_call_id: str, content: str) -> Message:
        """A tool result, ``{"role": "tool", "tool_call_id": ..., "content": ...}`` (§3 rule 2)."""
        return cls("tool", content, tool_call_id=tool_call_id)

    @property
    def text(self) -> str:
        """``content`` as plain text: text parts joined, ``""`` for ``None``."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = (part.get("text") for part in self.content if isinstance(part, Mapping))
        return "".join(text for text in texts if isinstance(text, str))


# --------------------------------------------------------------------------- init


def _check_id(name: str, value: str) -> None:
    if not value.strip():
        raise FieldError("must not be empty or whitespace", "string_too_short", field=name)
    if len(value) > MAX_ID_CHARS:
        raise FieldError(
            f"must be at most {MAX_ID_CHARS} characters", "string_too_long", field=name
        )
    if not value.isprintable():
        raise FieldError(
            "must not hold control or other non-printable characters", "string_pattern", field=name
        )


def _validate_rollout_id(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    _check_id(attribute.name, value)


def _validate_idempotency_key(
    _: Any, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None:
        _check_id(attribute.name, value)


def _validate_api_key(_: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    """The key travels as ``Authorization: Bearer <key>``: visible ASCII only (no space, CR,
    LF or non-ASCII, which no header can carry), at most ``MAX_API_KEY_CHARS``."""
    if value is None:
        return
    if len(value) > MAX_API_KEY_CHARS:
        raise FieldError(
            f"must be at most {MAX_API_KEY_CHARS} characters", "string_too_long", field="api_key"
        )
    if not value or not _HEADER_TOKEN.fullmatch(value):
        raise FieldError(
            "must be visible ASCII without spaces (it is sent in an HTTP header)",
            "string_pattern",
            field="api_key",
        )


_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")


def check_server_url(value: str) -> str:
    """``value`` normalized as a ``server_url`` (see :func:`_normalize_url`); raises
    :class:`ValueError` with the reason when an init could not carry it."""
    return _normalize_url(value)


def check_api_key(value: str | None) -> None:
    """Raise :class:`ValueError` when an init could not carry ``value`` as its api_key."""
    _validate_api_key(None, None, value)  # type: ignore[arg-type]


def _normalize_url(value: str) -> str:
    """Check ``server_url`` as the HTTP client will use it, so that no URL accepted here
    fails later (docs/PROTOCOL.md §2.5): visible ASCII (international host names in
    punycode), ``http``/``https``, a host, a valid port, no fragment. A trailing ``/`` of the
    path is dropped; user info and a query are kept (and redacted in logs)."""

    def refuse(why: str) -> FieldError:
        return FieldError(f"must be an http or https URL {why}", "url_parsing", field="server_url")

    if len(value) > MAX_URL_CHARS:
        raise refuse(f"of at most {MAX_URL_CHARS} characters")
    if not _HEADER_TOKEN.fullmatch(value):
        raise refuse("of visible ASCII characters (no spaces; host names in punycode)")
    try:
        parts = urlsplit(value)
        port = parts.port
        url = httpx.URL(value)
    except (ValueError, httpx.InvalidURL):
        raise refuse("that parses") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not url.host:
        raise refuse("with a host")
    if port == 0 or parts.fragment or "#" in value:
        raise refuse("with a port from 1 to 65535 and no fragment")
    if parts.query:
        return urlunsplit(parts._replace(path=parts.path.rstrip("/")))
    return value.rstrip("/")


def _at_least_one(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise FieldError(
            f"must be at least 1, got {value}", "greater_than_equal", field=attribute.name
        )


def _validate_messages(_: Any, attribute: attrs.Attribute[Any], value: tuple[Message, ...]) -> None:
    if not value:
        raise FieldError("must hold at least one message", "too_short", field=attribute.name)


def _validate_metadata(_: Any, attribute: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    size = len(json.dumps(thaw(value), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise FieldError(
            f"is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}",
            "too_long",
            field=attribute.name,
        )


@frozen
class CompletionParams:
    """Sampling params for the chat requests, from the init's ``completion_params``.

    The five named keys get the reference's defaults (docs/PROTOCOL.md §4.1); ``stop`` is kept as a
    list. Every other key (``seed``, ``top_k``, penalties, ...) is kept in ``extra`` and sent
    through unchanged (docs/PROTOCOL.md §4.1).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] | None = None
    logprobs: bool = True
    extra: Mapping[str, JSON] = field(factory=dict, converter=freeze)


#: completion_params keys that would overwrite the structure of the chat request itself.
RESERVED_PARAMS = frozenset({"messages", "rollout_id", "tools"})


@frozen
class InitRequest:
    """The body of ``POST /v1/rollout/init`` (docs/PROTOCOL.md §2.1).

    ``api_key`` is a secret: it is left out of ``repr`` and never logged.
    """

    rollout_id: str = field(validator=_validate_rollout_id)
    server_url: str = field(converter=_normalize_url)
    messages: tuple[Message, ...] = field(validator=_validate_messages)
    completion_params: CompletionParams = field(factory=CompletionParams)
    tool_server_url: str | None = None
    max_turns: int = field(default=10, validator=_at_least_one)
    max_tokens_total: int = field(default=8192, validator=_at_least_one)
    metadata: JSONObject = field(factory=lambda: JSONObject({}), validator=_validate_metadata)
    api_key: str | None = field(default=None, repr=False, validator=_validate_api_key)
    idempotency_key: str | None = field(default=None, validator=_validate_idempotency_key)

    @property
    def key(self) -> str:
        """The idempotency key: ``idempotency_key``, else ``rollout_id`` (docs/PROTOCOL.md §2.4)."""
        return self.idempotency_key or self.rollout_id


@frozen
class InitResponse:
    """The ``202`` body: ``{"rollout_id": ..., "tools": [OpenAI function tool, ...]}``."""

    rollout_id: str
    tools: tuple[Mapping[str, JSON], ...]


@frozen
class Metrics:
    """``metrics`` of a result (docs/PROTOCOL.md §5.1). Latencies in milliseconds, counts in tokens.

    ``max_context_tokens`` is the largest ``usage.total_tokens`` of any single turn.
    """

    total_latency_ms: float = 0.0
    llm_latency_ms: float = 0.0
    tool_latency_ms: float = 0.0
    num_llm_calls: int = 0
    num_tool_calls: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0
    max_context_tokens: int = 0


@frozen
class RolloutResult:
    """The body of ``POST {server_url}/v1/rollout/completed`` (docs/PROTOCOL.md §5.1).

    ``error_message`` and ``reward`` are omitted from the JSON when ``None``. An ``ERROR``
    result still carries the trajectory so far and real metrics.
    """

    rollout_id: str
    status: Status
    final_messages: tuple[Message, ...]
    finish_reason: FinishReason
    metrics: Metrics
    error_message: str | None = None
    reward: float | None = None
    extra_fields: JSONObject = field(factory=lambda: JSONObject({}))
