"""Delivery driven directly (httpx.MockTransport, a temporary outbox, Trio's virtual clock):
what happens to a result on each answer of the trainer (docs/PROTOCOL.md §5.3)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from rollout import RetryPolicy
from rollout._server.delivery import Delivery
from rollout._server.outbox import Outbox, PendingResult
from rollout._trainer.client import TrainerClient

QUICK = RetryPolicy(attempts=3, request_timeout=5.0, wait_initial=0.5, wait_max=1.0)
RESULT = PendingResult("r-1", "http://trainer", b'{"rollout_id":"r-1"}', "sk-9", "ab" * 32, None)


def _delivery(status: int, outbox: Outbox | None) -> tuple[Delivery, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Delivery(TrainerClient(http, chat=QUICK, delivery=QUICK), outbox), seen


def _state(outbox: Outbox) -> str | None:
    path = outbox.path_for("r-1")
    if not path.exists():
        return None
    return "delivered" if "delivered" in json.loads(path.read_bytes()) else "pending"


@pytest.mark.parametrize(
    ("status", "delivered", "lost", "left", "attempts"),
    [
        (200, True, 0, "delivered", 1),  # acknowledged: a record without the key stays
        (204, True, 0, "delivered", 1),  # any 2xx
        (400, False, 1, None, 1),  # refused for good: lost, logged, removed
        (503, False, 0, "pending", 3),  # the trainer may come back: kept for the next start
    ],
)
async def test_each_answer_of_the_trainer(
    autojump_clock: trio.abc.Clock,
    tmp_path: Path,
    status: int,
    delivered: bool,
    lost: int,
    left: str | None,
    attempts: int,
) -> None:
    outbox = Outbox(tmp_path)
    delivery, seen = _delivery(status, outbox)
    kept = await delivery.keep(RESULT)

    assert kept
    assert _state(outbox) == "pending"
    assert await delivery.deliver(RESULT, kept=kept) is delivered
    assert (delivery.lost_results, _state(outbox), len(seen)) == (lost, left, attempts)
    assert seen[0].content == RESULT.result
    assert seen[0].headers["authorization"] == "Bearer sk-9"
    if left == "delivered":
        assert b"sk-9" not in outbox.path_for("r-1").read_bytes()


async def test_without_an_outbox_a_result_the_trainer_never_takes_is_lost(
    autojump_clock: trio.abc.Clock,
) -> None:
    delivery, seen = _delivery(503, None)
    assert await delivery.keep(RESULT) is False
    assert await delivery.deliver(RESULT, kept=False) is False
    assert (delivery.lost_results, len(seen)) == (1, 3)


async def test_restore_hands_back_what_an_earlier_process_left(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    earlier, _ = _delivery(200, outbox)
    await earlier.keep(RESULT)

    pending, delivered = await _delivery(200, outbox)[0].restore(keep_delivered_for=3600.0)
    assert (pending, delivered) == ([RESULT], [])
