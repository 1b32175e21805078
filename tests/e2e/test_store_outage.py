"""Redis going away and coming back (docs/PROTOCOL.md §2.4 and §3.1): while the store cannot
be reached, new inits, status and cancel get 503 with Retry-After, the server stays up and
healthy, and a rollout already running still delivers its result; once Redis is back,
everything works again without a restart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import trio

from conftest import PROCESS_TIMEOUT, StartServer, Trainer, init_body, running_redis


async def _shut_down(port: int) -> None:
    """Stop the Redis on ``port`` at once, as a crash would (no save)."""
    command = ["redis-cli", "-p", str(port), "shutdown", "nosave"]
    await trio.run_process(command, check=False, capture_stdout=True, capture_stderr=True)


async def test_the_server_rides_out_a_redis_outage(
    start_server: StartServer, trainer: Trainer, tmp_path: Path
) -> None:
    with running_redis(tmp_path) as url:
        server = await start_server(store=url, lease_ttl=1.5)
        assert (await server.init(init_body(trainer, rollout_id="before"))).status_code == 202
        assert (await trainer.mock.wait_result("before"))["status"] == "COMPLETED"
        trainer.mock.chat_delay = 1.0
        assert (await server.init(init_body(trainer, rollout_id="running"))).status_code == 202
        await trainer.mock.wait_chat_request("running")
        port = urlsplit(url).port
        assert port is not None
        await _shut_down(port)
        # Its result cannot be kept in the store now: it is delivered from memory.
        assert (await trainer.mock.wait_result("running"))["status"] == "COMPLETED"
        trainer.mock.chat_delay = 0.0

        refused = await server.init(init_body(trainer, rollout_id="during"))
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "2"
        assert "store is unavailable" in refused.json()["detail"]
        status = await server.client.get(f"{server.url}/v1/rollout/before")
        assert status.status_code == 503
        assert (await server.health())["status"] == "healthy"

        binary = shutil.which("redis-server")
        assert binary is not None
        again = await trio.lowlevel.open_process(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
        )
        try:
            with trio.fail_after(PROCESS_TIMEOUT):  # accepted again once Redis answers
                answer = await server.init(init_body(trainer, rollout_id="after"))
                while answer.status_code == 503:
                    await trio.sleep(0.1)
                    answer = await server.init(init_body(trainer, rollout_id="after"))
            assert answer.status_code == 202
            assert (await trainer.mock.wait_result("after"))["status"] == "COMPLETED"
            status = await server.client.get(f"{server.url}/v1/rollout/after")
            assert status.status_code == 200
            await server.shutdown()
        finally:
            again.terminate()
            with trio.fail_after(PROCESS_TIMEOUT):
                await again.wait()
    assert "during" not in trainer.mock.results
