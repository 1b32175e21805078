"""Hostile bodies and headers against real server processes (``nox -s fuzz``).

Starts a mock trainer process (``python -m rollout.testing``) and a rollout server process
(``python -m rollout serve``, its stderr in a log file), both on 127.0.0.1 port 0, then
sends ``--bodies`` requests, ``--concurrency`` at a time, to ``POST /v1/rollout/init`` and
``POST /rollout``: Hypothesis-generated JSON, mutations of the protocol's examples (01 and
09, pointed at the mock trainer) and hand-made hostile classes (deep nesting, huge
numbers, NaN, duplicate keys, lone surrogates, odd API keys and server URLs, invalid
UTF-8, huge strings, odd Content-Type and Authorization headers, wrong types, ...). Then
one normal rollout must still complete, the server is stopped with SIGTERM, and its log
is searched for tracebacks.

    uv run python tests/fuzzing/hostile.py --bodies 10000 --seed 0 --concurrency 12
    nox -s fuzz [-- --bodies N --seed S --concurrency C --report FILE]

Prints bodies tried (by endpoint and by class), status counts, 5xx other than 503 (must be
0), requests without an answer (must be 0), tracebacks in the server log (must be 0) and
whether the normal rollout completed; writes the same figures as JSON to ``--report``.
Exit status 1 when a must-be-0 figure is not 0 or the normal rollout did not complete.

Nothing leaves the loopback interface. A server that has ``--allow-trainer`` gets
``--allow-trainer 127.0.0.1:PORT`` (the mock trainer's port): every other ``server_url``
(169.254.169.254, random names) is refused at init without a DNS lookup, and again at
connect time. A server without it gets ``HTTP(S)_PROXY`` / ``ALL_PROXY`` pointing at a
bound, never listening 127.0.0.1 port (``NO_PROXY``: 127.0.0.1, localhost), so that a
rollout aimed at another host is refused at once by the local kernel (if the server's
HTTP client reads proxies from the environment).

Bodies are built when sent; each class's cases come from one Hypothesis run
(``database=None``, generate phase only, seeded by ``--seed``): the same seed gives the
same bodies. ``--workdir DIR`` keeps the two logs and the store for a look afterwards.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import random
import re
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
INIT = "/v1/rollout/init"
SYNC = "/rollout"
#: The server runs with this inbound API key, so Authorization headers are really checked.
INBOUND_KEY = "fuzz-inbound-key"
#: The server's default ``max_body_bytes``.
MAX_BODY = 16 * 1024 * 1024
#: Bounds, in seconds, so that a run always ends by itself.
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 90.0
#: The server's --rollout-timeout during the run.
ROLLOUT_TIMEOUT = 30.0
NORMAL_ROLLOUT_TIMEOUT = 120.0
STOP_TIMEOUT = 90.0
#: How many failing requests the report keeps, and how much of each body.
SAMPLES = 20
SAMPLE_CHARS = 300

Headers = tuple[tuple[bytes, bytes], ...]


# --------------------------------------------------------------------------- JSON text


@dataclass(frozen=True)
class Raw:
    """A JSON token written verbatim: ``NaN``, ``1e999``, 5,000 digits, 100,000 brackets."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """A JSON object written with its pairs in this order; a key may repeat."""

    pairs: tuple[tuple[str, Any], ...]


def dump(value: Any) -> str:
    """JSON text of ``value``; unlike :func:`json.dumps` it writes :class:`Raw` tokens and
    :class:`Pairs` objects, and escapes lone surrogates (``"\\ud800"``)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{dump(k)}:{dump(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{dump(str(k))}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)  # str (ensure_ascii: surrogates escaped), numbers, NaN, bool, None


def encode(value: Any) -> bytes:
    return dump(value).encode()


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One request: its hostile class, endpoint, headers, and a builder of its body (built
    when sent, so that 10,000 cases with multi-megabyte bodies fit in memory)."""

    kind: str
    endpoint: str
    headers: Headers
    make: Callable[[], bytes]


@dataclass(frozen=True)
class Context:
    """What a generator needs: where the mock trainer is, and a fresh rollout id."""

    trainer_url: str
    rid: str


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())  # type: ignore[no-any-return]


_INIT_FIXTURE = _fixture("01_init_request.json")
_SYNC_FIXTURE = _fixture("09_sync_rollout_request.json")


def init_body(ctx: Context) -> dict[str, Any]:
    """tests/fixtures/01_init_request.json aimed at the mock trainer, with a fresh id."""
    body = copy.deepcopy(_INIT_FIXTURE)
    body.update(rollout_id=ctx.rid, server_url=ctx.trainer_url)
    return body


def sync_body(ctx: Context) -> dict[str, Any]:
    """tests/fixtures/09_sync_rollout_request.json aimed at the mock trainer, fresh id."""
    body = copy.deepcopy(_SYNC_FIXTURE)
    body.update(rollout_id=ctx.rid, server_url=ctx.trainer_url, metadata={"ground_truth": "8"})
    return body


def json_headers(content_type: bytes | None = b"application/json") -> Headers:
    auth = (b"authorization", f"Bearer {INBOUND_KEY}".encode())
    return (auth,) if content_type is None else ((b"content-type", content_type), auth)


def _fixed(body: bytes) -> Callable[[], bytes]:
    return lambda: body


def _dumped(value: Any) -> Callable[[], bytes]:
    return partial(encode, value)


def _shape(data: st.DataObject, ctx: Context) -> tuple[dict[str, Any], str, str]:
    """A valid init or sync body, the endpoint it is sent to (the other one in 1 of 8), and
    its shape ("init" or "sync")."""
    shape = data.draw(st.sampled_from(["init", "sync"]), label="shape")
    body = init_body(ctx) if shape == "init" else sync_body(ctx)
    home, other = (INIT, SYNC) if shape == "init" else (SYNC, INIT)
    endpoint = data.draw(st.sampled_from([home] * 7 + [other]), label="endpoint")
    return body, endpoint, shape


#: Places of a field in a body, by shape (the synchronous variant renames two fields).
def _field_paths(shape: str) -> list[tuple[str | int, ...]]:
    params = "completion_params" if shape == "init" else "sampling_params"
    api_key = "api_key" if shape == "init" else "callback_api_key"
    return [
        ("rollout_id",),
        ("server_url",),
        ("messages",),
        ("messages", 0),
        ("messages", 0, "role"),
        ("messages", 1, "content"),
        (params,),
        (params, "temperature"),
        (params, "max_tokens"),
        (params, "top_p"),
        (params, "stop"),
        (params, "seed"),
        ("max_turns",),
        ("max_tokens_total",),
        ("metadata",),
        ("metadata", "ground_truth"),
        (api_key,),
        ("idempotency_key",),
        ("tool_server_url",),
    ]


def _set(body: Any, path: tuple[str | int, ...], value: Any) -> None:
    """Set ``body[path]``, creating missing objects on the way; a path through a value
    that is not a container replaces that value."""
    target = body
    for step in path[:-1]:
        if isinstance(target, dict):
            if not isinstance(target.get(step), dict | list):
                target[step] = {}
            target = target[step]
        elif isinstance(target, list) and isinstance(step, int) and step < len(target):
            if not isinstance(target[step], dict | list):
                target[step] = {}
            target = target[step]
        else:
            return
    last = path[-1]
    if isinstance(target, dict):  # noqa: SIM114 (separate branches narrow ``last`` for mypy)
        target[last] = value
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value


def _place(
    data: st.DataObject, ctx: Context, kind: str, value: Any, fields: list[str] | None = None
) -> Case:
    """A valid init or sync body with ``value`` at one drawn field (or as the whole body)."""
    body, endpoint, shape = _shape(data, ctx)
    paths: list[Any] = [(), *_field_paths(shape)]
    if fields is not None:
        paths = [p for p in paths if p == () or p[0] in fields or "/".join(map(str, p)) in fields]
    path = data.draw(st.sampled_from(paths), label="field")
    if path == ():
        return Case(kind, endpoint, json_headers(), _dumped(value))
    _set(body, path, value)
    return Case(kind, endpoint, json_headers(), _dumped(body))


# --------------------------------------------------------------------------- values

HOSTILE_SCALARS: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, 2**64, -(2**63) - 1, 10**100, 0.5, -0.0, 1e308,
    5e-324, "", " ", "\x00", "\ud800", "\u2028", "\U0001f642", "a" * 1000, [], {}, [[]],
    {"": {}}, [None], Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e999"),
    Raw("-1e999"), Raw("9" * 4301), Raw("-" + "1" * 5000),
]  # fmt: skip

WRONG_TYPES: list[Any] = [
    None, True, False, 0, 1, -1, 1.5, "", "x", "1", [], [1], ["x"], [None], {}, {"a": 1},
    {"role": "user"},
]  # fmt: skip


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, NaN and infinities included, strings with lone surrogates too."""
    text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=True, allow_infinity=True)
        | text
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=6) | st.dictionaries(text, inner, max_size=6),
        max_leaves=25,
    )


PROTOCOL_KEYS = [
    "rollout_id", "server_url", "messages", "completion_params", "sampling_params",
    "tool_server_url", "max_turns", "max_tokens_total", "metadata", "api_key",
    "callback_api_key", "idempotency_key", "tokenizer_name", "tokenizer_revision",
]  # fmt: skip


# --------------------------------------------------------------------------- generators
# Each takes the Hypothesis data object and a context, and returns one Case.


def g_random_json(data: st.DataObject, ctx: Context) -> Case:
    keys = st.sampled_from(PROTOCOL_KEYS) | st.text(max_size=12)
    value = data.draw(
        json_values() | st.dictionaries(keys, json_values(), max_size=12), label="body"
    )
    endpoint = data.draw(st.sampled_from([INIT, SYNC]), label="endpoint")
    return Case("random-json", endpoint, json_headers(), _fixed(dump(value).encode()))


def g_random_bytes(data: st.DataObject, ctx: Context) -> Case:
    body = data.draw(st.binary(max_size=4096), label="body")
    endpoint = data.draw(st.sampled_from([INIT, SYNC]), label="endpoint")
    return Case("random-bytes", endpoint, json_headers(), _fixed(body))


def _paths_in(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield (*prefix, key)
            yield from _paths_in(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield (*prefix, index)
            yield from _paths_in(inner, (*prefix, index))


def _delete(body: Any, path: tuple[str | int, ...]) -> None:
    target = body
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]


def _mutated(data: st.DataObject, ctx: Context, shape: str) -> Case:
    body = init_body(ctx) if shape == "init" else sync_body(ctx)
    values = (json_values() | st.sampled_from(HOSTILE_SCALARS)).map(copy.deepcopy)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        paths = sorted(_paths_in(body), key=repr)
        op = data.draw(st.sampled_from(["delete", "set", "add", "append"]), label="op")
        if op == "add" or not paths:
            key = data.draw(st.sampled_from(PROTOCOL_KEYS) | st.text(max_size=12), label="key")
            body[key] = data.draw(values, label="value")
            continue
        path = data.draw(st.sampled_from(paths), label="path")
        if op == "delete":
            _delete(body, path)
        elif op == "set":
            _set(body, path, data.draw(values, label="value"))
        else:
            target: Any = body
            for step in path:
                target = target[step]
            if isinstance(target, list):
                target.append(data.draw(values, label="value"))
            elif isinstance(target, dict):
                target[data.draw(st.text(max_size=8), label="key")] = data.draw(values)
            else:
                _set(body, path, data.draw(values, label="value"))
    home = INIT if shape == "init" else SYNC
    endpoint = data.draw(st.sampled_from([home] * 7 + [SYNC if home == INIT else INIT]))
    return Case(f"mutated-{shape}", endpoint, json_headers(), _dumped(body))


def g_mutated_init(data: st.DataObject, ctx: Context) -> Case:
    return _mutated(data, ctx, "init")


def g_mutated_sync(data: st.DataObject, ctx: Context) -> Case:
    return _mutated(data, ctx, "sync")


def _valid(data: st.DataObject, ctx: Context, shape: str) -> Case:
    body = init_body(ctx) if shape == "init" else sync_body(ctx)
    a, b = data.draw(st.integers(0, 999)), data.draw(st.integers(0, 999))
    body["messages"][-1]["content"] = f"What is {a} + {b}?"
    body["metadata"] = {"ground_truth": str(a + b)}
    return Case(f"valid-{shape}", INIT if shape == "init" else SYNC, json_headers(), _dumped(body))


def g_valid_init(data: st.DataObject, ctx: Context) -> Case:
    return _valid(data, ctx, "init")


def g_valid_sync(data: st.DataObject, ctx: Context) -> Case:
    return _valid(data, ctx, "sync")


def _deep_text(depth: int, form: str) -> str:
    if form == "array":
        return "[" * depth + "]" * depth
    if form == "object":
        return '{"a":' * depth + "1" + "}" * depth
    if form == "mixed":
        half = depth // 2
        return '[{"a":' * half + "null" + "}]" * half
    return "[" * depth  # unclosed


def g_deep_nesting(data: st.DataObject, ctx: Context) -> Case:
    depth = data.draw(
        st.sampled_from([1_000, 1_001, 2_000, 5_000, 20_000, 100_000])
        | st.integers(1_000, 100_000),
        label="depth",
    )
    form = data.draw(st.sampled_from(["array", "object", "mixed", "unclosed"]), label="form")
    if data.draw(st.booleans(), label="bare"):
        endpoint = data.draw(st.sampled_from([INIT, SYNC]))
        return Case(
            "deep-nesting", endpoint, json_headers(), _fixed(_deep_text(depth, form).encode())
        )
    return _place(data, ctx, "deep-nesting", Raw(_deep_text(depth, form)))


def g_big_number(data: st.DataObject, ctx: Context) -> Case:
    digits = data.draw(
        st.sampled_from([4_300, 4_301, 5_000, 100_000]) | st.integers(4_300, 60_000), label="digits"
    )
    sign = data.draw(st.sampled_from(["", "-"]), label="sign")
    token = data.draw(
        st.sampled_from(
            [
                sign + "9" * digits,
                sign + "1" + "0" * (digits - 1),
                sign + "1e999",
                sign + "1E400",
                sign + "2e308",
                "1e-999",
                "0e99999",
                sign + "1." + "0" * digits,
                sign + "1" * digits + ".5",
                sign + "1" * digits + "e5",
                "0." + "0" * digits + "1",
            ]
        ),
        label="token",
    )
    return _place(data, ctx, "big-number", Raw(token))


def g_nan_infinity(data: st.DataObject, ctx: Context) -> Case:
    token = data.draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "-NaN", "nan", "inf"]))
    return _place(data, ctx, "nan-infinity", Raw(token))


def g_duplicate_keys(data: st.DataObject, ctx: Context) -> Case:
    body, endpoint, shape = _shape(data, ctx)
    where = data.draw(st.sampled_from(["top", "message", "params"]), label="where")
    target: dict[str, Any] = body
    if where == "message":
        target = body["messages"][0]
    elif where == "params":
        target = body["completion_params" if shape == "init" else "sampling_params"]
    key = data.draw(st.sampled_from(sorted(target)), label="key")
    second = data.draw(
        st.sampled_from([target[key], f"{ctx.rid}-other", "", None, [], {}, 7])
        | st.sampled_from(HOSTILE_SCALARS),
        label="second",
    )
    pairs = list(target.items())
    pairs.insert(data.draw(st.integers(0, len(pairs)), label="at"), (key, second))
    replacement = Pairs(tuple(pairs))
    if where == "top":
        return Case("duplicate-keys", endpoint, json_headers(), _dumped(replacement))
    if where == "message":
        body["messages"][0] = replacement
    else:
        body["completion_params" if shape == "init" else "sampling_params"] = replacement
    return Case("duplicate-keys", endpoint, json_headers(), _dumped(body))


SURROGATES = ["\ud800", "\udfff", "a\ud800b", "\udc00", "\ud83d", "\ud800\ud800", "x\udbff"]


def g_lone_surrogate(data: st.DataObject, ctx: Context) -> Case:
    value = data.draw(st.sampled_from(SURROGATES), label="value")
    body, endpoint, shape = _shape(data, ctx)
    api_key = "api_key" if shape == "init" else "callback_api_key"
    where = data.draw(
        st.sampled_from(
            [
                *("rollout_id", "messages", "role", api_key, "idempotency_key", "metadata"),
                *("key", "server_url", "stop"),
            ]
        ),
        label="where",
    )
    if where == "messages":
        body["messages"][1]["content"] = f"What is 2 + 3? {value}"
    elif where == "role":
        body["messages"][0]["role"] = value
    elif where == "metadata":
        body["metadata"] = {"ground_truth": value}
    elif where == "key":
        body["metadata"] = {value: "5"}
    elif where == "server_url":
        body["server_url"] = f"{ctx.trainer_url}/{value}"
    elif where == "stop":
        body["completion_params" if shape == "init" else "sampling_params"]["stop"] = [value]
    elif where == "rollout_id":
        body["rollout_id"] = ctx.rid + value
    else:
        body[where] = value
    return Case("lone-surrogate", endpoint, json_headers(), _dumped(body))


API_KEYS = [
    "clé", "ключ", "キー", "\u2028", "a\r\nX-Injected: 1", "a\nb", "a\rb", "\t", "a\tb",
    "\x00", " key ", "", "Bearer x", "\x7f", "é" * 1000, "k" * 100_000, "\ufeff", "\x85",
    "\U0001f511", "key\x00tail",
]  # fmt: skip


def g_api_key(data: st.DataObject, ctx: Context) -> Case:
    value = data.draw(st.sampled_from(API_KEYS) | st.text(max_size=20), label="api_key")
    body, endpoint, shape = _shape(data, ctx)
    body["api_key" if shape == "init" or data.draw(st.booleans()) else "callback_api_key"] = value
    return Case("api-key", endpoint, json_headers(), _dumped(body))


def bad_server_urls(trainer_url: str) -> list[str]:
    port = trainer_url.rsplit(":", 1)[1]
    return [
        "http://127.0.0.1:80:80", f"http://127.0.0.1:{port}:{port}", f"{trainer_url}\t",
        f"{trainer_url}\n", f"http://127.0.0.1\t:{port}", "http://\t127.0.0.1",
        f" {trainer_url}", "http://exämple.com", "http://例え.テスト", "http://\u0130",
        "http://[::1", "http://[::1]]", "http://", "http://:80", "http:///x", "http://@",
        "http://user@", "http://127.0.0.1:65536", "http://127.0.0.1:-1", "http://127.0.0.1: 80",
        "http://127.0.0.1\x00", "http://127.0.0.1%00", "http://%", "http://a b", "http://[v1.x]",
        "http://[::1%eth0]", "https://[fe80::1%25en0]", "http://" + "a" * 300,
        "http://" + "a." * 150, "http://-", "http://.", "http://..", "HTTP://127.0.0.1",
        "ftp://127.0.0.1", "file:///etc/passwd", "javascript:alert(1)", "data:,x",
        "//127.0.0.1", "127.0.0.1:8000", "http:127.0.0.1", "http://\ufeff127.0.0.1",
        "http://xn--", "http://xn--a", "http://Ⅷ.com", f"{trainer_url}/" + "a" * 10_000,
        f"{trainer_url}/../..", f"{trainer_url}#frag", "http://0", "http://[::]:0",
        f"http://127.0.0.1:{port}\\@evil", "http://\\\\127.0.0.1",
    ]  # fmt: skip


def g_server_url(data: st.DataObject, ctx: Context) -> Case:
    generated = st.builds(
        lambda host, tail: f"http://{host}{tail}",
        st.text(max_size=30),
        st.sampled_from(["", ":80", ":x", ":80:80", "/p?q", "#f"]),
    )
    value = data.draw(st.sampled_from(bad_server_urls(ctx.trainer_url)) | generated)
    return _place(data, ctx, "server-url", value, fields=["server_url", "tool_server_url"])


METADATA_HOSTS = [
    "http://169.254.169.254", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]",
    "http://metadata.google.internal", "http://100.100.100.200", "http://[::ffff:169.254.169.254]",
    "http://2852039166", "http://0xA9FEA9FE", "http://169.254.169.254:80", "http://[fe80::1]",
    "http://0.0.0.0", "https://169.254.169.254",
]  # fmt: skip


def g_metadata_host(data: st.DataObject, ctx: Context) -> Case:
    value = data.draw(st.sampled_from(METADATA_HOSTS))
    return _place(data, ctx, "metadata-host", value, fields=["server_url", "tool_server_url"])


def g_token_query(data: st.DataObject, ctx: Context) -> Case:
    host = ctx.trainer_url.split("://", 1)[1]
    value = data.draw(
        st.sampled_from(
            [
                f"{ctx.trainer_url}?token=secret",
                f"{ctx.trainer_url}/?token=secret",
                f"{ctx.trainer_url}/v1?token=secret&api_key=secret2",
                f"http://user:secret@{host}",
                f"http://:secret@{host}/",
                f"{ctx.trainer_url}#token=secret",
                f"{ctx.trainer_url}?token=secret#frag",
                "http://169.254.169.254/?token=secret",
            ]
        )
    )
    return _place(data, ctx, "token-query", value, fields=["server_url", "tool_server_url"])


BAD_UTF8 = [
    b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc",
    b"\xc0\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
    b"\x80", b"caf\xe9", b"\xe2\x82",
]  # fmt: skip
MARK = "zzFUZZMARKzz"


def g_invalid_utf8(data: st.DataObject, ctx: Context) -> Case:
    body, endpoint, shape = _shape(data, ctx)
    how = data.draw(st.sampled_from(["in-string", "in-key", "whole", "encoding"]), label="how")
    if how == "encoding":
        codec = data.draw(
            st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1"])
        )
        body["messages"][1]["content"] = "Qu'est-ce que 2 + 3 ? é"
        text = json.dumps(body, ensure_ascii=False)
        return Case("invalid-utf8", endpoint, json_headers(), _fixed(text.encode(codec)))
    bad = data.draw(st.sampled_from(BAD_UTF8), label="bytes")
    if how == "whole":
        return Case("invalid-utf8", endpoint, json_headers(), _fixed(bad + encode(body) + bad))
    if how == "in-key":
        body["metadata"] = {MARK: "5"}
    else:
        path = data.draw(st.sampled_from([p for p in _field_paths(shape) if len(p) > 0]))
        _set(body, path, MARK)
    raw = encode(body).replace(MARK.encode(), b"x" + bad + b"y")
    return Case("invalid-utf8", endpoint, json_headers(), _fixed(raw))


def g_empty_body(data: st.DataObject, ctx: Context) -> Case:
    body = data.draw(
        st.sampled_from(
            [
                *(b"", b" ", b"\r\n", b"\x00", b"null", b"{}", b"[]", b"0", b'""', b"true"),
                *(b"{", b"}", b'{"rollout_id":', b"\xef\xbb\xbf", b"\xef\xbb\xbf{}", b"\t\n"),
            ]
        )
    )
    endpoint = data.draw(st.sampled_from([INIT, SYNC]))
    content_type = data.draw(st.sampled_from([b"application/json", None]))
    return Case("empty-body", endpoint, json_headers(content_type), _fixed(body))


def _huge_body(base: dict[str, Any], path: tuple[str | int, ...], size: int, char: str) -> bytes:
    body = copy.deepcopy(base)
    if path == ("many-messages",):
        body["messages"] = [{"role": "user", "content": "x"}] * size
    elif path == ("many-keys",):
        body["metadata"] = {f"k{i}": i for i in range(size)}
    elif path == ("long-array",):
        body["extra"] = list(range(size))
    elif path == ("server_url",):
        body["server_url"] = f"{base['server_url']}/{'a' * size}"
    else:
        _set(body, path, char * (size // (len(json.dumps(char)) - 2)))  # ~size bytes as JSON
    return encode(body)


def g_huge_string(data: st.DataObject, ctx: Context) -> Case:
    rare = data.draw(st.integers(0, 99), label="rare") < 5
    size = data.draw(
        st.sampled_from([MAX_BODY - 1000, MAX_BODY + 1, 20_000_000])
        if rare
        else st.sampled_from([65_536, 262_144, 1_000_000, 1_000_000, 3_000_000]),
        label="size",
    )
    body, endpoint, shape = _shape(data, ctx)
    api_key = "api_key" if shape == "init" else "callback_api_key"
    where = data.draw(
        st.sampled_from(
            [
                *(("messages", 1, "content"), ("rollout_id",), (api_key,), ("idempotency_key",)),
                *(("server_url",), ("metadata", "ground_truth"), ("unknown_field",)),
                *(("many-messages",), ("many-keys",), ("long-array",)),
            ]
        ),
        label="where",
    )
    chars = ["a", "é", "\U0001f642", "\\", '"', "\x00"]
    if where != ("messages", 1, "content"):
        # Not in a message: the mock trainer's question parser is quadratic in runs of
        # white space (100,000 spaces: ~2 minutes), which would stall every rollout.
        chars += ["\u2028", " "]
    char = data.draw(st.sampled_from(chars), label="char")
    if where[0] in ("many-messages", "many-keys", "long-array"):
        size = min(size // 16, 500_000)  # items, not characters: bounded bytes either way
    return Case(
        "huge-string", endpoint, json_headers(), partial(_huge_body, body, where, size, char)
    )


CONTENT_TYPES: list[bytes | None] = [
    None, b"", b"text/plain", b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=xyz", b"application/json; charset=utf-8",
    b"application/json; charset=latin-1", b"application/json; charset=utf-16",
    b"application/json; charset=nonsense", b"APPLICATION/JSON", b"Application/Json ; charset=UTF-8",
    b"application/vnd.api+json", b"application/problem+json", b"application/+json", b"+json",
    b"application/json, text/plain", b"application/json;", b"application/json; boundary", b";",
    b"*/*", b"application/*", b"json", b"application/jsonx", b"text/json", b"application/json\xff",
    b"application/j\xc3\xa9son", b"x" * 10_000, b'application/json; charset="',
    b"application/json; =", b"application/json; charset=utf-8; charset=latin-1", b"/",
    b"application/", b"\xff\xfe",
]  # fmt: skip


def g_content_type(data: st.DataObject, ctx: Context) -> Case:
    body, endpoint, _ = _shape(data, ctx)
    content_type = data.draw(st.sampled_from(CONTENT_TYPES), label="content-type")
    payload = data.draw(
        st.sampled_from(["json", "form", "multipart"]) if content_type else st.just("json")
    )
    raw: bytes
    if payload == "form":
        raw = b"rollout_id=x&server_url=http%3A%2F%2F127.0.0.1"
    elif payload == "multipart":
        raw = b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--xyz--\r\n'
    else:
        raw = encode(body)
    headers = json_headers(content_type)
    if data.draw(st.integers(0, 9), label="twice") == 0:
        headers = ((b"content-type", b"text/plain"), *headers)
    return Case("content-type", endpoint, headers, _fixed(raw))


AUTHORIZATIONS: list[tuple[bytes, ...]] = [
    (), (b"bearer " + INBOUND_KEY.encode(),), (b"Bearer",), (b"Bearer ",),
    (b"Bearer  " + INBOUND_KEY.encode(),), (b"BEARER " + INBOUND_KEY.encode(),),
    (b"Basic Zm9vOmJhcg==",), (b"Bearer \xc3\xa9",), (b"Bearer \xe9",), (b"\xff\xfe",),
    (b"Bearer " + b"x" * 1000,), (b"Bearer " + b"x" * 8000,), (b"Bearer " + b"x" * 15_000,),
    (b"Bearer " + b"x" * 70_000,), (b"Bearer x",), (b"Token " + INBOUND_KEY.encode(),),
    (b"Bearer\t" + INBOUND_KEY.encode(),), (b"Bearer " + INBOUND_KEY.encode() + b"\xc3\xa9",),
    (b"Bearer " + INBOUND_KEY.encode(), b"Bearer x"),
    (b"Bearer x", b"Bearer " + INBOUND_KEY.encode()),
    (b"Bearer " + INBOUND_KEY.encode()[:-1],), (b"Bearer " + "clé".encode(),), (b"=",),
    (b"Bearer " + INBOUND_KEY.encode() + b"\x00",),
]  # fmt: skip


def g_authorization(data: st.DataObject, ctx: Context) -> Case:
    body, endpoint, _ = _shape(data, ctx)
    values = data.draw(st.sampled_from(AUTHORIZATIONS), label="authorization")
    headers = (
        (b"content-type", b"application/json"),
        *((b"authorization", value) for value in values),
    )
    return Case("authorization", endpoint, headers, _fixed(encode(body)))


HEADER_NAME = st.from_regex(r"\A[A-Za-z0-9!#$%&'*+.^_`|~-]{1,40}\Z")
HEADER_VALUE = st.binary(min_size=1, max_size=200).map(
    lambda value: bytes(b for b in value if b >= 0x20 and b != 0x7F).strip() or b"x"
)
#: Headers that frame the request or the connection: left to httpx.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "upgrade", "expect"}
ODD_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-encoding", b"gzip"), (b"content-encoding", b"br"), (b"content-encoding", b"\xff"),
    (b"idempotency-key", b"\xff\xfe"), (b"x-request-id", b"\xc3\xa9" * 100),
    (b"accept", b"application/xml"), (b"accept-encoding", b"gzip;q=abc"),
    (b"x-forwarded-for", b"169.254.169.254"), (b"x-forwarded-proto", b"gopher"),
    (b"cookie", b"a=" + b"b" * 8000), (b"content-type", b"application/json"),
    (b"x-" + b"a" * 200, b"1"),
]  # fmt: skip


def g_odd_headers(data: st.DataObject, ctx: Context) -> Case:
    body, endpoint, _ = _shape(data, ctx)
    extra = data.draw(
        st.lists(
            st.sampled_from(ODD_HEADERS)
            | st.tuples(HEADER_NAME.map(str.encode), HEADER_VALUE).filter(
                lambda pair: pair[0].lower().decode() not in FRAMING
            ),
            min_size=1,
            max_size=6,
        ),
        label="headers",
    )
    raw = encode(body)
    if (b"content-encoding", b"gzip") in extra and data.draw(st.booleans(), label="gzip"):
        raw = gzip.compress(raw)
    return Case("odd-headers", endpoint, json_headers() + tuple(extra), _fixed(raw))


def g_wrong_types(data: st.DataObject, ctx: Context) -> Case:
    value = data.draw(st.sampled_from(WRONG_TYPES), label="value")
    body, endpoint, shape = _shape(data, ctx)
    extra_paths: list[tuple[str | int, ...]] = [
        ("messages", 0, "content"),
        ("messages", 1),
        ("messages", 0, "tool_calls"),
        ("messages", 0, "name"),
        ("messages", 0, "tool_call_id"),
        ("tokenizer_name",),
        ("tokenizer_revision",),
    ]
    path = data.draw(st.sampled_from(_field_paths(shape) + extra_paths), label="path")
    _set(body, path, value)
    return Case("wrong-types", endpoint, json_headers(), _dumped(body))


def g_numbers_edge(data: st.DataObject, ctx: Context) -> Case:
    value = data.draw(
        st.sampled_from(
            [
                *(0, -1, 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1),
                *(10**100, 1e308, -1e308, 5e-324, -0.0, 0.0, 1.0, 1.5, True, "5", 2.0000000001),
            ]
        )
        | st.integers()
        | st.floats(),
        label="number",
    )
    return _place(
        data,
        ctx,
        "numbers-edge",
        value,
        fields=["max_turns", "max_tokens_total", "completion_params", "sampling_params"],
    )


MESSAGES: list[Any] = [
    [], [{}], [{"role": "user"}], [{"role": "user", "content": None}],
    [{"role": "tool", "content": "5"}], [{"role": "tool", "content": "5", "tool_call_id": None}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": 1, "type": "function", "function": {"name": "add", "arguments": "{not json"}}]}],
    [{"role": "assistant", "tool_calls": [{"function": {}}]}],
    [{"role": "assistant", "tool_calls": "add"}],
    [{"role": "assistant", "content": None, "tool_calls": []}],
    [{"role": "user", "content": [{"type": "text", "text": "What is 2 + 3?"}]}],
    [{"role": "user", "content": [{"type": "image_url",
                                   "image_url": {"url": "http://169.254.169.254/"}}]}],
    [{"role": "System", "content": "x"}], [{"role": "", "content": "x"}],
    [{"role": "user", "content": "What is 2 + 3?", "extra": {"a": [1]}}],
    [{"role": "user", "content": "What is 2 + 3?", "name": "\ud800"}],
    [{"role": "user", "content": "x"}] * 10_000,
    [{"role": "user", "content": "What is 1e999 + 1?"}],
    [{"role": "user", "content": "What is " + "9" * 5000 + " + 1?"}],
    [{"role": "user", "content": "What is 10 / 0?"}],
    [{"role": "function", "content": "x", "name": "add"}],
    [{"role": "developer", "content": "x"}, {"role": "user", "content": "What is 2 + 3?"}],
]  # fmt: skip


def g_messages_edge(data: st.DataObject, ctx: Context) -> Case:
    body, endpoint, _ = _shape(data, ctx)
    body["messages"] = data.draw(st.sampled_from(MESSAGES), label="messages")
    return Case("messages-edge", endpoint, json_headers(), _dumped(body))


def g_idempotency(data: st.DataObject, ctx: Context) -> Case:
    body, endpoint, _ = _shape(data, ctx)
    slot = data.draw(st.integers(0, 3), label="slot")
    if data.draw(st.booleans(), label="by-key"):
        body["idempotency_key"] = f"dup-key-{slot}"
    else:
        body["rollout_id"] = f"dup-{slot}"
    if data.draw(st.booleans(), label="differs"):
        body["messages"][-1]["content"] = f"What is {slot} + {data.draw(st.integers(0, 3))}?"
    return Case("idempotency", endpoint, json_headers(), _dumped(body))


Generator = Callable[[st.DataObject, Context], Case]

#: Every class, with its weight in the random part of the schedule.
GENERATORS: dict[str, tuple[Generator, int]] = {
    "random-json": (g_random_json, 6),
    "random-bytes": (g_random_bytes, 2),
    "mutated-init": (g_mutated_init, 8),
    "mutated-sync": (g_mutated_sync, 5),
    "valid-init": (g_valid_init, 2),
    "valid-sync": (g_valid_sync, 1),
    "deep-nesting": (g_deep_nesting, 2),
    "big-number": (g_big_number, 2),
    "nan-infinity": (g_nan_infinity, 2),
    "duplicate-keys": (g_duplicate_keys, 2),
    "lone-surrogate": (g_lone_surrogate, 3),
    "api-key": (g_api_key, 3),
    "server-url": (g_server_url, 3),
    "metadata-host": (g_metadata_host, 1),
    "token-query": (g_token_query, 1),
    "invalid-utf8": (g_invalid_utf8, 2),
    "empty-body": (g_empty_body, 1),
    "huge-string": (g_huge_string, 1),
    "content-type": (g_content_type, 2),
    "authorization": (g_authorization, 2),
    "odd-headers": (g_odd_headers, 2),
    "wrong-types": (g_wrong_types, 3),
    "numbers-edge": (g_numbers_edge, 2),
    "messages-edge": (g_messages_edge, 2),
    "idempotency": (g_idempotency, 1),
}
KINDS = list(GENERATORS)


def quotas(count: int) -> dict[str, int]:
    """How many cases of each class: by weight, at least 2 of each when ``count`` allows."""
    floor = 2 if count >= 2 * len(KINDS) else (1 if count >= len(KINDS) else 0)
    total = sum(weight for _, weight in GENERATORS.values())
    share = {k: max(floor, count * w // total) for k, (_, w) in GENERATORS.items()}
    by_weight = sorted(KINDS, key=lambda k: -GENERATORS[k][1])
    index = 0
    while (missing := count - sum(share.values())) != 0:
        kind = by_weight[index % len(KINDS)]
        if missing > 0:
            share[kind] += 1
        elif share[kind] > floor:
            share[kind] -= 1
        index += 1
    return share


def _draw_cases(kind: str, count: int, seed: int, trainer_url: str) -> list[Case]:
    """Up to ``count`` cases of one class, from one Hypothesis run (fewer when the class's
    choices are exhausted)."""
    cases: list[Case] = []
    if count <= 0:
        return cases
    generator = GENERATORS[kind][0]

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        if len(cases) < count:
            cases.append(generator(data, Context(trainer_url, f"fz-{seed}-{kind}-{len(cases)}")))

    one()
    return cases


def generate(count: int, seed: int, trainer_url: str) -> list[Case]:
    """``count`` cases, the same for the same seed: every class by its weight (at least
    twice, when ``count`` allows), mixed in a seeded random order. A class whose choices
    run out early is topped up with Hypothesis-generated JSON and mutations."""
    cases: list[Case] = []
    for number, (kind, quota) in enumerate(quotas(count).items()):
        cases += _draw_cases(kind, quota, seed * 1_000 + number, trainer_url)
    fillers = ["random-json", "mutated-init", "mutated-sync"]
    for round_ in range(30):
        if len(cases) >= count:
            break
        kind = fillers[round_ % len(fillers)]
        cases += _draw_cases(kind, count - len(cases), seed * 1_000 + 500 + round_, trainer_url)
    random.Random(seed).shuffle(cases)
    return cases[:count]


# --------------------------------------------------------------------------- processes


async def _wait_for(log: Path, pattern: str, process: trio.Process, what: str) -> str:
    with trio.fail_after(START_TIMEOUT):
        while True:
            text = await trio.Path(log).read_text(errors="replace")
            if match := re.search(pattern, text):
                return match.group(1)
            if process.returncode is not None:
                raise RuntimeError(f"{what} exited early:\n{text}")
            await trio.sleep(0.05)


async def _stop(process: trio.Process, grace: float) -> int | None:
    """SIGTERM, wait at most ``grace`` seconds, then SIGKILL. The exit code if it exited
    by itself, None if it had to be killed."""
    if process.returncode is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(grace):
        return await process.wait()
    process.kill()
    with trio.move_on_after(10):
        await process.wait()
    return None


async def _allow_only(trainer_url: str) -> list[str]:
    """``--allow-trainer 127.0.0.1:PORT`` (the mock trainer only) when this server has the
    option: then every other ``server_url`` is refused at init, without a DNS lookup, and
    at connect time. (Servers without it get the refusing proxy of :func:`_server_env`.)"""
    with trio.fail_after(START_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "rollout", "serve", "--help"], capture_stdout=True, check=False
        )
    if b"--allow-trainer" not in done.stdout:
        return []
    return ["--allow-trainer", f"127.0.0.1:{trainer_url.rsplit(':', 1)[1]}"]


async def _progress(tally: Tally, total: int) -> None:
    started = trio.current_time()
    while True:
        await trio.sleep(30)
        failing = sum(n for outcome, n in tally.outcomes.items() if is_failure(outcome))
        print(
            f"  {trio.current_time() - started:6.0f} s: {tally.sent} of {total} sent,"
            f" {failing} failing",
            file=sys.stderr,
            flush=True,
        )


def _refusing_port() -> socket.socket:
    """A 127.0.0.1 port that is bound and never listens: connections to it are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _server_env(proxy_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proxy = f"http://127.0.0.1:{proxy_port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = proxy
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("ROLLOUT_SERVER_API_KEY", None)
    return env


# --------------------------------------------------------------------------- the run


@dataclass
class Tally:
    """Outcomes of the sent cases."""

    outcomes: Counter[str]
    by_endpoint: dict[str, Counter[str]]
    by_class: dict[str, Counter[str]]
    failures: list[dict[str, Any]]
    sent: int = 0

    def record(
        self, case: Case, outcome: str, body: bytes | None, sent_at: float, seconds: float
    ) -> None:
        self.sent += 1
        self.outcomes[outcome] += 1
        self.by_endpoint.setdefault(case.endpoint, Counter())[outcome] += 1
        self.by_class.setdefault(case.kind, Counter())[outcome] += 1
        if is_failure(outcome) and len(self.failures) < SAMPLES:
            self.failures.append(
                {
                    "class": case.kind,
                    "endpoint": case.endpoint,
                    "outcome": outcome,
                    "sent_at_s": round(sent_at, 1),
                    "seconds": round(seconds, 1),
                    "headers": repr(case.headers)[:SAMPLE_CHARS],
                    "body": repr(body)[:SAMPLE_CHARS],
                }
            )


def is_failure(outcome: str) -> bool:
    """A 5xx other than 503, or a request that got no answer."""
    if outcome.startswith("no-answer"):
        return True
    return outcome.isdigit() and outcome.startswith("5") and outcome != "503"


async def _send(client: httpx.AsyncClient, case: Case, tally: Tally, start: float) -> None:
    body = case.make()
    sent_at = trio.current_time()
    try:
        response = await client.post(case.endpoint, content=body, headers=list(case.headers))
    except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, UnicodeError) as exc:
        outcome = f"unsendable:{type(exc).__name__}"  # refused by our own client, not sent
    except httpx.TransportError as exc:
        outcome = f"no-answer:{type(exc).__name__}"
    else:
        outcome = str(response.status_code)
    done = trio.current_time()
    tally.record(case, outcome, body, sent_at - start, done - sent_at)


async def _health(client: httpx.AsyncClient) -> Any:
    """The server's ``GET /health`` answer (its counters), or why there was none."""
    try:
        response = await client.get("/health")
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return f"no health: {type(exc).__name__}"


async def _normal_rollout(client: httpx.AsyncClient, trainer_url: str, rid: str) -> dict[str, Any]:
    """POST one normal calculator init (again on 429/503) and wait for its result at the
    mock trainer (``GET /v1/rollout/completed/<id>``)."""
    body = init_body(Context(trainer_url, rid))
    body["messages"][-1]["content"] = "What is 25 + 17?"
    body["metadata"] = {"ground_truth": "42"}
    outcome: dict[str, Any] = {"rollout_id": rid, "init_status": None, "result_status": None}
    with trio.move_on_after(NORMAL_ROLLOUT_TIMEOUT):
        while True:
            try:
                response = await client.post(INIT, content=encode(body), headers=json_headers())
                outcome["init_status"] = response.status_code
            except httpx.TransportError as exc:
                outcome["init_status"] = f"no-answer:{type(exc).__name__}"
                return outcome
            if response.status_code not in (429, 503):
                break
            await trio.sleep(1.0)
        if outcome["init_status"] != 202:
            return outcome
        while True:
            result = await client.get(f"{trainer_url}/v1/rollout/completed/{rid}")
            if result.status_code == 200:
                outcome["result_status"] = result.json().get("status")
                return outcome
            await trio.sleep(0.2)
    outcome["timed_out"] = True
    return outcome


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
_EXCEPTION_LINE = re.compile(
    r"^[\s|+]*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Group|Exit)\b.*)"
)


def traceback_summary(log_text: str) -> tuple[int, dict[str, int]]:
    """Lines with "Traceback" in the log, and a tally of the tracebacks by the log line that
    introduced them and the last exception line of their block (the one that ended it)."""
    lines = log_text.splitlines()
    count, summary = sum("Traceback" in line for line in lines), Counter[str]()
    for index, line in enumerate(lines):
        if not _LOG_LINE.match(line):
            continue
        block: list[str] = []
        for following in lines[index + 1 :]:
            if _LOG_LINE.match(following):
                break
            block.append(following)
        if not any("Traceback" in following for following in block):
            continue
        message = re.sub(r"rollout \S+:", "rollout <id>:", _LOG_LINE.sub("", line))[:110]
        last = "?"
        for following in block:
            if (match := _EXCEPTION_LINE.match(following)) and "Traceback" not in following:
                last = match.group(1)
        summary[f"{message} => {last[:150]}"] += 1
    return count, dict(summary.most_common())


async def run_fuzz(
    bodies: int = 10_000,
    seed: int = 0,
    concurrency: int = 12,
    workdir: Path | None = None,
    max_seconds: float = 3_600.0,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole run; returns the report (see :func:`failed` for its verdict)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rollout-fuzz-") as scratch:
        work = Path(workdir or scratch)
        await trio.Path(work).mkdir(parents=True, exist_ok=True)
        trainer_log, server_log = work / "trainer.log", work / "server.log"
        refusing = _refusing_port()
        trainer: trio.Process | None = None
        server: trio.Process | None = None
        try:
            with trainer_log.open("wb") as sink:
                trainer = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "rollout.testing", "--host", "127.0.0.1", "--port", "0"],
                    stdout=sink,
                    stderr=sink,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            trainer_url = await _wait_for(
                trainer_log,
                r"mock trainer listening on (http://127\.0\.0\.1:\d+)",
                trainer,
                "the mock trainer",
            )
            t0 = time.monotonic()
            cases = generate(bodies, seed, trainer_url)
            generation = time.monotonic() - t0
            echo(f"generated {len(cases)} cases in {generation:.1f} s; trainer at {trainer_url}")
            with server_log.open("wb") as sink:
                server = await trio.lowlevel.open_process(
                    [
                        *(sys.executable, "-m", "rollout", "serve", "--host", "127.0.0.1"),
                        *("--port", "0", "--store", f"sqlite:{work}/store.db"),
                        *("--log-level", "debug", "--api-key", INBOUND_KEY),
                        *("--drain-timeout", "5"),
                        # A rollout whose trainer never answers ends by its deadline, well
                        # within REQUEST_TIMEOUT: a request left unanswered is the server's.
                        *("--rollout-timeout", str(ROLLOUT_TIMEOUT)),
                        *await _allow_only(trainer_url),
                    ],
                    stderr=sink,
                    env=_server_env(refusing.getsockname()[1]),
                )
            server_url = await _wait_for(
                server_log, r"listening on (http://127\.0\.0\.1:\d+)", server, "rollout serve"
            )
            tally = Tally(Counter(), {}, {}, [])
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            async with httpx.AsyncClient(
                base_url=server_url,
                timeout=REQUEST_TIMEOUT,
                limits=limits,
                trust_env=False,
            ) as client:
                t0 = time.monotonic()
                queue = iter(cases)
                start = trio.current_time()

                async def worker() -> None:
                    for case in queue:
                        await _send(client, case, tally, start)

                with trio.move_on_after(max_seconds):
                    async with trio.open_nursery() as outer:
                        outer.start_soon(_progress, tally, len(cases))
                        async with trio.open_nursery() as workers:
                            for _ in range(concurrency):
                                workers.start_soon(worker)
                        outer.cancel_scope.cancel()
                fuzzing = time.monotonic() - t0
                alive_after_fuzz = server.returncode is None
                health = await _health(client)
                normal = await _normal_rollout(client, trainer_url, f"fuzz-normal-{seed}")
            exit_code = await _stop(server, STOP_TIMEOUT)
            log_text = server_log.read_text(errors="replace")
            tracebacks, summary = traceback_summary(log_text)
            trainer_tracebacks = trainer_log.read_text(errors="replace").count("Traceback")
        finally:
            with trio.CancelScope(shield=True):
                for process in (server, trainer):
                    if process is not None:
                        await _stop(process, 30.0)
            refusing.close()

    five_xx = sum(
        n for outcome, n in tally.outcomes.items() if is_failure(outcome) and outcome[0] == "5"
    )
    no_answer = sum(n for outcome, n in tally.outcomes.items() if outcome.startswith("no-answer"))
    failing_classes = {
        kind: sum(n for outcome, n in counts.items() if is_failure(outcome))
        for kind, counts in sorted(tally.by_class.items())
    }
    return {
        "bodies_generated": len(cases),
        "bodies_tried": tally.sent,
        "seed": seed,
        "concurrency": concurrency,
        "by_endpoint": {ep: dict(sorted(c.items())) for ep, c in sorted(tally.by_endpoint.items())},
        "status_counts": dict(sorted(tally.outcomes.items())),
        "status_classes": dict(
            sorted(Counter(_status_class(o) for o in tally.outcomes.elements()).items())
        ),
        "5xx": five_xx,
        "503": tally.outcomes.get("503", 0),
        "429": tally.outcomes.get("429", 0),
        "no_answer": no_answer,
        "unsendable": sum(n for o, n in tally.outcomes.items() if o.startswith("unsendable")),
        "tracebacks_in_log": tracebacks,
        "traceback_summary": summary,
        "trainer_tracebacks_in_log": trainer_tracebacks,
        "normal_rollout": normal,
        "normal_rollout_completed": normal.get("result_status") == "COMPLETED",
        "server_alive_after_fuzz": alive_after_fuzz,
        "server_health_after_fuzz": health,
        "server_exit_code": exit_code,
        "by_class": {k: dict(sorted(c.items())) for k, c in sorted(tally.by_class.items())},
        "failing_classes": {k: n for k, n in failing_classes.items() if n},
        "failing_samples": tally.failures,
        "seconds": {
            "generation": round(generation, 1),
            "fuzzing": round(fuzzing, 1),
            "total": round(time.monotonic() - started, 1),
        },
    }


def _status_class(outcome: str) -> str:
    if outcome.isdigit():
        return "503" if outcome == "503" else f"{outcome[0]}xx"
    return outcome.split(":", 1)[0]


def failed(report: dict[str, Any]) -> bool:
    """True when a must-be-0 figure is not 0 or the normal rollout did not complete."""
    return bool(
        report["5xx"]
        or report["no_answer"]
        or report["tracebacks_in_log"]
        or not report["normal_rollout_completed"]
    )


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"bodies tried            {report['bodies_tried']} of {report['bodies_generated']}"
        f" (seed {report['seed']}, concurrency {report['concurrency']},"
        f" {report['seconds']['fuzzing']} s)",
    ]
    for endpoint, counts in report["by_endpoint"].items():
        lines.append(f"  {endpoint:<22}{sum(counts.values())}: {_counts(counts)}")
    lines.append(f"status classes          {_counts(report['status_classes'])}")
    lines.append(f"status codes            {_counts(report['status_counts'])}")
    lines.append("by class:")
    for kind, counts in report["by_class"].items():
        flag = "  <-- FAIL" if kind in report["failing_classes"] else ""
        lines.append(f"  {kind:<22}{sum(counts.values()):>6}: {_counts(counts)}{flag}")
    lines += [
        f"5xx other than 503      {report['5xx']}   (must be 0)",
        f"503                     {report['503']}",
        f"no answer               {report['no_answer']}   (must be 0)",
        f"unsendable (by httpx)   {report['unsendable']}",
        f"tracebacks in log       {report['tracebacks_in_log']}   (must be 0)",
    ]
    for line, n in report["traceback_summary"].items():
        lines.append(f"  {n:>5} x {line}")
    normal = report["normal_rollout"]
    lines.append(
        f"normal rollout completed {'yes' if report['normal_rollout_completed'] else 'no'}"
        f" (init {normal.get('init_status')}, result {normal.get('result_status')})"
    )
    lines.append(f"server health after fuzz {json.dumps(report['server_health_after_fuzz'])}")
    lines.append(
        f"server alive after fuzz {report['server_alive_after_fuzz']};"
        f" exit code after SIGTERM {report['server_exit_code']}"
    )
    if report["failing_samples"]:
        lines.append(f"first {len(report['failing_samples'])} failing requests:")
        for sample in report["failing_samples"]:
            lines.append(
                f"  [{sample['class']}] {sample['endpoint']} -> {sample['outcome']}"
                f" (sent at {sample['sent_at_s']} s, {sample['seconds']} s):"
                f" {sample['body'][:200]}"
            )
    lines.append("FAILED" if failed(report) else "OK")
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bodies", type=int, default=10_000, help="requests to send")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed")
    parser.add_argument("--concurrency", type=int, default=12, help="requests in flight")
    parser.add_argument("--report", type=Path, default=Path("fuzz-report.json"))
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the logs and the store here"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=3_600.0, help="stop sending after this long"
    )
    args = parser.parse_args(argv)
    report = trio.run(
        partial(
            run_fuzz,
            bodies=args.bodies,
            seed=args.seed,
            concurrency=args.concurrency,
            workdir=args.workdir,
            max_seconds=args.max_seconds,
        )
    )
    print(format_report(report))
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {args.report}")
    return 1 if failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
