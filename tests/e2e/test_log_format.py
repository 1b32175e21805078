"""``rollout serve --log-format json``: every line one JSON object, and a rollout's lines
carry its rollout_id."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import trio

from conftest import PROCESS_TIMEOUT, Trainer, init_body

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


async def test_json_lines_with_rollout_ids(trainer: Trainer, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "rollout", "serve", "--host", "127.0.0.1", "-p", "0"]
    command += ["--store", "memory", "--log-format", "json"]
    with log.open("wb") as sink:
        process = await trio.lowlevel.open_process(command, stderr=sink, env={**os.environ})
    try:
        with trio.fail_after(PROCESS_TIMEOUT):
            while not (found := LISTENING.search(log.read_text())):  # noqa: ASYNC110
                await trio.sleep(0.05)
        url = f"http://127.0.0.1:{found.group(1)}"
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{url}/v1/rollout/init", json=init_body(trainer))
        assert response.status_code == 202
        await trainer.mock.wait_result("r-1")
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(PROCESS_TIMEOUT):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all({"event", "level", "logger", "timestamp"} <= line.keys() for line in lines)
    (done,) = [line for line in lines if line["event"].startswith("rollout r-1: COMPLETED")]
    assert done["rollout_id"] == "r-1"
    assert done["logger"] == "rollout.lifecycle"
    listening = [line for line in lines if "listening on" in line["event"]]
    assert "rollout_id" not in listening[0]
