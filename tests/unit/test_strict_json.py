"""Strict JSON in and out (rollout._json): what cannot be sent on is refused at the door,
with a one-line reason, and never a RecursionError or a traceback."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout import _json

REFUSED = {
    b'{"a": 1, "a": 2}': "duplicate key 'a'",
    b"[NaN]": "NaN is not a JSON number",
    b"[Infinity]": "Infinity is not a JSON number",
    b"[-Infinity]": "-Infinity is not a JSON number",
    b"[1e999]": "out of range",
    b"[-1e999]": "out of range",
    b"[" + b"9" * 4301 + b"]": "4301 digits",
    b"[" + b"9" * 21 + b"]": "21 digits",
    b'["\\ud800"]': "lone surrogate (U+D800)",
    b'{"\\udfff": 1}': "lone surrogate (U+DFFF)",
    b"[" * 65 + b"]" * 65: "nested deeper than 64",
    b"[" * 100_000 + b"]" * 100_000: "nested deeper than 64",
    b"\xff": "not UTF-8",
    b"": "Expecting value",
    b"{": "Expecting",
}


@pytest.mark.parametrize("raw", list(REFUSED), ids=[r[:12].decode("latin-1") for r in REFUSED])
def test_what_strict_json_refuses(raw: bytes) -> None:
    with pytest.raises(_json.JSONError, match=None) as caught:
        _json.loads(raw)
    assert REFUSED[raw] in str(caught.value)
    assert "\n" not in str(caught.value)


def test_what_it_accepts() -> None:
    assert _json.loads(b'{"emoji": "\\ud83d\\ude00", "n": -9223372036854775808}') == {
        "emoji": "\U0001f600",
        "n": -(2**63),
    }
    assert _json.loads(b"[" * 64 + b"]" * 64) is not None
    assert _json.loads('"caf\u00e9"') == "caf\u00e9"


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, {"x": -math.inf}, "\ud800", {"\udc00": 1}, object()]
)
def test_dumps_refuses_what_is_not_strict_json(value: Any) -> None:
    with pytest.raises(_json.JSONError):
        _json.dumps(value)


def test_clean_text_replaces_lone_surrogates_only() -> None:
    assert _json.clean_text("a\ud800b\U0001f600") == "a\ufffdb\U0001f600"
    assert _json.clean_text("plain") == "plain"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_strict_json_round_trips(value: Any) -> None:
    text = _json.dumps(value)
    assert _json.loads(text) == value
