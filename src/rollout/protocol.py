"""The Remote Rollout Protocol in code: wire models, one converter, 422 details.

Every JSON body this server reads or writes is modelled here, as frozen attrs classes
converted by the single cattrs converter :data:`converter`:

- :class:`InitRequest` (``POST /v1/rollout/init``, docs/PROTOCOL.md §2) and :class:`InitResponse`
  (its ``202`` body);
- :class:`Message` / :class:`ToolCall` (OpenAI chat format, docs/PROTOCOL.md §7);
- :func:`chat_request` (the body of ``POST {server_url}/v1/chat/completions``, §2) and
  :class:`Completion` (what we read from its answer);
- :class:`RolloutResult` / :class:`Metrics` (``POST {server_url}/v1/rollout/completed``, §2).

Rules for incoming JSON: unknown fields are ignored (forward compatibility); a type mismatch
is an error (the string ``"3"`` is not an integer, ``true`` is not a number). Validation
failures raise :class:`ValidationError`, whose :attr:`~ValidationError.detail` is the
FastAPI-style list the reference answers with in its ``422``
(``tests/fixtures/08_init_invalid_422.json``).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NewType, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import attrs
import cattrs
import httpx
from attrs import field, frozen
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    IterableValidationNote,
)

from ._json import JSON, freeze, thaw, type_name

__all__ = [
    "Completion",
    "CompletionParams",
    "FinishReason",
    "InitRequest",
    "InitResponse",
    "Message",
    "Metrics",
    "RolloutResult",
    "Status",
    "ToolCall",
    "Usage",
    "ValidationError",
    "chat_request",
    "converter",
    "parse_completion",
    "parse_init_request",
    "parse_sync_request",
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


class ValidationError(ValueError):
    """A request body or a trainer answer that does not fit the protocol.

    ``detail`` is a list of ``{"type": str, "loc": [str | int, ...], "msg": str}``, the shape
    of the reference's ``422`` body (docs/PROTOCOL.md §2.3). The offending input is
    deliberately *not* echoed: it may hold the trainer's ``api_key``.
    """

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        self.detail = detail
        super().__init__("; ".join(f"{_dotted(d['loc'])}: {d['msg']}" for d in detail))


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
        return "".join(
            part.get("text", "")
            for part in self.content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )


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

    def canonical_json(self) -> bytes:
        """This request as canonical JSON (sorted keys, defaults filled in, URL normalized).

        Two init bodies are "the same" for idempotency when these bytes are equal.
        """
        return json.dumps(
            converter.unstructure(self), sort_keys=True, separators=(",", ":")
        ).encode()


@frozen
class InitResponse:
    """The ``202`` body: ``{"rollout_id": ..., "tools": [OpenAI function tool, ...]}``."""

    rollout_id: str
    tools: tuple[Mapping[str, JSON], ...]


# --------------------------------------------------------------------------- completion


@frozen
class Usage:
    """``usage`` of a chat completion, in tokens. Missing counts are 0."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@frozen
class Completion:
    """What the server reads from a chat completion: the first choice and the usage."""

    message: Message
    finish_reason: str | None
    usage: Usage


@frozen
class _Choice:
    message: Message
    finish_reason: str | None = None


@frozen
class _CompletionBody:
    choices: tuple[_Choice, ...]
    usage: Usage | None = None


def chat_request(
    rollout_id: str,
    messages: Sequence[Message],
    params: CompletionParams,
    tools: Sequence[Mapping[str, JSON]],
) -> dict[str, JSON]:
    """The JSON body of ``POST {server_url}/v1/chat/completions`` (docs/PROTOCOL.md §4.1).

    Keys as the reference sends them (``tests/fixtures/03_chat_request_turn1.json``): ``model``
    ("default"), the full ``messages`` history, ``rollout_id``, ``temperature``, ``top_p``,
    ``max_tokens``, ``stop`` (omitted when none) and ``logprobs``; then every other sampling
    key unchanged, then the agent's ``tools`` (omitted when it has none). A ``model`` key in
    ``completion_params`` replaces "default".
    """
    body: dict[str, JSON] = {
        "model": "default",
        "messages": [converter.unstructure(m) for m in messages],
        "rollout_id": rollout_id,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.stop is not None:
        body["stop"] = list(params.stop)
    body["logprobs"] = params.logprobs
    body.update(thaw(params.extra))
    if tools:
        body["tools"] = [thaw(t) for t in tools]
    return body


def parse_completion(payload: JSON) -> Completion:
    """Read a chat completion answer (docs/PROTOCOL.md §4.2).

    Raises :class:`ValidationError` when it has no ``choices[0].message`` with role
    ``assistant``, when a tool call lacks its ``id`` or ``function.name``, or when two tool
    calls share an id (they could not each be answered exactly once, §3 rule 2).
    Token data (``token_ids``, ``logprobs``) is not read: it stays on the trainer side.
    """
    body = _structure(payload, _CompletionBody, root="completion")
    if not body.choices:
        raise ValidationError(
            [_detail(["completion", "choices"], "must not be empty", "too_short")]
        )
    choice = body.choices[0]
    message = choice.message
    if message.role != "assistant":
        raise ValidationError(
            [
                _detail(
                    ["completion", "choices", 0, "message", "role"],
                    f"must be 'assistant', got {message.role!r}",
                )
            ]
        )
    ids = [call.id for call in message.tool_calls or ()]
    if len(set(ids)) != len(ids):
        raise ValidationError(
            [
                _detail(
                    ["completion", "choices", 0, "message", "tool_calls"],
                    "tool call ids must be unique",
                )
            ]
        )
    return Completion(message, choice.finish_reason, body.usage or Usage())


# --------------------------------------------------------------------------- result


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

    def to_json(self) -> dict[str, JSON]:
        """The wire JSON, keys in the order of ``tests/fixtures/07_completed_callback.json``."""
        body: dict[str, JSON] = {
            "rollout_id": self.rollout_id,
            "status": self.status.value,
            "final_messages": [converter.unstructure(m) for m in self.final_messages],
            "finish_reason": self.finish_reason.value,
        }
        if self.error_message is not None:
            body["error_message"] = self.error_message
        if self.reward is not None:
            body["reward"] = self.reward
        body["metrics"] = converter.unstructure(self.metrics)
        body["extra_fields"] = thaw(self.extra_fields)
        return body


# --------------------------------------------------------------------------- converter


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)

    def strict_str(value: Any, _: Any) -> str:
        if not isinstance(value, str):
            raise FieldError(f"expected a string, got {type_name(value)}", "string_type")
        return value

    def strict_int(value: Any, _: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(f"expected an integer, got {type_name(value)}", "int_type")
        return value

    def strict_float(value: Any, _: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(f"expected a number, got {type_name(value)}", "float_type")
        if not math.isfinite(value):
            raise FieldError("expected a finite number", "finite_number")
        return float(value)

    def strict_bool(value: Any, _: Any) -> bool:
        if not isinstance(value, bool):
            raise FieldError(f"expected a boolean, got {type_name(value)}", "bool_type")
        return value

    def json_object(value: Any, _: Any) -> JSONObject:
        if not isinstance(value, Mapping):
            raise FieldError(f"expected an object, got {type_name(value)}", "dict_type")
        return JSONObject(freeze(value))

    conv.register_structure_hook(str, strict_str)
    conv.register_structure_hook(int, strict_int)
    conv.register_structure_hook(float, strict_float)
    conv.register_structure_hook(bool, strict_bool)
    conv.register_structure_hook(JSONObject, json_object)
    conv.register_unstructure_hook(JSONObject, thaw)

    def sequence_hook(item_type: type) -> Any:
        # Arrays must be JSON arrays: cattrs alone would happily iterate a string or a dict.
        def structure(value: Any, _: Any) -> tuple[Any, ...]:
            if not isinstance(value, list | tuple):
                raise FieldError(f"expected an array, got {type_name(value)}", "list_type")
            items: list[Any] = []
            errors: list[Exception] = []
            for index, item in enumerate(value):
                try:
                    items.append(conv.structure(item, item_type))
                except Exception as exc:
                    exc.add_note(IterableValidationNote(f"@ index {index}", index, item_type))
                    errors.append(exc)
            if errors:
                raise cattrs.IterableValidationError("While structuring an array", errors, tuple)
            return tuple(items)

        return structure

    def is_array(type_: Any) -> bool:
        args = get_args(type_)
        return get_origin(type_) is tuple and len(args) == 2 and args[1] is ...

    conv.register_structure_hook_factory(is_array, lambda type_: sequence_hook(get_args(type_)[0]))

    def structure_tool_call(value: Any, _: Any) -> ToolCall:
        obj = _object(value)
        function = obj.get("function")
        errors: list[Exception] = []
        call_id = _field(conv, obj, "id", str, errors)
        if not isinstance(function, Mapping):
            errors.append(
                _noted(
                    FieldError("expected an object with name and arguments", "dict_type"),
                    "function",
                )
            )
            name = arguments = ""
        else:
            nested: list[Exception] = []
            name = _field(conv, function, "name", str, nested)
            arguments = _field(conv, function, "arguments", str, nested)
            if nested:
                errors.append(
                    _noted(cattrs.ClassValidationError("function", nested, ToolCall), "function")
                )
        kind = _field(conv, obj, "type", str, errors, default="function")
        if errors:
            raise cattrs.ClassValidationError("While structuring a tool call", errors, ToolCall)
        extra = {k: v for k, v in obj.items() if k not in ("id", "type", "function")}
        return ToolCall(call_id, name, arguments, kind, extra)

    def unstructure_tool_call(call: ToolCall) -> dict[str, JSON]:
        return {
            "id": call.id,
            "type": call.type,
            "function": {"name": call.name, "arguments": call.arguments},
            **thaw(call.extra),
        }

    def structure_message(value: Any, _: Any) -> Message:
        obj = _object(value)
        errors: list[Exception] = []
        role = _field(conv, obj, "role", str, errors)
        if isinstance(role, str) and role not in ROLES:
            errors.append(
                _noted(
                    FieldError(f"unknown role {role!r}; expected one of {sorted(ROLES)}", "enum"),
                    "role",
                )
            )
        content = obj.get("content")
        if content is not None and not isinstance(content, str | list):
            errors.append(
                _noted(
                    FieldError(
                        f"expected a string, an array of parts or null, got {type_name(content)}",
                        "content_type",
                    ),
                    "content",
                )
            )
        tool_calls = _field(
            conv, obj, "tool_calls", tuple[ToolCall, ...] | None, errors, default=None
        )
        tool_call_id = _field(conv, obj, "tool_call_id", str | None, errors, default=None)
        if role == "tool" and tool_call_id is None and "tool_call_id" not in obj:
            errors.append(
                _noted(
                    FieldError("a tool message needs its tool_call_id", "missing"), "tool_call_id"
                )
            )
        name = _field(conv, obj, "name", str | None, errors, default=None)
        if errors:
            raise cattrs.ClassValidationError("While structuring a message", errors, Message)
        known = ("role", "content", "tool_calls", "tool_call_id", "name")
        extra = {k: v for k, v in obj.items() if k not in known}
        return Message(role, content, tool_calls, tool_call_id, name, extra)

    def unstructure_message(message: Message) -> dict[str, JSON]:
        body: dict[str, JSON] = {"role": message.role, "content": thaw(message.content)}
        if message.tool_calls is not None:
            body["tool_calls"] = [unstructure_tool_call(c) for c in message.tool_calls]
        if message.tool_call_id is not None:
            body["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            body["name"] = message.name
        body.update(thaw(message.extra))
        return body

    def structure_params(value: Any, _: Any) -> CompletionParams:
        obj = _object(value)
        errors: list[Exception] = []
        defaults = CompletionParams()
        # ``null`` means "not given" for the five named keys: the reference reads them with
        # dict.get(key, default), so trainers may send null and expect the default.
        temperature = _field(
            conv,
            obj,
            "temperature",
            float,
            errors,
            default=defaults.temperature,
            null_is_default=True,
        )
        top_p = _field(
            conv, obj, "top_p", float, errors, default=defaults.top_p, null_is_default=True
        )
        max_tokens = _field(
            conv, obj, "max_tokens", int, errors, default=defaults.max_tokens, null_is_default=True
        )
        logprobs = _field(
            conv, obj, "logprobs", bool, errors, default=defaults.logprobs, null_is_default=True
        )
        stop_raw = obj.get("stop")
        stop: tuple[str, ...] | None = None
        if isinstance(stop_raw, str):
            stop = (stop_raw,)
        elif stop_raw is not None:
            stop = _field(conv, obj, "stop", tuple[str, ...], errors, default=None)
        if isinstance(temperature, float) and temperature < 0:
            errors.append(
                _noted(FieldError("must be at least 0", "greater_than_equal"), "temperature")
            )
        if isinstance(top_p, float) and not 0 <= top_p <= 1:
            errors.append(_noted(FieldError("must be between 0 and 1", "less_than_equal"), "top_p"))
        if isinstance(max_tokens, int) and max_tokens < 1:
            errors.append(
                _noted(FieldError("must be at least 1", "greater_than_equal"), "max_tokens")
            )
        for key in sorted(RESERVED_PARAMS & obj.keys()):
            errors.append(
                _noted(
                    FieldError(
                        f"{key!r} is part of the chat request itself, not a sampling param",
                        "reserved",
                    ),
                    key,
                )
            )
        if obj.get("stream"):
            errors.append(
                _noted(
                    FieldError("streaming chat completions are not supported", "unsupported"),
                    "stream",
                )
            )
        if errors:
            raise cattrs.ClassValidationError(
                "While structuring completion_params", errors, CompletionParams
            )
        named = ("temperature", "top_p", "max_tokens", "stop", "logprobs")
        extra = {k: v for k, v in obj.items() if k not in named}
        return CompletionParams(temperature, top_p, max_tokens, stop, logprobs, extra)

    def unstructure_params(params: CompletionParams) -> dict[str, JSON]:
        body: dict[str, JSON] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "stop": None if params.stop is None else list(params.stop),
            "logprobs": params.logprobs,
        }
        body.update(thaw(params.extra))
        return body

    conv.register_structure_hook(ToolCall, structure_tool_call)
    conv.register_unstructure_hook(ToolCall, unstructure_tool_call)
    conv.register_structure_hook(Message, structure_message)
    conv.register_unstructure_hook(Message, unstructure_message)
    conv.register_structure_hook(CompletionParams, structure_params)
    conv.register_unstructure_hook(CompletionParams, unstructure_params)
    conv.register_unstructure_hook(Mapping, thaw)
    return conv


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(f"expected an object, got {type_name(value)}", "dict_type")
    return value


_MISSING = object()


def _field(
    conv: cattrs.Converter,
    obj: Mapping[str, Any],
    key: str,
    type_: Any,
    errors: list[Exception],
    *,
    default: Any = _MISSING,
    null_is_default: bool = False,
) -> Any:
    """Structure ``obj[key]`` as ``type_``; on failure record a noted error, return None."""
    if key not in obj or (null_is_default and obj[key] is None):
        if default is _MISSING:
            errors.append(_noted(KeyError(key), key))
            return None
        return default
    try:
        return conv.structure(obj[key], type_)
    except Exception as exc:
        errors.append(_noted(exc, key))
        return None


def _noted(exc: Exception, name: str) -> Exception:
    exc.add_note(AttributeValidationNote(f"Structuring @ attribute {name}", name, None))
    return exc


#: The single converter for every wire model of this module.
converter = _make_converter()


# --------------------------------------------------------------------------- errors


def _detail(loc: list[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg}


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc)


def _flatten(exc: BaseException, loc: list[str | int]) -> list[dict[str, Any]]:
    """Turn cattrs' nested validation errors into FastAPI-style detail entries."""
    if isinstance(exc, BaseValidationError):
        out: list[dict[str, Any]] = []
        for sub in exc.exceptions:
            step: list[str | int] = []
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    step = [note.name]
                elif isinstance(note, IterableValidationNote):
                    step = [note.index]
            out.extend(_flatten(sub, loc + step))
        return out
    if isinstance(exc, KeyError):
        return [_detail(loc, "Field required", "missing")]
    if isinstance(exc, FieldError):
        # An attrs validator runs after cattrs structured the fields, so cattrs cannot say
        # which attribute failed: the error names it.
        return [_detail(loc if exc.field is None else [*loc, exc.field], exc.msg, exc.kind)]
    return [_detail(loc, str(exc) or type(exc).__name__)]


def _structure(payload: JSON, cls: type[Any], *, root: str) -> Any:
    try:
        return converter.structure(payload, cls)
    except (BaseValidationError, KeyError, TypeError, ValueError) as exc:
        raise ValidationError(_flatten(exc, [root])) from None


def parse_init_request(payload: JSON) -> InitRequest:
    """Validate a decoded ``POST /v1/rollout/init`` body (docs/PROTOCOL.md §2.1).

    Raises :class:`ValidationError` listing every invalid field with its ``loc``
    (e.g. ``["body", "messages", 0, "role"]``).
    """
    if not isinstance(payload, Mapping):
        raise ValidationError(
            [_detail(["body"], f"expected a JSON object, got {type_name(payload)}", "dict_type")]
        )
    return _structure(payload, InitRequest, root="body")  # type: ignore[no-any-return]


#: The synchronous variant (``POST /rollout``) names two init fields differently.
_SYNC_RENAMES = {"sampling_params": "completion_params", "callback_api_key": "api_key"}
#: The synchronous variant's bounds, checked after the types (docs/PROTOCOL.md §6).
_SYNC_BOUNDS: tuple[tuple[tuple[str, ...], float, float], ...] = (
    (("sampling_params", "temperature"), 0.0, 2.0),
    (("sampling_params", "top_p"), 0.0, 1.0),
    (("sampling_params", "max_tokens"), 1, 32768),
    (("max_turns",), 1, 100),
)


def parse_sync_request(payload: JSON) -> InitRequest:
    """Validate a ``POST /rollout`` body (the synchronous variant, docs/PROTOCOL.md §6)
    into the :class:`InitRequest` it is equivalent to.

    ``sampling_params`` plays ``completion_params``, ``callback_api_key`` plays ``api_key``
    (the Bearer token of the LLM calls); ``tokenizer_name``/``tokenizer_revision`` are
    accepted and unused. Raises :class:`ValidationError` with ``loc``s in the synchronous
    names, also for values outside the variant's bounds (``temperature`` 0-2, ``top_p`` 0-1,
    ``max_tokens`` 1-32768, ``max_turns`` 1-100).
    """
    if not isinstance(payload, Mapping):
        raise ValidationError(
            [_detail(["body"], f"expected a JSON object, got {type_name(payload)}", "dict_type")]
        )
    renamed = {
        _SYNC_RENAMES.get(k, k): v for k, v in payload.items() if k not in _SYNC_RENAMES.values()
    }
    try:
        request = parse_init_request(renamed)
    except ValidationError as exc:
        back = {v: k for k, v in _SYNC_RENAMES.items()}
        for item in exc.detail:
            item["loc"] = [
                back.get(part, part) if isinstance(part, str) else part for part in item["loc"]
            ]
        raise
    values: dict[str, float] = {
        "temperature": request.completion_params.temperature,
        "top_p": request.completion_params.top_p,
        "max_tokens": request.completion_params.max_tokens,
        "max_turns": request.max_turns,
    }
    errors = [
        _detail(
            ["body", *path],
            f"must be between {low:g} and {high:g}, got {values[path[-1]]:g}",
            "range_error",
        )
        for path, low, high in _SYNC_BOUNDS
        if not low <= values[path[-1]] <= high
    ]
    if errors:
        raise ValidationError(errors)
    return request


def _unstructure_init(request: InitRequest) -> dict[str, JSON]:
    return {
        "rollout_id": request.rollout_id,
        "server_url": request.server_url,
        "messages": [converter.unstructure(m) for m in request.messages],
        "completion_params": converter.unstructure(request.completion_params),
        "tool_server_url": request.tool_server_url,
        "max_turns": request.max_turns,
        "max_tokens_total": request.max_tokens_total,
        "metadata": thaw(request.metadata),
        "api_key": request.api_key,
        "idempotency_key": request.idempotency_key,
    }


converter.register_unstructure_hook(InitRequest, _unstructure_init)
