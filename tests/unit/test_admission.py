"""Admission and the run handle driven directly, on Trio's virtual clock: records, the
idempotency TTL, conflicts, bounds, and the deadline of a rollout still queued
(docs/PROTOCOL.md §2.4 and §7.4)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from conftest import FAST_CHAT_RETRY, make_config
from rollout import FinishReason, Status
from rollout._server.admission import Admission, Conflict, Draining, Overloaded
from rollout._server.lifecycle import run_rollout
from rollout._server.phases import Phase
from rollout._trainer.client import TrainerClient
from rollout._wire.validation import parse_init_request
from rollout.examples.calculator import agent as calculator


def _init(**fields: Any) -> Any:
    body = {
        "rollout_id": "r-1",
        "server_url": "http://trainer",
        "messages": [{"role": "user", "content": "1 + 1?"}],
        **fields,
    }
    return parse_init_request(body)


def _admission(**overrides: Any) -> Admission:
    return Admission(make_config(**overrides), calculator.tool_schemas)


async def test_a_record_answers_duplicates_until_the_ttl_after_its_result(
    autojump_clock: trio.abc.Clock,
) -> None:
    admission = _admission(idempotency_ttl=60.0)
    record, new = admission.admit(_init(), size=100)
    assert new
    again, new_again = admission.admit(_init(), size=100)
    assert (again, new_again) == (record, False)

    await trio.sleep(3600)  # running for an hour: still remembered, never expires mid-run
    assert admission.forget_expired() == []
    admission.finish("r-1", record)
    await trio.sleep(59)
    assert admission.admit(_init(), size=100) == (record, False)
    await trio.sleep(2)
    assert admission.forget_expired() == ["r-1"]
    fresh, new = admission.admit(_init(), size=100)
    assert new
    assert fresh is not record


async def test_conflicts_name_no_other_rollout() -> None:
    admission = _admission()
    admission.admit(_init(idempotency_key="k"), size=0)
    with pytest.raises(Conflict, match="rollout_id") as same_id:
        admission.admit(_init(max_turns=3), size=0)
    with pytest.raises(Conflict, match="idempotency_key") as same_key:
        admission.admit(_init(rollout_id="r-2", idempotency_key="k"), size=0)
    assert "r-1" not in str(same_id.value) + str(same_key.value)
    _, new = admission.admit(_init(rollout_id="k"), size=0)  # a key squats no rollout_id
    assert new


async def test_bounds_count_unfinished_rollouts_bytes_and_waiting_results_apart() -> None:
    admission = _admission(
        max_concurrent_rollouts=1,
        max_queued_rollouts=1,
        max_admitted_bytes=1000,
        max_undelivered_results=1,
    )
    first, _ = admission.admit(_init(rollout_id="a"), size=600)
    with pytest.raises(Overloaded, match="bytes of inits"):
        admission.admit(_init(rollout_id="b"), size=600)
    second, _ = admission.admit(_init(rollout_id="b"), size=100)
    with pytest.raises(Overloaded, match="2 rollouts are unfinished"):
        admission.admit(_init(rollout_id="c"), size=1)

    first.control.enter(Phase.DELIVERING, size=5000)  # its result waits for a dead trainer
    with pytest.raises(Overloaded, match="1 results wait"):
        admission.admit(_init(rollout_id="c"), size=1)
    admission.finish("a", first)
    admission.admit(_init(rollout_id="c"), size=1)
    assert admission.tally.count(Phase.QUEUED) == 2
    assert admission.tally.held(Phase.QUEUED) == 101

    admission.closed = "draining"
    with pytest.raises(Draining):
        admission.admit(_init(rollout_id="d"), size=1)
    assert admission.admit(_init(rollout_id="b"), size=100) == (second, False)


async def test_the_deadline_counts_the_time_spent_queued(autojump_clock: trio.abc.Clock) -> None:
    """A rollout that never gets a slot still ends at its deadline, as ``timeout``, and
    never reaches the trainer."""
    admission = _admission(max_concurrent_rollouts=1, rollout_timeout=30.0)
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    trainer = TrainerClient(http, chat=FAST_CHAT_RETRY, delivery=FAST_CHAT_RETRY)
    record, _ = admission.admit(_init(), size=0)

    async def hold_the_only_slot(task_status: trio.TaskStatus[None]) -> None:
        async with admission.slots:
            task_status.started()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(hold_the_only_slot)
        result = await run_rollout(_init(), calculator, trainer, record.control)
        nursery.cancel_scope.cancel()

    assert (result.status, result.finish_reason) == (Status.ERROR, FinishReason.TIMEOUT)
    assert result.metrics.total_latency_ms == pytest.approx(30_000)
    assert record.control.phase is Phase.QUEUED
    assert requests == []
