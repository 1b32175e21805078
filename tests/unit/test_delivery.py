"""Delivery driven directly (httpx.MockTransport, a store, Trio's virtual clock): what
happens to a result on each answer of the trainer (docs/PROTOCOL.md §5.3)."""

from __future__ import annotations

import httpx
import pytest
import trio

from rollout import RetryPolicy
from rollout._server.delivery import Delivery, Kept, PendingResult
from rollout._store import NewRollout, Outcome, Store, StoredPhase
from rollout._store.memory import MemoryStore
from rollout._trainer.client import TrainerClient

QUICK = RetryPolicy(attempts=3, request_timeout=5.0, wait_initial=0.5, wait_max=1.0)
RESULT = PendingResult("r-1", "http://trainer", b'{"rollout_id":"r-1"}', "sk-9")
OK = Outcome("COMPLETED", "stop", 1.0)


class _DurableMemory(MemoryStore):
    """The memory store standing in for a durable one: what a released result does is
    the subject here, not the file (tests/unit/test_store.py runs every backend)."""

    durable = True


def _delivery(status: int, store: Store) -> tuple[Delivery, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status)

    trainer = TrainerClient(httpx.MockTransport(handler), chat=QUICK, delivery=QUICK)
    return Delivery(trainer, store, owner="me", ttl=3600.0), seen


async def _claimed(store: Store) -> None:
    await store.renew("me", 3600.0)
    new = NewRollout("r-1", b"d" * 32, None, "http://trainer", "sk-9", b"[]")
    assert (await store.claim(new, "me")).new


@pytest.mark.parametrize(
    ("status", "delivered", "lost", "phase", "owner", "attempts"),
    [
        (200, True, 0, StoredPhase.DONE, "me", 1),  # acknowledged: the record is done
        (204, True, 0, StoredPhase.DONE, "me", 1),  # any 2xx
        (400, False, 1, StoredPhase.LOST, "me", 1),  # refused for good: lost, logged
        (503, False, 0, StoredPhase.DELIVERING, "", 3),  # may come back: released, kept
    ],
)
async def test_each_answer_of_the_trainer(
    autojump_clock: trio.abc.Clock,
    status: int,
    delivered: bool,
    lost: int,
    phase: StoredPhase,
    owner: str,
    attempts: int,
) -> None:
    store = _DurableMemory(clock=trio.current_time)  # a durable store, on virtual time
    async with store.connected():
        await _claimed(store)
        delivery, seen = _delivery(status, store)
        assert await delivery.keep(RESULT, OK) is Kept.KEPT
        assert await delivery.deliver(RESULT, OK, kept=True) is delivered
        record = await store.get("r-1")
        assert record is not None
        assert (delivery.lost_results, record.phase, record.owner, len(seen)) == (
            lost,
            phase,
            owner,
            attempts,
        )
    assert seen[0].content == RESULT.result
    assert seen[0].headers["authorization"] == "Bearer sk-9"


async def test_in_the_memory_store_a_result_the_trainer_never_takes_is_lost(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore(clock=trio.current_time)
    await _claimed(store)
    delivery, seen = _delivery(503, store)
    assert await delivery.keep(RESULT, OK) is Kept.KEPT
    assert await delivery.deliver(RESULT, OK, kept=True) is False
    assert (delivery.lost_results, len(seen)) == (1, 3)
    assert (await store.get("r-1")).phase is StoredPhase.LOST  # type: ignore[union-attr]


async def test_a_result_of_a_rollout_taken_over_meanwhile_is_dropped(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryStore(clock=trio.current_time)
    await _claimed(store)
    await trio.sleep(3601)  # "me" stalled past its lease
    await store.renew("other", 60.0)
    assert [o.rollout_id for o in await store.take_orphans("other", 10)] == ["r-1"]
    delivery, seen = _delivery(200, store)
    assert await delivery.keep(RESULT, OK) is Kept.SUPERSEDED
    assert (delivery.superseded_results, seen) == (1, [])
