"""The trainer client driven directly: retries, Retry-After, caps and the deadline, on
Trio's virtual clock with httpx.MockTransport (docs/PROTOCOL.md §4.3 and §5.3)."""

from __future__ import annotations

import base64
import gzip
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from rollout import RetryPolicy, TrainerExchangeError, TrainerHTTPError, TrainerTransportError
from rollout._trainer.client import TrainerClient

FINAL = {
    "choices": [{"message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
Handler = Callable[[httpx.Request], httpx.Response]
POLICY = RetryPolicy(attempts=5, request_timeout=30.0, wait_initial=0.5, wait_max=10.0)


def _client(handler: Handler, policy: RetryPolicy = POLICY, **kwargs: Any) -> TrainerClient:
    return TrainerClient(httpx.MockTransport(handler), chat=policy, delivery=policy, **kwargs)


def _answers(
    *responses: httpx.Response,
) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    return handler, seen


async def test_retry_after_replaces_the_backoff_and_each_retry_is_logged(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    handler, seen = _answers(
        httpx.Response(503, headers={"retry-after": "7"}), httpx.Response(200, json=FINAL)
    )
    client = _client(handler)
    started = trio.current_time()
    completion = await client.chat("http://trainer?token=t-1", {"messages": []}, api_key="k")

    assert completion.message.content == "42"
    assert len(seen) == 2
    assert seen[0].content == seen[1].content == b'{"messages":[]}'  # encoded again, the same
    assert trio.current_time() - started >= 7.0
    (line,) = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert "POST http://trainer/v1/chat/completions?*** answered HTTP 503" in line
    assert "attempt 1 failed, retrying in 7 s" in line
    assert "t-1" not in caplog.text


async def test_every_attempt_of_the_policy_is_made_with_backoff_and_counted(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The first attempt runs before stamina's retry state exists; the count and the
    # backoff must be the policy's all the same.
    handler, seen = _answers(httpx.Response(503))
    policy = RetryPolicy(attempts=4, request_timeout=30.0, wait_initial=1.0, wait_jitter=0.0)
    started = trio.current_time()
    with pytest.raises(TrainerHTTPError, match=r"after 4 attempts"):
        await _client(handler, policy).chat("http://trainer", {}, api_key=None)
    assert len(seen) == 4
    assert trio.current_time() - started == pytest.approx(1.0 + 2.0 + 4.0)


async def test_a_final_4xx_is_not_retried(autojump_clock: trio.abc.Clock) -> None:
    handler, seen = _answers(httpx.Response(400, text="bad max_tokens"))
    with pytest.raises(TrainerHTTPError) as caught:
        await _client(handler).chat("http://trainer", {}, api_key=None)
    assert len(seen) == 1
    assert caught.value.status == 400
    assert caught.value.body == "bad max_tokens"
    assert "bad max_tokens" not in str(caught.value)  # kept apart: not for every caller


async def test_an_undecodable_2xx_is_final_and_not_retried(autojump_clock: trio.abc.Clock) -> None:
    broken = httpx.Response(
        200, headers={"content-encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
    )
    handler, seen = _answers(broken)
    with pytest.raises(TrainerExchangeError, match="DecodingError"):
        await _client(handler).chat("http://trainer", {}, api_key=None)
    assert len(seen) == 1


async def test_an_answer_past_the_cap_is_refused_also_when_compressed(
    autojump_clock: trio.abc.Clock,
) -> None:
    bomb = gzip.compress(b"[" + b" " * 200_000 + b"]")
    handler, _ = _answers(httpx.Response(200, headers={"content-encoding": "gzip"}, content=bomb))
    with pytest.raises(TrainerExchangeError, match="more than 65536 bytes"):
        await _client(handler, max_response_bytes=65536).chat("http://t", {}, api_key=None)
    assert len(bomb) < 65536  # small on the wire: the cap applies to what it decodes to


async def test_chat_retries_never_pass_the_rollouts_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    handler, seen = _answers(httpx.Response(503, headers={"retry-after": "60"}))
    started = trio.current_time()
    with trio.move_on_after(5.0):  # the rollout's deadline
        await _client(handler).chat("http://trainer", {}, api_key=None)
        raise AssertionError("the deadline must end the wait for the next attempt")
    assert trio.current_time() - started == pytest.approx(5.0)
    assert len(seen) == 1


async def test_any_2xx_acknowledges_a_result_whatever_its_body(
    autojump_clock: trio.abc.Clock,
) -> None:
    odd = httpx.Response(
        202, headers={"content-encoding": "deflate"}, stream=httpx.ByteStream(b"\x00garbage")
    )
    handler, seen = _answers(odd)
    await _client(handler).deliver_bytes("http://trainer", b"{}", api_key="k")
    assert len(seen) == 1
    assert seen[0].headers["authorization"] == "Bearer k"
    assert seen[0].url.path == "/v1/rollout/completed"


async def test_a_trickled_acknowledgement_ends_within_the_delivery_budget(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Trickle(httpx.AsyncByteStream):
        """A byte a second, forever: each read well within the per-read timeout."""

        def __aiter__(self) -> Trickle:
            return self

        async def __anext__(self) -> bytes:
            await trio.sleep(1.0)
            return b" "

    handler, seen = _answers(httpx.Response(200, stream=Trickle()))
    budget = RetryPolicy(attempts=None, timeout=60.0, request_timeout=30.0)
    client = TrainerClient(httpx.MockTransport(handler), chat=POLICY, delivery=budget)
    started = trio.current_time()
    with trio.fail_after(600):  # unbounded, the 64 KiB acknowledgement read takes 18 hours
        with pytest.raises(TrainerTransportError, match=r"did not succeed within 60 s"):
            await client.deliver_bytes("http://trainer", b"{}", api_key=None)
    assert trio.current_time() - started == pytest.approx(60.0)
    assert len(seen) == 1


async def test_credentials_in_the_trainer_url_are_sent_as_basic_auth_unless_an_api_key_is(
    autojump_clock: trio.abc.Clock,
) -> None:
    handler, seen = _answers(httpx.Response(200, json=FINAL))
    client = _client(handler)
    await client.chat("http://us%20er:p%40ss@trainer:8000", {}, api_key=None)
    await client.chat("http://us%20er:p%40ss@trainer:8000", {}, api_key="sk-1")
    await client.chat("http://trainer:8000", {}, api_key=None)
    basic, bearer, none = seen
    assert basic.headers["authorization"] == "Basic " + base64.b64encode(b"us er:p@ss").decode()
    assert basic.headers["host"] == "trainer:8000"
    assert bearer.headers["authorization"] == "Bearer sk-1"
    assert "authorization" not in none.headers


async def test_a_failure_names_neither_the_urls_password_nor_its_basic_token(
    autojump_clock: trio.abc.Clock,
) -> None:
    token = base64.b64encode(b"user:hunter2").decode()

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.url} with Basic {token} (hunter2)")

    policy = RetryPolicy(attempts=1)
    with pytest.raises(TrainerTransportError) as caught:
        await _client(handler, policy).chat("http://user:hunter2@trainer", {}, api_key=None)
    assert "hunter2" not in str(caught.value)
    assert token not in str(caught.value)
    assert "Basic ***" in str(caught.value)
