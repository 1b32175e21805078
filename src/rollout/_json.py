"""JSON values: strict decoding and encoding, and immutable copies.

Strict JSON in, strict JSON out (docs/PROTOCOL.md §2.5): :func:`loads` is the one
decoder for every body that comes from the network (inits, trainer answers) and
:func:`dumps` the one encoder for every body that goes to it. Anything one could not
send on is refused at the door, so a value accepted once can always be encoded later:

- ``NaN``, ``Infinity``, ``-Infinity`` and numbers that overflow to them (``1e999``);
- integers beyond 64 bits (``MAX_INT_DIGITS``) and nesting deeper than ``MAX_DEPTH``;
- duplicate keys in one object (which value wins differs between parsers);
- lone UTF-16 surrogates (``"\\ud800"``), which have no UTF-8 encoding.

Messages and metadata that arrive on the wire are kept as *frozen* JSON: dicts become
read-only mappings and lists become tuples. That is what makes the append-only rule
(docs/PROTOCOL.md §7.1) impossible to break from agent code: nothing reachable from an
earlier message can be mutated. :func:`thaw` turns a frozen value back into plain JSON
for the wire.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

#: Deepest nesting of arrays and objects accepted (a chat message is about 6 deep).
MAX_DEPTH = 64
#: Most digits of an integer literal: 64-bit values (20 digits) and a sign.
MAX_INT_DIGITS = 20

#: A JSON value: plain as decoded by :func:`loads` (dict, list, ...) or frozen by
#: :func:`freeze` (read-only mappings, tuples). Recursive, so the type checker sees wire
#: values for what they are; narrow with ``isinstance`` before use.
if TYPE_CHECKING:
    JSON: TypeAlias = Mapping[str, "JSON"] | Sequence["JSON"] | str | int | float | bool | None
else:  # at run time (cattrs reads annotations) any value: the checks are check() and loads()
    JSON = Any


class JSONError(ValueError):
    """A body that is not strict JSON (see the module docstring); the message says why in
    one line and never quotes more of the input than a key."""


def _no_constant(name: str) -> NoReturn:
    raise JSONError(f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONError(f"number {_short(text, 20)} is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONError(f"integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONError(f"duplicate key {_short(key)!r} in an object")
            seen.add(key)
    return obj


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object,
    parse_float=_parse_float,
    parse_int=_parse_int,
    parse_constant=_no_constant,
)


def loads(data: bytes | str) -> JSON:
    """Decode strict JSON (UTF-8 when ``data`` is bytes).

    Raises :class:`JSONError` with a one-line reason for anything else: invalid UTF-8 or
    syntax, the values listed in the module docstring.
    """
    try:
        text = data.decode() if isinstance(data, bytes | bytearray) else data
        value: JSON = _DECODER.decode(text)
    except JSONError:
        raise
    except RecursionError:
        raise JSONError(f"nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError as exc:
        raise JSONError(f"not UTF-8 at byte {exc.start}") from None
    except ValueError as exc:  # json.JSONDecodeError, int digit limits
        raise JSONError(str(exc).splitlines()[0] if str(exc) else "invalid JSON") from None
    check(value)
    return value


def check(value: JSON) -> None:
    """Raise :class:`JSONError` unless ``value`` (plain or frozen) can be sent as strict
    JSON: finite numbers, strings without lone surrogates, string keys, at most
    ``MAX_DEPTH`` levels deep. Iterative: safe on any depth."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                _check_text(item)
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JSONError(f"{item} is not a JSON number")
        elif isinstance(item, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                raise JSONError(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, Mapping):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise JSONError(f"object key {key!r} is not a string")
                    if not key.isascii():
                        _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            raise JSONError(f"a {type(item).__name__} is not a JSON value")


def _check_text(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise JSONError(
            f"string holds a lone surrogate (U+{ord(text[exc.start]):04X}) at index {exc.start}"
        ) from None


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so it can be encoded."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _frozen_object(value: object) -> dict[str, Any]:
    """The encoder's hook for what it cannot encode itself: a frozen object, as a shallow
    dict (its values are encoded in turn; tuples already encode as arrays)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


#: Encodes plain and frozen values alike without copying them first (the C encoder calls
#: the hook only for frozen objects): half the time of thawing then encoding.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_frozen_object
)


def dumps(value: JSON) -> bytes:
    """Encode ``value`` (plain or frozen) as compact strict UTF-8 JSON.

    Raises :class:`JSONError` when it is not strict JSON (see :func:`check`).
    """
    try:
        return _ENCODER.encode(value).encode()
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        check(value)  # names the offending value
        raise  # pragma: no cover - check() raises for everything json.dumps refuses


def freeze(value: JSON) -> JSON:
    """Return a deep, read-only copy of a decoded JSON value.

    dict -> :class:`types.MappingProxyType`, list -> tuple; scalars are returned as is.
    """
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def freeze_object(value: Mapping[str, JSON]) -> Mapping[str, JSON]:
    """:func:`freeze` for an object: a read-only mapping."""
    return MappingProxyType({k: freeze(v) for k, v in value.items()})


def thaw_object(value: Mapping[str, JSON]) -> dict[str, JSON]:
    """:func:`thaw` for an object: a plain dict."""
    return {k: thaw(v) for k, v in value.items()}


def thaw(value: JSON) -> JSON:
    """Inverse of :func:`freeze`: plain dicts and lists, ready for a JSON encoder."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def type_name(value: JSON) -> str:
    """The JSON name of a decoded value's type, for error messages ("a string", ...)."""
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a number"
        case str():
            return "a string"
        case Mapping():
            return "an object"
        case list() | tuple():
            return "an array"
    return type(value).__name__
