"""The one way JSON becomes wire models and back: a cattrs converter with strict hooks.

Incoming JSON (already strict, see :mod:`rollout._json`) is structured with strict types:
the string ``"3"`` is not an integer, ``true`` is not a number, an array must be an array.
Unknown keys of a message, a tool call or ``completion_params`` are kept in ``extra`` and
written back verbatim, so that echoing a message never rewrites it (docs/PROTOCOL.md §7.1).
Failures raise cattrs' validation errors; :mod:`rollout._wire.validation` turns them into
``422`` details. The wire JSON of a model is :func:`unstructure` (or :func:`result_json` for
a result, :func:`canonical_init` for idempotency).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, get_args, get_origin

import cattrs
from cattrs.errors import AttributeValidationNote, IterableValidationNote

from .._json import JSON, freeze_object, thaw, thaw_object, type_name
from .models import (
    RESERVED_PARAMS,
    ROLES,
    CompletionParams,
    FieldError,
    InitRequest,
    JSONObject,
    Message,
    RolloutResult,
    ToolCall,
)

__all__ = [
    "canonical_init",
    "converter",
    "result_json",
    "structure",
    "unstructure",
    "unstructure_init",
    "unstructure_message",
]

#: The single converter for every wire model.
converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)


def structure(value: Any, cls: type[Any]) -> Any:
    """``value`` (decoded JSON) as a ``cls``; raises cattrs' validation errors."""
    return converter.structure(value, cls)


def unstructure(obj: Any) -> Any:
    """The wire JSON (plain dicts and lists) of a model."""
    return converter.unstructure(obj)


def result_json(result: RolloutResult) -> dict[str, JSON]:
    """The body of ``POST {server_url}/v1/rollout/completed``, keys in the order of
    ``tests/fixtures/07_completed_callback.json``; ``error_message`` and ``reward`` are
    omitted when ``None`` (docs/PROTOCOL.md §5.1)."""
    body: dict[str, JSON] = {
        "rollout_id": result.rollout_id,
        "status": result.status.value,
        "final_messages": [unstructure_message(m) for m in result.final_messages],
        "finish_reason": result.finish_reason.value,
    }
    if result.error_message is not None:
        body["error_message"] = result.error_message
    if result.reward is not None:
        body["reward"] = result.reward
    body["metrics"] = converter.unstructure(result.metrics)
    body["extra_fields"] = thaw(result.extra_fields)
    return body


def canonical_init(request: InitRequest) -> bytes:
    """``request`` as canonical JSON (sorted keys, defaults filled in, URL normalized): two
    init bodies are "the same" for idempotency when these bytes are equal (§2.4)."""
    return json.dumps(unstructure_init(request), sort_keys=True, separators=(",", ":")).encode()


def _strict_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise FieldError(f"expected a string, got {type_name(value)}", "string_type")
    return value


def _strict_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"expected an integer, got {type_name(value)}", "int_type")
    return value


def _strict_float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(f"expected a number, got {type_name(value)}", "float_type")
    if not math.isfinite(value):
        raise FieldError("expected a finite number", "finite_number")
    return float(value)


def _strict_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"expected a boolean, got {type_name(value)}", "bool_type")
    return value


def _json_object(value: Any, _: Any) -> JSONObject:
    if not isinstance(value, Mapping):
        raise FieldError(f"expected an object, got {type_name(value)}", "dict_type")
    return JSONObject(freeze_object(value))


def _sequence_hook(item_type: type) -> Any:
    # Arrays must be JSON arrays: cattrs alone would happily iterate a string or a dict.
    def structure(value: Any, _: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise FieldError(f"expected an array, got {type_name(value)}", "list_type")
        items: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, item_type))
            except Exception as exc:
                exc.add_note(IterableValidationNote(f"@ index {index}", index, item_type))
                errors.append(exc)
        if errors:
            raise cattrs.IterableValidationError("While structuring an array", errors, tuple)
        return tuple(items)

    return structure


def _is_array(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is ...


def _structure_tool_call(value: Any, _: Any) -> ToolCall:
    obj = _object(value)
    function = obj.get("function")
    errors: list[Exception] = []
    call_id = _field(obj, "id", str, errors)
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
        name = _field(function, "name", str, nested)
        arguments = _field(function, "arguments", str, nested)
        if nested:
            errors.append(
                _noted(cattrs.ClassValidationError("function", nested, ToolCall), "function")
            )
    kind = _field(obj, "type", str, errors, default="function")
    if errors:
        raise cattrs.ClassValidationError("While structuring a tool call", errors, ToolCall)
    extra = {k: v for k, v in obj.items() if k not in ("id", "type", "function")}
    return ToolCall(call_id, name, arguments, kind, extra)


def _unstructure_tool_call(call: ToolCall) -> dict[str, JSON]:
    return {
        "id": call.id,
        "type": call.type,
        "function": {"name": call.name, "arguments": call.arguments},
        **thaw_object(call.extra),
    }


def _structure_message(value: Any, _: Any) -> Message:
    obj = _object(value)
    errors: list[Exception] = []
    role = _field(obj, "role", str, errors)
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
    tool_calls = _field(obj, "tool_calls", tuple[ToolCall, ...] | None, errors, default=None)
    tool_call_id = _field(obj, "tool_call_id", str | None, errors, default=None)
    if role == "tool" and tool_call_id is None and "tool_call_id" not in obj:
        errors.append(
            _noted(FieldError("a tool message needs its tool_call_id", "missing"), "tool_call_id")
        )
    name = _field(obj, "name", str | None, errors, default=None)
    if errors:
        raise cattrs.ClassValidationError("While structuring a message", errors, Message)
    known = ("role", "content", "tool_calls", "tool_call_id", "name")
    extra = {k: v for k, v in obj.items() if k not in known}
    return Message(role, content, tool_calls, tool_call_id, name, extra)


def unstructure_message(message: Message) -> dict[str, JSON]:
    body: dict[str, JSON] = {"role": message.role, "content": thaw(message.content)}
    if message.tool_calls is not None:
        body["tool_calls"] = [_unstructure_tool_call(c) for c in message.tool_calls]
    if message.tool_call_id is not None:
        body["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        body["name"] = message.name
    body.update(thaw_object(message.extra))
    return body


def _structure_params(value: Any, _: Any) -> CompletionParams:
    obj = _object(value)
    errors: list[Exception] = []
    defaults = CompletionParams()
    # ``null`` means "not given" for the five named keys: the reference reads them with
    # dict.get(key, default), so trainers may send null and expect the default.
    temperature = _field(
        obj,
        "temperature",
        float,
        errors,
        default=defaults.temperature,
        null_is_default=True,
    )
    top_p = _field(obj, "top_p", float, errors, default=defaults.top_p, null_is_default=True)
    max_tokens = _field(
        obj, "max_tokens", int, errors, default=defaults.max_tokens, null_is_default=True
    )
    logprobs = _field(
        obj, "logprobs", bool, errors, default=defaults.logprobs, null_is_default=True
    )
    stop_raw = obj.get("stop")
    stop: tuple[str, ...] | None = None
    if isinstance(stop_raw, str):
        stop = (stop_raw,)
    elif stop_raw is not None:
        stop = _field(obj, "stop", tuple[str, ...], errors, default=None)
    if isinstance(temperature, float) and temperature < 0:
        errors.append(_noted(FieldError("must be at least 0", "greater_than_equal"), "temperature"))
    if isinstance(top_p, float) and not 0 <= top_p <= 1:
        errors.append(_noted(FieldError("must be between 0 and 1", "less_than_equal"), "top_p"))
    if isinstance(max_tokens, int) and max_tokens < 1:
        errors.append(_noted(FieldError("must be at least 1", "greater_than_equal"), "max_tokens"))
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


def _unstructure_params(params: CompletionParams) -> dict[str, JSON]:
    body: dict[str, JSON] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": None if params.stop is None else list(params.stop),
        "logprobs": params.logprobs,
    }
    body.update(thaw_object(params.extra))
    return body


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(f"expected an object, got {type_name(value)}", "dict_type")
    return value


_MISSING = object()


def _field(
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
        return converter.structure(obj[key], type_)
    except Exception as exc:
        errors.append(_noted(exc, key))
        return None


def _noted(exc: Exception, name: str) -> Exception:
    exc.add_note(AttributeValidationNote(f"Structuring @ attribute {name}", name, None))
    return exc


def unstructure_init(request: InitRequest) -> dict[str, JSON]:
    return {
        "rollout_id": request.rollout_id,
        "server_url": request.server_url,
        "messages": [unstructure_message(m) for m in request.messages],
        "completion_params": converter.unstructure(request.completion_params),
        "tool_server_url": request.tool_server_url,
        "max_turns": request.max_turns,
        "max_tokens_total": request.max_tokens_total,
        "metadata": thaw(request.metadata),
        "api_key": request.api_key,
        "idempotency_key": request.idempotency_key,
    }


def _register() -> None:
    structure_hooks: list[tuple[Any, Any]] = [
        (str, _strict_str),
        (int, _strict_int),
        (float, _strict_float),
        (bool, _strict_bool),
        (JSONObject, _json_object),
        (ToolCall, _structure_tool_call),
        (Message, _structure_message),
        (CompletionParams, _structure_params),
    ]
    for type_, hook in structure_hooks:
        converter.register_structure_hook(type_, hook)
    converter.register_structure_hook_factory(
        _is_array, lambda type_: _sequence_hook(get_args(type_)[0])
    )
    unstructure_hooks: list[tuple[Any, Any]] = [
        (JSONObject, thaw),
        (ToolCall, _unstructure_tool_call),
        (Message, unstructure_message),
        (CompletionParams, _unstructure_params),
        (InitRequest, unstructure_init),
        (Mapping, thaw),
    ]
    for type_, hook in unstructure_hooks:
        converter.register_unstructure_hook(type_, hook)


_register()
