"""Results survive a trainer that is down: kept on disk, delivered by the next server on
the same outbox, and a re-sent init for them starts no second run (docs/PROTOCOL.md §5.3)."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from conftest import StartServer, Trainer, gated_agent, init_body
from rollout import RetryPolicy
from rollout.testing import Fault

#: Gives up on a delivery quickly, so the test sees the result left in the outbox.
SHORT_DELIVERY = RetryPolicy(
    attempts=3, timeout=2.0, request_timeout=5.0, wait_initial=0.01, wait_max=0.05
)


def _files(outbox: Path) -> list[Path]:
    """The results waiting in ``outbox`` (not the records of delivered rollouts)."""
    files = sorted(outbox.glob("*.json")) if outbox.is_dir() else []
    return [path for path in files if "delivered" not in json.loads(path.read_bytes())]


def _any_file_holds(directory: Path, secret: bytes) -> bool:
    return any(secret in path.read_bytes() for path in directory.iterdir())


def _delivered(outbox: Path) -> list[dict[str, object]]:
    files = sorted(outbox.glob("*.json")) if outbox.is_dir() else []
    records = [json.loads(path.read_bytes()) for path in files]
    return [record["delivered"] for record in records if "delivered" in record]


async def test_an_acknowledged_result_leaves_only_a_record_without_secrets(
    start_server: StartServer, trainer: Trainer, tmp_path: Path
) -> None:
    server = await start_server(outbox_dir=tmp_path)
    body = init_body(trainer, api_key="sk-secret-1")
    assert (await server.init(body)).status_code == 202
    assert (await trainer.mock.wait_result("r-1", timeout=30.0))["status"] == "COMPLETED"

    with trio.fail_after(10):
        while _files(tmp_path):  # replaced right after the 2xx  # noqa: ASYNC110
            await trio.sleep(0.01)
    (record,) = _delivered(tmp_path)
    assert record["rollout_id"] == "r-1"
    assert not _any_file_holds(tmp_path, b"sk-secret-1")


async def test_an_undelivered_result_is_delivered_by_the_next_server(
    start_server: StartServer, trainer: Trainer, tmp_path: Path
) -> None:
    trainer.mock.completed_faults.extend(Fault(503) for _ in range(100))
    first = await start_server(outbox_dir=tmp_path, delivery_retry=SHORT_DELIVERY)
    body = init_body(trainer, metadata={"ground_truth": "42"})
    assert (await first.init(body)).status_code == 202
    with trio.fail_after(30):
        while (await first.health())["active_rollouts"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    await first.shutdown()
    assert len(_files(tmp_path)) == 1
    assert "r-1" not in trainer.mock.results
    chat_requests = len(trainer.mock.chat_requests_for("r-1"))

    trainer.mock.completed_faults.clear()  # the trainer is back
    second = await start_server(outbox_dir=tmp_path)
    result = await trainer.mock.wait_result("r-1", timeout=30.0)

    assert result["status"] == "COMPLETED"
    assert result["reward"] == 1.0
    assert result["final_messages"][:2] == body["messages"]
    again = await second.init(body)  # the trainer re-sends the init: no second run
    assert again.status_code == 202
    assert again.json()["rollout_id"] == "r-1"
    with trio.fail_after(10):
        while _files(tmp_path):  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert len(trainer.mock.chat_requests_for("r-1")) == chat_requests
    assert len(trainer.mock.results["r-1"]) == 1


async def test_a_result_cut_off_by_shutdown_is_kept(
    start_server: StartServer, trainer: Trainer, tmp_path: Path
) -> None:
    trainer.mock.completed_faults.extend(Fault(503) for _ in range(1000))
    release = trio.Event()
    server = await start_server(
        agent=gated_agent(release),
        outbox_dir=tmp_path,
        drain_timeout=0.0,
        shutdown_delivery_timeout=0.5,
    )
    assert (await server.init(init_body(trainer))).status_code == 202
    with trio.fail_after(30):
        await server.shutdown()  # cancelled at once, its "shutdown" result never acknowledged

    (kept,) = _files(tmp_path)
    assert json.loads(kept.read_bytes())["result"]["finish_reason"] == "shutdown"
