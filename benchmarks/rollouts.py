"""Throughput, latency and memory of a rollout server process under load.

The server runs alone in its own process (``rollout serve`` on a free loopback port), so
its memory can be read from /proc; this process plays the trainer cluster: the mock
trainer (served by Hypercorn on 127.0.0.1:0) and the load generator sending calculator
inits, ``--concurrency`` at a time. Every rollout must end in a COMPLETED result.

    uv run python benchmarks/rollouts.py --rollouts 500 --concurrency 64
    nox -s bench

Figures: rollouts/s, chat completions/s, init-to-result latency quantiles (ms), and the
server's resident memory (MiB) idle, at the end, and its growth per 1000 rollouts.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx
import trio
from rich.console import Console
from rich.table import Table

from rollout._dataset import load_problems
from rollout.testing import MockTrainer
from rollout.testing import serve as serve_trainer


def _rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (Linux /proc), or None where unavailable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` in seconds (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _wait_for_url(log: Path, process: trio.Process) -> str:
    with trio.fail_after(60):
        while True:
            text = await trio.Path(log).read_text()
            if match := re.search(r"listening on (http://127\.0\.0\.1:\d+)", text):
                return match.group(1)
            if process.returncode is not None:
                raise RuntimeError(f"rollout serve exited early:\n{text}")
            await trio.sleep(0.05)


async def run(rollouts: int, concurrency: int, console: Console) -> None:
    problems = load_problems(None)
    trainer = MockTrainer()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        async with trio.open_nursery() as nursery:
            trainer_port = await nursery.start(serve_trainer, trainer, "127.0.0.1", 0)
            trainer_url = f"http://127.0.0.1:{trainer_port}"
            command = [
                sys.executable, "-m", "rollout", "serve", "--host", "127.0.0.1", "--port", "0",
                "--max-concurrent", str(concurrency), "--log-level", "info",
                "--store", f"sqlite:{tmp}/store.db",
            ]  # fmt: skip
            with log.open("wb") as sink:
                process = await trio.lowlevel.open_process(command, stderr=sink)
            server_url = await _wait_for_url(log, process)
            idle, cpu_before = _rss_mib(process.pid), _cpu_seconds(process.pid)
            limiter = trio.CapacityLimiter(concurrency)
            started = trio.current_time()
            async with httpx.AsyncClient(
                limits=httpx.Limits(max_connections=concurrency), timeout=60.0
            ) as client:

                async def one(index: int) -> None:
                    problem = problems[index % len(problems)]
                    rollout_id = f"bench-{index}"
                    body = {
                        "rollout_id": rollout_id,
                        "server_url": trainer_url,
                        "messages": [dict(m) for m in problem.messages],
                        "completion_params": {"temperature": 0.7, "max_tokens": 256},
                        "metadata": problem.init_metadata(),
                    }
                    async with limiter:
                        t0 = trio.current_time()
                        response = await client.post(f"{server_url}/v1/rollout/init", json=body)
                        if response.status_code != 202:
                            statuses[f"init {response.status_code}"] = (
                                statuses.get(f"init {response.status_code}", 0) + 1
                            )
                            return
                        result = await trainer.wait_result(rollout_id, timeout=120.0)
                        latencies.append(trio.current_time() - t0)
                        statuses[result["status"]] = statuses.get(result["status"], 0) + 1

                async with trio.open_nursery() as senders:
                    for index in range(rollouts):
                        senders.start_soon(one, index)
            elapsed = trio.current_time() - started
            loaded, cpu_after = _rss_mib(process.pid), _cpu_seconds(process.pid)
            process.terminate()
            with trio.fail_after(60):
                await process.wait()
            nursery.cancel_scope.cancel()

    table = Table(title=f"{rollouts} rollouts, concurrency {concurrency}", show_header=False)
    table.add_row("results", json.dumps(statuses))
    table.add_row("wall time", f"{elapsed:.2f} s")
    table.add_row("rollouts/s", f"{rollouts / elapsed:.1f}")
    table.add_row("chat completions/s", f"{len(trainer.chat_requests) / elapsed:.1f}")
    if latencies:
        table.add_row("mean init -> result", f"{statistics.fmean(latencies) * 1000:.1f} ms")
        for q in (0.5, 0.9, 0.99):
            table.add_row(
                f"p{round(q * 100)} init -> result", f"{_quantile(latencies, q) * 1000:.1f} ms"
            )
    if cpu_before is not None and cpu_after is not None:
        used = cpu_after - cpu_before
        table.add_row("server CPU", f"{used:.2f} s ({used * 1000 / rollouts:.1f} ms / rollout)")
        table.add_row("load generator + trainer CPU", f"{time.process_time():.2f} s")
    if idle is not None and loaded is not None:
        table.add_row("server RSS idle", f"{idle:.1f} MiB")
        table.add_row("server RSS after", f"{loaded:.1f} MiB")
        table.add_row("RSS growth / 1000 rollouts", f"{(loaded - idle) * 1000 / rollouts:.2f} MiB")
    console.print(table)
    if statuses.get("COMPLETED", 0) != rollouts:
        raise SystemExit(1)


@click.command()
@click.option("--rollouts", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 1024), default=64, show_default=True)
def main(rollouts: int, concurrency: int) -> None:
    """Measure a rollout server process under calculator load (127.0.0.1 only)."""
    trio.run(run, rollouts, concurrency, Console())


if __name__ == "__main__":
    main()
