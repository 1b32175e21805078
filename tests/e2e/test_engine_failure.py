"""Should the rollout engine itself ever stop (a bug: a rollout's own failures end as its
result), /health says so with 503, inits get 503, and the process exits non-zero
(docs/PROTOCOL.md §3)."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from conftest import PROCESS_TIMEOUT, Trainer, init_body
from rollout import create_app
from rollout._server.supervisor import Supervisor

AGENTS = Path(__file__).parent / "agents"


async def test_a_failed_engine_is_reported_by_health_and_refuses_inits(
    trainer: Trainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_forget(self: Supervisor, *args: object) -> None:
        raise RuntimeError("a bug in the engine's bookkeeping")

    monkeypatch.setattr(Supervisor, "_forget", broken_forget)
    from rollout.examples.calculator import agent

    app = create_app(agent)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.post("/v1/rollout/init", json=init_body(trainer))
        assert response.status_code == 202
        with trio.fail_after(30):
            while (health := await client.get("/health")).status_code == 200:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert health.status_code == 503
        assert (await health.get_json())["status"] == "failed"
        again = await client.post("/v1/rollout/init", json=init_body(trainer, rollout_id="r-2"))
        assert again.status_code == 503


async def test_a_failed_engine_stops_the_process_with_a_non_zero_exit(
    trainer: Trainer, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "rollout", "serve", "-m", "engine_bug:agent"]
    command += ["--host", "127.0.0.1", "--port", "0", "--store", f"sqlite:{tmp_path}/s.db"]
    env = {**os.environ, "PYTHONPATH": str(AGENTS), "PYTHONUNBUFFERED": "1"}
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, stderr=subprocess.PIPE, check=False, env=env)
        )
        assert process.stderr is not None
        output = b""
        with trio.fail_after(PROCESS_TIMEOUT):
            while b"listening on" not in output:
                output += await process.stderr.receive_some()
            port = int(output.split(b"listening on http://127.0.0.1:")[1].split()[0])
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    f"http://127.0.0.1:{port}/v1/rollout/init", json=init_body(trainer)
                )
                assert response.status_code == 202
            while chunk := await process.stderr.receive_some():
                output += chunk
            await process.wait()

    stderr = output.decode()
    assert process.returncode == 1
    assert "Error: the rollout engine stopped: RuntimeError: a bug in the engine" in stderr
