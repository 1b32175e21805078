"""Across restarts, one result per rollout and one run per rollout_id (docs/PROTOCOL.md
§5.3): an acknowledged result leaves the outbox even when a shutdown cuts in right
after the 2xx, and a re-sent init of a delivered rollout after ``kill -9`` does not run it
again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from conftest import Trainer, init_body, make_config, server_process
from rollout._server.outbox import Outbox
from rollout._server.supervisor import Supervisor
from rollout._trainer.client import TrainerClient
from rollout._wire.validation import parse_init_request
from rollout.examples.calculator import agent as calculator

FINAL = {
    "choices": [{"message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def _states(outbox: Path) -> list[str]:
    records = [json.loads(p.read_bytes()) for p in sorted(outbox.glob("*.json"))]
    return ["delivered" if "delivered" in r else "pending" for r in records]


async def test_an_acknowledgement_just_before_a_hurried_shutdown_still_leaves_the_outbox(
    tmp_path: Path,
) -> None:
    """The second SIGTERM cancels the supervisor's nursery; if that lands right after the
    trainer's 2xx, the result must still be marked delivered, or the next start sends it
    a second time."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=FINAL))
    async with httpx.AsyncClient(transport=transport) as http:
        config = make_config(outbox_dir=tmp_path)
        trainer = TrainerClient(http, chat=config.chat_retry, delivery=config.delivery_retry)
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
            supervisor.admit(request)
            await acknowledged.wait()

    assert _states(tmp_path) == ["delivered"]
    pending, _ = Outbox(tmp_path).load(keep_delivered_for=3600.0, now=2e9)
    assert pending == []


async def test_a_delivered_rollout_is_not_run_again_after_kill_9(
    trainer: Trainer, tmp_path: Path
) -> None:
    body = init_body(trainer, rollout_id="r-1")
    async with httpx.AsyncClient(timeout=30.0) as client:
        async with server_process(outbox=tmp_path) as (process, port):
            assert (
                await client.post(f"http://127.0.0.1:{port}/v1/rollout/init", json=body)
            ).status_code == 202
            assert (await trainer.mock.wait_result("r-1"))["status"] == "COMPLETED"
            with trio.fail_after(30):
                while _states(tmp_path) != ["delivered"]:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            process.kill()  # SIGKILL: no drain, nothing written on the way out
            await process.wait()
        chats = len(trainer.mock.chat_requests_for("r-1"))

        async with server_process(outbox=tmp_path) as (_, port):
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
