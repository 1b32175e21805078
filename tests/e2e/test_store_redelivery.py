"""Results survive a trainer that is down: kept in the store, delivered by the next server
on the same store, and a re-sent init for them starts no second run (docs/PROTOCOL.md §5.3)."""

from __future__ import annotations

from pathlib import Path

import trio

from conftest import StartServer, Trainer, gated_agent, init_body, store_rows
from rollout import RetryPolicy
from rollout.testing import Fault

#: Gives up on a delivery quickly, so the test sees the result left in the store.
SHORT_DELIVERY = RetryPolicy(
    attempts=3, timeout=2.0, request_timeout=5.0, wait_initial=0.01, wait_max=0.05
)


def _pending(path: Path) -> list[dict[str, object]]:
    """The results waiting in the store (not the records of delivered rollouts)."""
    return [row for row in store_rows(path) if row["result"] is not None]


async def test_an_acknowledged_result_leaves_only_a_record_without_secrets(
    start_server: StartServer, trainer: Trainer, tmp_path: Path
) -> None:
    db = tmp_path / "store.db"
    server = await start_server(store=f"sqlite:{db}")
    body = init_body(trainer, api_key="sk-secret-1")
    assert (await server.init(body)).status_code == 202
    assert (await trainer.mock.wait_result("r-1", timeout=30.0))["status"] == "COMPLETED"

    with trio.fail_after(10):
        while store_rows(db)[0]["phase"] != "done":  # finished right after the 2xx  # noqa: ASYNC110
            await trio.sleep(0.01)
    (record,) = store_rows(db)
    assert record["rollout_id"] == "r-1"
    assert (record["api_key"], record["result"], record["messages"]) == (None, None, None)
    assert record["expires_at"] > record["updated_at"]
    assert "sk-secret-1" not in repr(record)


async def test_an_undelivered_result_is_delivered_by_the_next_server(
    start_server: StartServer, trainer: Trainer, tmp_path: Path
) -> None:
    db = tmp_path / "store.db"
    trainer.mock.completed_faults.extend(Fault(503) for _ in range(100))
    first = await start_server(store=f"sqlite:{db}", delivery_retry=SHORT_DELIVERY)
    body = init_body(trainer, metadata={"ground_truth": "42"})
    assert (await first.init(body)).status_code == 202
    with trio.fail_after(30):
        while not _pending(db) or (await first.health())["active_rollouts"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    await first.shutdown()
    assert len(_pending(db)) == 1
    assert "r-1" not in trainer.mock.results
    chat_requests = len(trainer.mock.chat_requests_for("r-1"))

    trainer.mock.completed_faults.clear()  # the trainer is back
    second = await start_server(store=f"sqlite:{db}")
    result = await trainer.mock.wait_result("r-1", timeout=30.0)

    assert result["status"] == "COMPLETED"
    assert result["reward"] == 1.0
    assert result["final_messages"][:2] == body["messages"]
    again = await second.init(body)  # the trainer re-sends the init: no second run
    assert again.status_code == 202
    assert again.json()["rollout_id"] == "r-1"
    with trio.fail_after(10):
        while _pending(db):  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert len(trainer.mock.chat_requests_for("r-1")) == chat_requests
    assert len(trainer.mock.results["r-1"]) == 1
    assert (await second.health())["taken_over"] == 1


async def test_a_result_cut_off_by_shutdown_is_kept(
    start_server: StartServer, trainer: Trainer, tmp_path: Path
) -> None:
    db = tmp_path / "store.db"
    trainer.mock.completed_faults.extend(Fault(503) for _ in range(1000))
    release = trio.Event()
    server = await start_server(
        agent=gated_agent(release),
        store=f"sqlite:{db}",
        drain_timeout=0.0,
        shutdown_delivery_timeout=0.5,
    )
    assert (await server.init(init_body(trainer))).status_code == 202
    with trio.fail_after(30):
        await server.shutdown()  # cancelled at once, its "shutdown" result never acknowledged

    (kept,) = _pending(db)
    assert kept["result"]["finish_reason"] == "shutdown"  # type: ignore[index]
    assert kept["phase"] == "delivering"
