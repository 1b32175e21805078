"""Tools: plain typed Python functions the model can call.

:func:`tool` turns a function into a :class:`Tool`. Its OpenAI function schema comes from
the signature (types, defaults) and the docstring (Google, NumPy or reST style: the summary
becomes the description, each documented parameter its description). Before each call the
model's arguments are parsed and validated against that schema with :mod:`jsonschema`.

A tool call never crashes a rollout (docs/PROTOCOL.md §7.2): malformed argument JSON, an
unknown tool name, arguments that fail the schema, or an exception raised by the tool all
become the text of the tool message, ``"Error: ..."``.

Sync tools run in a worker thread so they never stall the event loop (and with it every
other rollout); async tools run on the loop.
"""

from __future__ import annotations

import enum
import inspect
import json
import logging
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import docstring_parser
import jsonschema
import trio

from . import _threads
from ._json import JSON
from ._wire.models import ToolCall
from .errors import ToolError

__all__ = ["Tool", "run_tool_call", "tool"]

log = logging.getLogger("rollout.tools")

#: JSON Schema keywords for Python types that map one to one.
_SIMPLE_TYPES: dict[Any, dict[str, JSON]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
}


@attrs.frozen
class Tool:
    """A function the model may call, with its OpenAI function schema.

    ``parameters`` is a JSON Schema (draft 2020-12) object schema; ``function`` takes the
    validated arguments as keyword arguments and returns the tool message content (a string
    is sent as is, anything else as JSON). Build one with :func:`tool`.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    function: Callable[..., Any]
    _validator: jsonschema.protocols.Validator = attrs.field(init=False, repr=False, eq=False)

    @_validator.default
    def _make_validator(self) -> jsonschema.protocols.Validator:
        cls = jsonschema.validators.validator_for(
            self.parameters, default=jsonschema.Draft202012Validator
        )
        cls.check_schema(dict(self.parameters))
        return cls(dict(self.parameters))

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function tool: ``{"type": "function", "function": {name, description,
        parameters, strict}}``, the shape of ``tests/fixtures/02_init_response_202.json``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
                "strict": False,
            },
        }

    def validate(self, arguments: JSON) -> None:
        """Raise :class:`ToolError` naming the first problem when ``arguments`` fail the schema."""
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(arguments))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            raise ToolError(
                f"invalid arguments for {self.name!r}: {error.message}"
                + (f" (at {where})" if where else "")
            )


@typing.overload
def tool(
    function: Callable[..., Any], *, name: str | None = None, description: str | None = None
) -> Tool: ...


@typing.overload
def tool(
    function: None = None, *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool` of a typed function; usable as ``@tool`` or ``@tool(name=...)``.

    Supported parameter types: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``,
    ``list[T]``/``Sequence[T]``, ``dict[str, T]``/``Mapping[str, T]``, ``Literal[...]``,
    :class:`enum.Enum` subclasses and unions of these (``T | None``). Parameters with a
    default are optional. Raises :class:`TypeError` for ``*args``/``**kwargs`` or an
    unsupported annotation, so a bad tool fails at import time, not mid-rollout.

    A sync function runs in a worker thread (``ServerConfig.max_tool_threads`` of them for
    all rollouts). A thread cannot be interrupted: when the rollout's deadline passes, the
    rollout ends and the thread is abandoned, running on (and holding its worker) until the
    function returns; ``/health`` counts such threads (``abandoned_threads``) and each is
    logged. Give blocking tools their own timeouts, or write them ``async``.
    """
    if function is None:
        return partial(tool, name=name, description=description)
    return _make_tool(function, name=name, description=description)


def _make_tool(function: Callable[..., Any], *, name: str | None, description: str | None) -> Tool:
    doc = docstring_parser.parse(inspect.getdoc(function) or "")
    param_docs = {p.arg_name: p.description for p in doc.params}
    hints = typing.get_type_hints(function)
    properties: dict[str, JSON] = {}
    required: list[str] = []
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(
                f"tool {function.__name__!r}: *args and **kwargs cannot be described to a model"
            )
        schema = _schema_for(hints.get(param.name, Any), where=f"{function.__name__}({param.name})")
        if param_docs.get(param.name):
            schema = {**schema, "description": param_docs[param.name]}
        if param.default is param.empty:
            required.append(param.name)
        elif _is_json(param.default):
            schema = {**schema, "default": param.default}
        properties[param.name] = schema
    summary = "\n\n".join(part for part in (doc.short_description, doc.long_description) if part)
    parameters: dict[str, JSON] = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return Tool(name or function.__name__, description or summary, parameters, function)


def _schema_for(annotation: Any, *, where: str) -> dict[str, JSON]:
    if annotation in _SIMPLE_TYPES:
        return dict(_SIMPLE_TYPES[annotation])
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        options = [_schema_for(arg, where=where) for arg in args]
        return {"anyOf": options}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [member.value for member in annotation]}
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        items = args[0] if args and origin is not tuple else Any
        if origin is tuple and args and not (len(args) == 2 and args[1] is ...):
            raise TypeError(f"tool {where}: fixed-length tuples are not supported, use list[T]")
        return {"type": "array", "items": _schema_for(items, where=where)}
    if origin in (dict, Mapping) or annotation in (dict,):
        values = args[1] if len(args) == 2 else Any
        return {"type": "object", "additionalProperties": _schema_for(values, where=where)}
    raise TypeError(f"tool {where}: cannot describe the annotation {annotation!r} as JSON Schema")


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- calling


async def run_tool_call(
    call: ToolCall,
    tools: Mapping[str, Tool],
    *,
    limiter: trio.CapacityLimiter | None = None,
) -> str:
    """Execute one tool call and return the tool message's content; never raises except
    :class:`trio.Cancelled`.

    ``limiter`` bounds the worker threads used by sync tools (Trio's default limiter of 40
    when ``None``). Every failure (unknown tool, malformed or invalid arguments, the tool
    raised) is answered ``"Error: <why>"`` (docs/PROTOCOL.md §7.2).
    """
    try:
        found = tools.get(call.name)
        if found is None:
            available = ", ".join(sorted(tools)) or "none"
            raise ToolError(f"unknown tool {call.name!r}; available tools: {available}")
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolError(f"arguments are not valid JSON: {exc}") from None
        if not isinstance(arguments, dict):
            raise ToolError("arguments must be a JSON object")
        found.validate(arguments)
        result = await _invoke(call.name, found.function, arguments, limiter)
    except Exception as exc:
        if not isinstance(exc, ToolError):
            log.info("tool %r raised %s: %s", call.name, type(exc).__name__, exc)
        return f"Error: {exc}" if str(exc) else f"Error: {type(exc).__name__}"
    return _content(result)


async def _invoke(
    name: str,
    function: Callable[..., Any],
    arguments: dict[str, Any],
    limiter: trio.CapacityLimiter | None,
) -> Any:
    if inspect.iscoroutinefunction(function):
        return await function(**arguments)
    # A deadline must not wait for a thread that cannot be interrupted: it is abandoned,
    # counted and logged (rollout._threads).
    return await _threads.run_sync(
        partial(function, **arguments), limiter=limiter, what=f"tool {name!r}"
    )


def _content(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(result)
