"""Immutable JSON values.

Messages and metadata that arrive on the wire are kept as *frozen* JSON: dicts become
read-only mappings and lists become tuples. That is what makes the append-only rule
(PROTOCOL.md §3 rule 1) impossible to break from agent code: nothing reachable from an
earlier message can be mutated. :func:`thaw` turns a frozen value back into plain JSON
for the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

#: A JSON value as decoded by :mod:`json` (dict, list, str, int, float, bool or None).
JSON: TypeAlias = Any


def freeze(value: JSON) -> JSON:
    """Return a deep, read-only copy of a decoded JSON value.

    dict -> :class:`types.MappingProxyType`, list -> tuple; scalars are returned as is.
    """
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


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
