"""``422`` details: validating decoded bodies into wire models (docs/PROTOCOL.md §2.3).

:func:`parse_init_request` is the one entry point for an init body; every failure is a
:class:`ValidationError` whose ``detail`` is the FastAPI-style list the reference answers
with (``tests/fixtures/08_init_invalid_422.json``), never echoing the offending value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cattrs.errors import AttributeValidationNote, BaseValidationError, IterableValidationNote

from .._json import JSON, type_name
from . import codec
from .models import FieldError, InitRequest

__all__ = ["ValidationError", "parse_init_request", "structure_or_raise"]


class ValidationError(ValueError):
    """A request body or a trainer answer that does not fit the protocol.

    ``detail`` is a list of ``{"type": str, "loc": [str | int, ...], "msg": str}``, the shape
    of the reference's ``422`` body (docs/PROTOCOL.md §2.3). The offending input is
    deliberately *not* echoed: it may hold the trainer's ``api_key``.
    """

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        self.detail = detail
        super().__init__("; ".join(f"{_dotted(d['loc'])}: {d['msg']}" for d in detail))


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


def structure_or_raise(payload: JSON, cls: type[Any], *, root: str) -> Any:
    try:
        return codec.structure(payload, cls)
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
    return structure_or_raise(payload, InitRequest, root="body")  # type: ignore[no-any-return]


#: The synchronous variant (``POST /rollout``) names two init fields differently.
