"""``rollout serve --workers N``: worker processes on one port sharing a SQLite store behave
as one server; a killed worker is replaced and its rollout still gets exactly one result;
one SIGTERM drains them all (docs/PROTOCOL.md §5.3, docs/DEPLOYMENT.md)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import trio

from conftest import PROCESS_TIMEOUT, Trainer, init_body, server_process


def _pid(worker: str) -> int:
    """The pid in a worker's name, ``host:pid/nonce``."""
    match = re.search(r":(\d+)/", worker)
    assert match is not None, worker
    return int(match.group(1))


async def test_workers_share_one_port_and_one_store(trainer: Trainer, tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path}/store.db"
    async with (
        server_process("--workers", "2", store=store) as (parent, port),
        httpx.AsyncClient(timeout=30.0) as client,
    ):
        url = f"http://127.0.0.1:{port}"
        bodies = [init_body(trainer, rollout_id=f"w-{i}") for i in range(12)]
        for body in bodies:
            assert (await client.post(f"{url}/v1/rollout/init", json=body)).status_code == 202
        for body in bodies:  # re-sent, on whichever worker: no second run
            again = await client.post(
                f"{url}/v1/rollout/init", json=body, headers={"connection": "close"}
            )
            assert again.status_code == 202
        for body in bodies:
            assert (await trainer.mock.wait_result(body["rollout_id"]))["status"] == "COMPLETED"

        # /metrics on any worker counts every worker's inits (prometheus multiprocess mode).
        text = (await client.get(f"{url}/metrics")).text
        started = re.search(r'rollout_inits_total\{outcome="started"\} (\S+)', text)
        duplicates = re.search(r'rollout_inits_total\{outcome="duplicate"\} (\S+)', text)
        assert started is not None
        assert duplicates is not None
        assert (float(started.group(1)), float(duplicates.group(1))) == (12.0, 12.0)

        # A rollout in flight on a worker that gets SIGKILLed: replaced, taken over.
        trainer.mock.chat_delay = 600.0
        body = init_body(trainer, rollout_id="cut")
        assert (await client.post(f"{url}/v1/rollout/init", json=body)).status_code == 202
        await trainer.mock.wait_chat_request("cut")
        status = (await client.get(f"{url}/v1/rollout/cut")).json()
        assert status["phase"] == "running"
        os.kill(_pid(status["owner"]), signal.SIGKILL)
        trainer.mock.chat_delay = 0.0
        result = await trainer.mock.wait_result("cut", timeout=PROCESS_TIMEOUT)
        assert (result["status"], result["finish_reason"]) == ("ERROR", "error")
        assert (
            f"the worker {status['owner']} running this rollout stopped"
            in (result["error_message"])
        )
        with trio.fail_after(PROCESS_TIMEOUT):  # the parent started a new worker
            while True:
                try:
                    health = (await client.get(f"{url}/health")).json()
                except httpx.TransportError:
                    health = {}
                if health.get("status") == "healthy" and health["worker"] != status["owner"]:
                    break
                await trio.sleep(0.05)

        parent.send_signal(signal.SIGTERM)
        with trio.fail_after(PROCESS_TIMEOUT):
            assert await parent.wait() == 0
    assert {rid: len(r) for rid, r in trainer.mock.results.items()} == {
        **{f"w-{i}": 1 for i in range(12)},
        "cut": 1,
    }


async def test_workers_refuse_the_memory_store(tmp_path: Path) -> None:
    from conftest import rollout_cli

    code, _, stderr = await rollout_cli(tmp_path, "serve", "--workers", "2", "--store", "memory")
    assert code == 2
    assert "workers share the store" in stderr


async def test_two_hosts_sharing_redis_are_one_server(trainer: Trainer, redis_url: str) -> None:
    """Separate processes on their own ports (two hosts behind a load balancer): a re-sent
    init reaching the other gets the original 202 and starts nothing; status and cancel
    work from either; a cancel reaches the owner through the store."""
    async with (
        server_process(store=redis_url) as (_, port_a),
        server_process(store=redis_url) as (_, port_b),
        httpx.AsyncClient(timeout=30.0) as client,
    ):
        a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        done = init_body(trainer, rollout_id="h-1")
        assert (await client.post(f"{a}/v1/rollout/init", json=done)).status_code == 202
        assert (await trainer.mock.wait_result("h-1"))["status"] == "COMPLETED"
        again = await client.post(f"{b}/v1/rollout/init", json=done)
        assert (again.status_code, again.json()["rollout_id"]) == (202, "h-1")
        changed = await client.post(f"{b}/v1/rollout/init", json={**done, "max_turns": 3})
        assert changed.status_code == 409
        status = (await client.get(f"{b}/v1/rollout/h-1")).json()
        assert (status["phase"], status["result"]["status"]) == ("done", "COMPLETED")

        trainer.mock.chat_delay = 600.0  # h-2 waits on its first turn, on host a
        held = init_body(trainer, rollout_id="h-2")
        assert (await client.post(f"{a}/v1/rollout/init", json=held)).status_code == 202
        await trainer.mock.wait_chat_request("h-2")
        owner = (await client.get(f"{a}/health")).json()["worker"]
        assert (await client.get(f"{b}/v1/rollout/h-2")).json()["owner"] == owner
        cancel = await client.post(f"{b}/v1/rollout/cancel", json={"rollout_ids": ["h-2"]})
        assert cancel.json() == {"cancelled": ["h-2"]}
        result = await trainer.mock.wait_result("h-2", timeout=PROCESS_TIMEOUT)  # next renewal
        assert (result["status"], result["finish_reason"]) == ("ERROR", "cancelled")
        health_b = (await client.get(f"{b}/health")).json()
    assert health_b["completed_rollouts"] == 0  # b never ran anything
    assert {rid: len(r) for rid, r in trainer.mock.results.items()} == {"h-1": 1, "h-2": 1}
    assert len(trainer.mock.chat_requests_for("h-1")) == 2  # one run: two turns


async def test_a_draining_worker_leaves_new_connections_to_the_others(
    trainer: Trainer, tmp_path: Path
) -> None:
    store = f"sqlite:{tmp_path}/store.db"
    async with (
        server_process("--workers", "2", store=store) as (parent, port),
        httpx.AsyncClient(timeout=30.0) as client,
    ):
        url = f"http://127.0.0.1:{port}"
        trainer.mock.chat_delay = 3.0  # the held rollout keeps its worker draining a while
        body = init_body(trainer, rollout_id="held")
        assert (await client.post(f"{url}/v1/rollout/init", json=body)).status_code == 202
        await trainer.mock.wait_chat_request("held")
        owner = (await client.get(f"{url}/v1/rollout/held")).json()["owner"]
        trainer.mock.chat_delay = 0.0
        os.kill(_pid(owner), signal.SIGTERM)  # that worker alone drains
        await trio.sleep(0.5)
        statuses = []
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each
        async with httpx.AsyncClient(timeout=30.0, limits=fresh) as new_connections:
            for i in range(16):
                body = init_body(trainer, rollout_id=f"d-{i}")
                answer = await new_connections.post(f"{url}/v1/rollout/init", json=body)
                statuses.append(answer.status_code)
        assert statuses == [202] * 16  # never a 503 from the draining worker
        result = await trainer.mock.wait_result("held", timeout=PROCESS_TIMEOUT)
        assert result["status"] == "COMPLETED"  # it finished its rollout while draining
        for i in range(16):
            await trainer.mock.wait_result(f"d-{i}", timeout=PROCESS_TIMEOUT)
        parent.send_signal(signal.SIGTERM)
        with trio.fail_after(PROCESS_TIMEOUT):
            assert await parent.wait() == 0
