"""The synchronous variant's body (``POST /rollout``, docs/PROTOCOL.md §6): an init with
two fields renamed and tighter bounds."""

from __future__ import annotations

from collections.abc import Mapping

from .._json import JSON, type_name
from .models import InitRequest
from .validation import ValidationError, _detail, parse_init_request

__all__ = ["parse_sync_request"]

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
