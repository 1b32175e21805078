"""One trainer answer cannot exhaust the server's memory: a 300 MB chat answer is read up
to ``max_response_bytes`` (8 MiB by default) and no further (docs/PROTOCOL.md §4.2).
Before the cap, the server process grew from ~54 MB to 3 GB on such an answer."""

from __future__ import annotations

from pathlib import Path

import httpx
from poison_trainer import serving_poison_trainer

from conftest import Trainer, init_body, server_process

#: The stated bound on the server process's peak resident memory through the test.
PEAK_RSS_BOUND = 128 * 1024 * 1024


def _peak_rss(pid: int) -> int:
    """VmHWM of a process: its peak resident set size, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def test_a_huge_trainer_answer_keeps_the_server_small(tmp_path: Path) -> None:
    async with serving_poison_trainer() as trainer:
        body = init_body(Trainer(None, trainer.url), rollout_id="huge/1")  # type: ignore[arg-type]
        async with server_process(store=f"sqlite:{tmp_path}/store.db") as (process, port):
            async with httpx.AsyncClient(timeout=30.0) as client:
                response = await client.post(f"http://127.0.0.1:{port}/v1/rollout/init", json=body)
                assert response.status_code == 202
            result = await trainer.wait_result("huge/1", timeout=60.0)
            peak = _peak_rss(process.pid)

    assert result["status"] == "ERROR"
    assert "the limit" in result["error_message"]
    print(f"server peak RSS {peak / 2**20:.0f} MiB (bound {PEAK_RSS_BOUND / 2**20:.0f} MiB)")
    assert peak < PEAK_RSS_BOUND
