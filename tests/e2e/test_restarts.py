"""Across restarts, one result per rollout and one run per rollout_id (docs/PROTOCOL.md
§5.3): an acknowledged result is recorded as delivered even when a shutdown cuts in right
after the 2xx; a re-sent init of a delivered rollout after ``kill -9`` does not run it
again; a rollout cut off by ``kill -9`` gets its one ERROR result from the next start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from conftest import Trainer, init_body, make_config, server_process, store_rows
from rollout._server.supervisor import Supervisor
from rollout._trainer.client import TrainerClient
from rollout._wire.validation import parse_init_request
from rollout.examples.calculator import agent as calculator

FINAL = {
    "choices": [{"message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def _phases(db: Path) -> list[str]:
    return [row["phase"] for row in store_rows(db)]


async def test_an_acknowledgement_just_before_a_hurried_shutdown_is_recorded(
    tmp_path: Path,
) -> None:
    """The second SIGTERM cancels the supervisor's nursery; if that lands right after the
    trainer's 2xx, the record must still say delivered, or the next start sends the result
    a second time."""
    db = tmp_path / "store.db"
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=FINAL))
    async with transport:
        config = make_config(store=f"sqlite:{db}")
        trainer = TrainerClient(transport, chat=config.chat_retry, delivery=config.delivery_retry)
        supervisor = Supervisor(calculator, trainer, config)
        acknowledged = trio.Event()
        deliver = trainer.deliver_bytes

        async def deliver_then_get_cut_off(*args: Any, **kwargs: Any) -> None:
            await deliver(*args, **kwargs)
            acknowledged.set()
            assert supervisor._nursery is not None
            supervisor._nursery.cancel_scope.cancel()  # the hurried shutdown, at once

        trainer.deliver_bytes = deliver_then_get_cut_off  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            request = parse_init_request(init_body(Trainer(None, "http://trainer")))  # type: ignore[arg-type]
            await supervisor.admit(request)
            await acknowledged.wait()

    assert _phases(db) == ["done"]


async def test_a_delivered_rollout_is_not_run_again_after_kill_9(
    trainer: Trainer, tmp_path: Path
) -> None:
    store = f"sqlite:{tmp_path}/store.db"
    body = init_body(trainer, rollout_id="r-1")
    async with httpx.AsyncClient(timeout=30.0) as client:
        async with server_process(store=store) as (process, port):
            assert (
                await client.post(f"http://127.0.0.1:{port}/v1/rollout/init", json=body)
            ).status_code == 202
            assert (await trainer.mock.wait_result("r-1"))["status"] == "COMPLETED"
            with trio.fail_after(30):
                while _phases(tmp_path / "store.db") != ["done"]:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            process.kill()  # SIGKILL: no drain, nothing written on the way out
            await process.wait()
        chats = len(trainer.mock.chat_requests_for("r-1"))

        async with server_process(store=store) as (_, port):
            url = f"http://127.0.0.1:{port}"
            again = await client.post(f"{url}/v1/rollout/init", json=body)  # re-sent
            assert again.status_code == 202
            assert again.json()["rollout_id"] == "r-1"
            changed = await client.post(f"{url}/v1/rollout/init", json={**body, "max_turns": 2})
            assert changed.status_code == 409
            other = init_body(trainer, rollout_id="r-2")
            assert (await client.post(f"{url}/v1/rollout/init", json=other)).status_code == 202
            await trainer.mock.wait_result("r-2")
            with trio.fail_after(30):
                while (health := (await client.get(f"{url}/health")).json())["active_rollouts"]:  # noqa: ASYNC110
                    await trio.sleep(0.01)

    assert health["completed_rollouts"] == 1  # r-2 only: r-1 did not run again
    assert len(trainer.mock.chat_requests_for("r-1")) == chats
    assert len(trainer.mock.results["r-1"]) == 1


async def test_a_rollout_cut_off_by_kill_9_gets_one_error_result_from_the_next_start(
    trainer: Trainer, tmp_path: Path
) -> None:
    store = f"sqlite:{tmp_path}/store.db"
    trainer.mock.chat_delay = 600.0  # the first turn never comes back before the kill
    body = init_body(trainer, rollout_id="cut")
    async with httpx.AsyncClient(timeout=30.0) as client:
        async with server_process(store=store) as (process, port):
            url = f"http://127.0.0.1:{port}"
            assert (await client.post(f"{url}/v1/rollout/init", json=body)).status_code == 202
            await trainer.mock.wait_chat_request("cut")
            lost_worker = (await client.get(f"{url}/health")).json()["worker"]
            process.kill()
            await process.wait()
        trainer.mock.chat_delay = 0.0

        async with server_process(store=store) as (_, port):
            url = f"http://127.0.0.1:{port}"
            result = await trainer.mock.wait_result("cut", timeout=30.0)  # after the lease
            again = await client.post(f"{url}/v1/rollout/init", json=body)
            assert (again.status_code, again.json()["rollout_id"]) == (202, "cut")
            with trio.fail_after(30):
                while (status := (await client.get(f"{url}/v1/rollout/cut")).json())[  # noqa: ASYNC110
                    "phase"
                ] != "done":
                    await trio.sleep(0.01)

    assert (result["status"], result["finish_reason"]) == ("ERROR", "error")
    assert "reward" not in result
    assert f"the worker {lost_worker} running this rollout stopped" in result["error_message"]
    assert result["final_messages"] == body["messages"]
    assert status["result"]["status"] == "ERROR"
    await trio.sleep(0.5)
    assert len(trainer.mock.results["cut"]) == 1
