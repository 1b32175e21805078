"""Graceful shutdown: drain in process, and SIGTERM/SIGINT against a real server process."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from conftest import (
    PROCESS_TIMEOUT,
    StartServer,
    Trainer,
    gated_agent,
    init_body,
    server_process,
    store_rows,
)
from rollout import Agent, Message, RolloutContext
from rollout.testing import Fault


async def test_drain_refuses_new_rollouts_and_lets_running_ones_finish(
    start_server: StartServer, trainer: Trainer
) -> None:
    release = trio.Event()
    server = await start_server(agent=gated_agent(release), drain_timeout=60.0)
    assert (await server.init(init_body(trainer, rollout_id="in-flight"))).status_code == 202
    server.stop.set()
    with trio.fail_after(30):
        # Polling over HTTP on purpose: /health is how a load balancer sees the drain.
        while not (await server.health())["draining"]:  # noqa: ASYNC110
            await trio.sleep(0.01)

    refused = await server.init(init_body(trainer, rollout_id="late"))
    assert refused.status_code == 503
    assert "retry-after" in refused.headers
    assert refused.headers["connection"] == "close"  # retried elsewhere, not on this one
    # A duplicate of an accepted rollout is still answered from its record.
    assert (await server.init(init_body(trainer, rollout_id="in-flight"))).status_code == 202

    release.set()
    result = await trainer.mock.wait_result("in-flight", timeout=30.0)
    assert result["status"] == "COMPLETED"
    with trio.fail_after(30):
        await server.stopped.wait()
    assert "late" not in trainer.mock.results


async def test_drain_timeout_cancels_and_still_reports_every_rollout(
    start_server: StartServer, trainer: Trainer
) -> None:
    async def hangs(ctx: RolloutContext) -> None:
        ctx.append(Message.user("progress so far"))
        await trio.sleep_forever()

    server = await start_server(
        agent=Agent("hangs", loop=hangs), drain_timeout=0.2, max_concurrent_rollouts=1
    )
    bodies = [init_body(trainer, rollout_id=f"h-{i}") for i in range(3)]  # one running, two queued
    for body in bodies:
        assert (await server.init(body)).status_code == 202
    with trio.fail_after(30):
        await server.shutdown()

    for body in bodies:
        assert len(trainer.mock.results[body["rollout_id"]]) == 1
        result = trainer.mock.results[body["rollout_id"]][0].body
        assert result["status"] == "ERROR"
        assert result["finish_reason"] == "shutdown"
        assert result["error_message"]
    running = trainer.mock.results["h-0"][0].body
    assert running["final_messages"] == [
        *bodies[0]["messages"],
        {"role": "user", "content": "progress so far"},
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_drains_a_real_server_process(
    trainer: Trainer, signum: signal.Signals
) -> None:
    import httpx

    trainer.mock.chat_delay = 1.0  # the rollout is mid-turn when the signal arrives
    async with (
        server_process("--drain-timeout", "60") as (process, port),
        httpx.AsyncClient() as client,
    ):
        body = init_body(trainer, rollout_id="sig", metadata={"ground_truth": "42"})
        response = await client.post(f"http://127.0.0.1:{port}/v1/rollout/init", json=body)
        assert response.status_code == 202
        await trainer.mock.wait_chat_request("sig", timeout=PROCESS_TIMEOUT)
        process.send_signal(signum)
        with trio.fail_after(PROCESS_TIMEOUT):
            returncode = await process.wait()

    assert returncode == 0
    assert len(trainer.mock.results["sig"]) == 1
    result = trainer.mock.results["sig"][0].body
    assert result["status"] == "COMPLETED"
    assert result["reward"] == 1.0


async def test_sigterm_past_the_drain_timeout_reports_shutdown(trainer: Trainer) -> None:
    import httpx

    trainer.mock.chat_delay = 600.0  # never answers in time
    async with (
        server_process("--drain-timeout", "0.2") as (process, port),
        httpx.AsyncClient() as client,
    ):
        body = init_body(trainer, rollout_id="cut")
        assert (
            await client.post(f"http://127.0.0.1:{port}/v1/rollout/init", json=body)
        ).status_code == 202
        await trainer.mock.wait_chat_request("cut", timeout=PROCESS_TIMEOUT)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(PROCESS_TIMEOUT):
            returncode = await process.wait()

    assert returncode == 0
    result = trainer.mock.results["cut"][0].body
    assert result["status"] == "ERROR"
    assert result["finish_reason"] == "shutdown"
    assert result["final_messages"] == body["messages"]
    assert result["metrics"]["total_latency_ms"] > 0


async def test_a_second_signal_stops_at_once_and_keeps_the_result(
    trainer: Trainer, tmp_path: Path
) -> None:
    import httpx

    trainer.mock.chat_delay = 600.0  # the rollout would hold the drain for its whole timeout
    trainer.mock.completed_faults.extend(Fault(503) for _ in range(1000))
    async with (
        server_process("--drain-timeout", "600", store=f"sqlite:{tmp_path}/store.db") as (
            process,
            port,
        ),
        httpx.AsyncClient() as client,
    ):
        url = f"http://127.0.0.1:{port}"
        body = init_body(trainer, rollout_id="hurried")
        assert (await client.post(f"{url}/v1/rollout/init", json=body)).status_code == 202
        await trainer.mock.wait_chat_request("hurried", timeout=PROCESS_TIMEOUT)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(PROCESS_TIMEOUT):
            while not (await client.get(f"{url}/health")).json()["draining"]:  # noqa: ASYNC110
                await trio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(PROCESS_TIMEOUT):  # far less than the 600 s drain
            returncode = await process.wait()

    assert returncode == 0
    (kept,) = store_rows(tmp_path / "store.db")
    assert (kept["phase"], kept["result"]["finish_reason"]) == ("delivering", "shutdown")
