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
from rollout._server.admission import Admission, Conflict, Draining, Overloaded, Unavailable
from rollout._server.lifecycle import RunControl, run_rollout
from rollout._server.phases import Phase
from rollout._store import StoredPhase, StoreError
from rollout._store.memory import MemoryStore
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
    store = MemoryStore(clock=trio.current_time)
    return Admission(make_config(**overrides), calculator.tool_schemas, store, "me")


async def _finish(admission: Admission, rollout_id: str, control: RunControl | None) -> None:
    assert control is not None
    control.enter(Phase.DONE)
    ttl = admission.config.idempotency_ttl
    await admission.store.finish(rollout_id, StoredPhase.DONE, ttl)


async def test_a_record_answers_duplicates_until_the_ttl_after_its_result(
    autojump_clock: trio.abc.Clock,
) -> None:
    admission = _admission(idempotency_ttl=60.0)
    rollout_id, control = await admission.admit(_init(), size=100)
    assert (rollout_id, control is not None) == ("r-1", True)
    assert await admission.admit(_init(), size=100) == ("r-1", None)

    await trio.sleep(3600)  # running for an hour: still remembered, never expires mid-run
    assert await admission.admit(_init(), size=100) == ("r-1", None)
    await _finish(admission, "r-1", control)
    await trio.sleep(59)
    assert await admission.admit(_init(), size=100) == ("r-1", None)
    await trio.sleep(2)
    _, fresh = await admission.admit(_init(), size=100)
    assert fresh is not None
    assert fresh is not control


async def test_conflicts_name_no_other_rollout() -> None:
    admission = _admission()
    await admission.admit(_init(idempotency_key="k"), size=0)
    with pytest.raises(Conflict, match="rollout_id") as same_id:
        await admission.admit(_init(max_turns=3), size=0)
    with pytest.raises(Conflict, match="idempotency_key") as same_key:
        await admission.admit(_init(rollout_id="r-2", idempotency_key="k"), size=0)
    assert "r-1" not in str(same_id.value) + str(same_key.value)
    _, control = await admission.admit(_init(rollout_id="k"), size=0)  # a key squats no id
    assert control is not None
    # The same body under the same key answers the first rollout's 202.
    assert await admission.admit(_init(idempotency_key="k"), size=0) == ("r-1", None)


async def test_bounds_count_unfinished_rollouts_bytes_and_waiting_results_apart() -> None:
    admission = _admission(
        max_concurrent_rollouts=1,
        max_queued_rollouts=1,
        max_admitted_bytes=1000,
        max_undelivered_results=1,
    )
    _, first = await admission.admit(_init(rollout_id="a"), size=600)
    assert first is not None
    with pytest.raises(Overloaded, match="bytes of inits"):
        await admission.admit(_init(rollout_id="b"), size=600)
    await admission.admit(_init(rollout_id="b"), size=100)
    with pytest.raises(Overloaded, match="2 rollouts are unfinished"):
        await admission.admit(_init(rollout_id="c"), size=1)

    first.enter(Phase.DELIVERING, size=5000)  # its result waits for a dead trainer
    with pytest.raises(Overloaded, match="1 results wait"):
        await admission.admit(_init(rollout_id="c"), size=1)
    await _finish(admission, "a", first)
    await admission.admit(_init(rollout_id="c"), size=1)
    assert admission.tally.count(Phase.QUEUED) == 2
    assert admission.tally.held(Phase.QUEUED) == 101

    admission.closed = "draining"
    with pytest.raises(Draining):
        await admission.admit(_init(rollout_id="d"), size=1)
    # A re-sent init still gets its 202 while nothing new is admitted.
    assert await admission.admit(_init(rollout_id="b"), size=100) == ("b", None)


async def test_an_unreachable_store_refuses_new_inits_with_503() -> None:
    admission = _admission()

    async def broken(*args: object) -> None:
        raise StoreError("store redis://***@db:6379/0: connection refused")

    admission.store.claim = broken  # type: ignore[method-assign, assignment]
    with pytest.raises(Unavailable, match="retry later") as refused:
        await admission.admit(_init(), size=10)
    assert refused.value.status == 503
    assert admission.tally.count(Phase.QUEUED) == 0  # nothing left counted


async def test_the_deadline_counts_the_time_spent_queued(autojump_clock: trio.abc.Clock) -> None:
    """A rollout that never gets a slot still ends at its deadline, as ``timeout``, and
    never reaches the trainer."""
    admission = _admission(max_concurrent_rollouts=1, rollout_timeout=30.0)
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500)

    trainer = TrainerClient(
        httpx.MockTransport(handler), chat=FAST_CHAT_RETRY, delivery=FAST_CHAT_RETRY
    )
    _, control = await admission.admit(_init(), size=0)
    assert control is not None

    async def hold_the_only_slot(task_status: trio.TaskStatus[None]) -> None:
        async with admission.slots:
            task_status.started()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(hold_the_only_slot)
        result = await run_rollout(_init(), calculator, trainer, control)
        nursery.cancel_scope.cancel()

    assert (result.status, result.finish_reason) == (Status.ERROR, FinishReason.TIMEOUT)
    assert result.metrics.total_latency_ms == pytest.approx(30_000)
    assert control.phase is Phase.QUEUED
    assert requests == []
