"""How a rollout server process scales: in-flight, slow trainer, throughput, stub, workers.

One run measures ``rollout serve`` (its own process, on a free loopback port) in up to five
scenarios of two-turn calculator rollouts, prints a table per scenario and a summary with
each target, and writes every figure to a JSON file. This process is the load tool: a lean
Trio + h11 trainer (benchmarks/_h11_trainer.py) and the init sender.

- ``in-flight``: ``--in-flight`` N rollouts in flight at once; the trainer answers chat
  after 1 s and (``--barrier``, default) holds every turn-1 answer until all N turn-1 calls
  arrived; inits paced at ``--init-rate``/s. Targets: N chat calls outstanding at the
  trainer at once, 0 lost, 202 latency p99 < 50 ms in every second of the ramp, server RSS
  growth <= 20 KiB per rollout in flight.
- ``slow``: trainer answers after 2 s; inits at a steady ``--slow-rate``/s for
  ``--duration`` s. Targets: init -> result p50 <= 4.4 s; TCP connections opened at the
  trainer << requests (<= 10 %); server CPU ms per rollout (reported).
- ``throughput``: trainer answers at once; the server pinned to core 0 and this process to
  core 1; closed loop of ``--concurrency`` for ``--rollouts``; SQLite store. Targets:
  >= 200 rollouts/s, <= 5 ms server CPU per rollout.
- ``stub``: the same against benchmarks/_stub_server.py, the least a rollout server must do:
  the machine's ceiling, and ours as a ratio of it.
- ``workers``: throughput with ``rollout serve --workers N`` (``--workers``, default 2) vs
  one worker, both unpinned. Target: ratio >= 0.8 per worker. Where the load tool shares
  the workers' cores, it also reports the rate the cores allow (cores over the CPU the
  workers and the load tool spend per rollout) and the share of it the workers reached.

    uv run python benchmarks/scale.py                          # everything, full size
    uv run python benchmarks/scale.py --scenarios throughput,stub --rollouts 500
    uv run python benchmarks/scale.py --scenarios in-flight --in-flight 2000
    nox -s bench -- --scenarios slow --duration 10

Inits go over ``--init-connections`` keep-alive connections with a small h11 client by
default: in the stub scenario (where the load tool is busiest) it cost this process about
0.75 ms CPU per rollout, trainer included, against 3.3-3.8 ms with httpx
(``--init-client httpx``), and httpx capped the stub at 225-300 rollouts/s, h11 at ~1300.

The load tool's own garbage collector is off during each scenario: its pauses would
otherwise show as the server's latency.

Sizes are bounded by RLIMIT_NOFILE: the load tool and the server raise their soft limit to
the hard one, and the in-flight table warns when the hard limit is below N + 64. It also
warns when N passes half the kernel's ephemeral port range: past it, every connect() to the
trainer scans the range, and the ``202``'s tail shows it (docs/DEPLOYMENT.md, "What to size").

Exit status 0 when the run completed (targets missed or not: it is a measurement), 1 when a
rollout was lost or a scenario failed.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import httpx
import trio
from rich.console import Console
from rich.table import Table

from rollout._cli.host import capacity_warnings, ephemeral_ports
from rollout._dataset import Problem, load_problems

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _h11_trainer import ClientPool, H11Trainer
from rollouts import _cpu_seconds, _quantile, _rss_mib, _wait_for_url

SCENARIOS = ("in-flight", "slow", "throughput", "stub", "workers")
_HERE = Path(__file__).resolve().parent
_INIT = "/v1/rollout/init"
_LOCAL = "127.0.0.1"

Figures = dict[str, Any]


@attrs.frozen
class Options:
    """The command line: sizes, rates (per second) and times (seconds)."""

    scenarios: tuple[str, ...]
    in_flight: int
    init_rate: float
    barrier: bool
    barrier_timeout: float
    in_flight_delay: float
    duration: float
    slow_rate: float
    slow_delay: float
    rollouts: int
    concurrency: int
    workers: int
    init_connections: int
    init_client: str
    stall_timeout: float
    json_path: Path


# ------------------------------------------------------------------------ processes, /proc


def _raise_nofile() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard one; (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(current := todo.pop())
        todo.extend(children.get(current, []))
    return found


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    return sum(_cpu_seconds(p) or 0.0 for p in _tree(pid))


def _tree_rss(pid: int) -> float:
    """Resident MiB of ``pid`` and its live descendants."""
    return sum(_rss_mib(p) or 0.0 for p in _tree(pid))


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.asynccontextmanager
async def _server(
    command: Sequence[str], log: Path, pin: set[int] | None
) -> AsyncIterator[tuple[trio.Process, str]]:
    """Start ``command`` (a server printing ``listening on http://127.0.0.1:PORT`` to
    stderr) with the highest RLIMIT_NOFILE allowed and, when ``pin``, on those cores only;
    yield it and its URL; then SIGTERM it (SIGKILL after 60 s)."""

    def prepare() -> None:  # in the child, before exec: inherited by its threads
        _raise_nofile()
        if pin:
            os.sched_setaffinity(0, pin)

    with log.open("wb") as sink:
        process = await trio.lowlevel.open_process(list(command), stderr=sink, preexec_fn=prepare)
    try:
        yield process, await _wait_for_url(log, process)
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(60):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _ours(tmp: Path, name: str, budget: int, workers: int = 1) -> list[str]:
    """The ``rollout serve`` command line: SQLite store, room for ``budget`` rollouts."""
    return [
        sys.executable, "-m", "rollout", "serve", "--host", _LOCAL, "--port", "0",
        "--store", f"sqlite:{tmp}/{name}.db", "--workers", str(workers),
        "--max-concurrent", str(budget), "--max-queued", str(budget), "--log-level", "info",
    ]  # fmt: skip


def _log_problems(log: Path) -> Figures:
    """WARNING/ERROR lines of a server log (text format): their count and the first few."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    bad = [line for line in lines if " WARNING " in line or " ERROR " in line]
    return {"server_log_warnings_errors": len(bad), "server_log_first": bad[:3]} if bad else {}


def _stub() -> list[str]:
    return [sys.executable, str(_HERE / "_stub_server.py"), "--host", _LOCAL, "--port", "0"]


# ----------------------------------------------------------------------------- the load


class Sender:
    """Sends inits over at most ``connections`` keep-alive connections, with the h11
    :class:`ClientPool` or httpx (``client``). ``post`` waits for a free connection first;
    its latency is measured from then, so it is the server's, not this sender's queue."""

    def __init__(self, client: str, url: str, connections: int) -> None:
        self.client = client
        self._url = url
        self._slots = trio.Semaphore(connections)
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        self._pool = ClientPool(host, int(port), connections)
        self._httpx: httpx.AsyncClient | None = None
        if client == "httpx":
            limits = httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections
            )
            self._httpx = httpx.AsyncClient(limits=limits, timeout=60.0)

    async def post(self, body: bytes) -> tuple[int, float, float]:
        """(status, seconds waiting for a connection, seconds until the answer)."""
        queued = trio.current_time()
        async with self._slots:
            sent = trio.current_time()
            with trio.fail_after(60):
                if self._httpx is None:
                    status, _ = await self._pool.post(_INIT, body)
                else:
                    response = await self._httpx.post(
                        self._url + _INIT,
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    status = response.status_code
            return status, sent - queued, trio.current_time() - sent

    async def aclose(self) -> None:
        await self._pool.aclose()
        if self._httpx is not None:
            await self._httpx.aclose()


class Inits:
    """Calculator init bodies (the bundled problems, round robin), JSON-encoded."""

    def __init__(self, trainer_url: str, prefix: str) -> None:
        self._problems: list[Problem] = load_problems(None)
        self._trainer_url = trainer_url
        self.prefix = prefix

    def rollout_id(self, index: int) -> str:
        return f"{self.prefix}-{index}"

    def body(self, index: int) -> bytes:
        problem = self._problems[index % len(self._problems)]
        return json.dumps(
            {
                "rollout_id": self.rollout_id(index),
                "server_url": self._trainer_url,
                "messages": [dict(m) for m in problem.messages],
                "completion_params": {"temperature": 0.7, "max_tokens": 256},
                "metadata": problem.init_metadata(),
            }
        ).encode()


@attrs.define
class Load:
    """What one scenario's sender saw: per init its status, send time (Trio clock, s),
    connection wait and 202 latency (s)."""

    sent_at: dict[str, float] = attrs.field(factory=dict)
    statuses: Counter[str] = attrs.field(factory=Counter)
    accepted: list[str] = attrs.field(factory=list)
    waits: list[float] = attrs.field(factory=list)
    latencies: list[tuple[float, float]] = attrs.field(factory=list)  # (sent at, seconds)
    errors: Counter[str] = attrs.field(factory=Counter)

    async def send(self, sender: Sender, inits: Inits, index: int) -> bool:
        """Send init ``index``; True when it was accepted (202)."""
        rollout_id = inits.rollout_id(index)
        body = inits.body(index)
        self.sent_at[rollout_id] = trio.current_time()
        try:
            status, wait, latency = await sender.post(body)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, httpx.HTTPError) as exc:
            self.errors[type(exc).__name__] += 1
            return False
        self.statuses[str(status)] += 1
        self.waits.append(wait)
        self.latencies.append((self.sent_at[rollout_id] + wait, latency))
        if status == 202:
            self.accepted.append(rollout_id)
            return True
        return False


async def _paced(count: int, rate: float, send: Callable[[int], Awaitable[object]]) -> None:
    """Start ``send(i)`` for i < ``count`` at ``rate`` per second, on schedule."""
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for index in range(count):
            await trio.sleep_until(start + index / rate)
            nursery.start_soon(send, index)


async def _await_results(trainer: H11Trainer, load: Load, stall: float) -> bool:
    """Wait until every accepted rollout's result arrived; False when none came for
    ``stall`` seconds (the rest count as lost)."""
    pending: set[str] | None = None  # counted first: a scan per result is quadratic
    while True:
        if len(trainer.results) >= len(load.accepted):
            pending = set(load.accepted if pending is None else pending)
            pending.difference_update(trainer.results)
            if not pending:
                return True
        with trio.move_on_after(stall) as scope:
            await trainer.wait_change()
        if scope.cancelled_caught:
            return False


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _quantiles_ms(values: list[float], qs: Sequence[float] = (0.5, 0.9, 0.99)) -> Figures:
    if not values:
        return {}
    return {f"p{q * 100:g}_ms": _ms(_quantile(values, q)) for q in qs} | {
        "max_ms": _ms(max(values))
    }


def _arrived(trainer: H11Trainer, load: Load) -> int:
    """How many accepted rollouts have their result."""
    return sum(1 for r in load.accepted if r in trainer.results)


def _outcome(trainer: H11Trainer, load: Load, in_time: int) -> Figures:
    """Result counts: by status, lost (accepted, no result even after the server stopped),
    late (arrived only while the server shut down, after ``in_time`` had arrived) and
    duplicates."""
    statuses = Counter(trainer.results[r][0] for r in load.accepted if r in trainer.results)
    return {
        "late_results": _arrived(trainer, load) - in_time,
        "inits_sent": len(load.sent_at),
        "init_answers": dict(load.statuses),
        "init_errors": dict(load.errors),
        "accepted": len(load.accepted),
        "results": dict(statuses),
        "lost": sum(1 for r in load.accepted if r not in trainer.results),
        "duplicate_results": trainer.duplicates,
    }


def _end_to_end(trainer: H11Trainer, load: Load) -> list[float]:
    """init -> result seconds of every rollout whose result arrived."""
    return [trainer.results[r][1] - load.sent_at[r] for r in load.accepted if r in trainer.results]


# ---------------------------------------------------------------------------- scenarios


async def _in_flight(options: Options, tmp: Path) -> Figures:
    """N rollouts in flight at once against a 1 s trainer with a turn-1 barrier."""
    n = options.in_flight
    trainer = H11Trainer(
        delay=options.in_flight_delay,
        barrier=n if options.barrier else 0,
        barrier_timeout=options.barrier_timeout,
    )
    load = Load()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(trainer.run)
        inits = Inits(f"http://{_LOCAL}:{port}", "inflight")
        command = _ours(tmp, "in-flight", n)
        async with _server(command, tmp / "in-flight.log", None) as (process, url):
            soft, hard = _server_nofile(process.pid)
            idle_rss, cpu0, load_cpu0 = _tree_rss(process.pid), _tree_cpu(process.pid), _cpu()
            peak = {"rss": idle_rss, "in_flight": 0, "rss_at_peak_in_flight": idle_rss}
            peak["rss_waiting"] = idle_rss  # the last sample before the barrier opened

            async def sample() -> None:
                while True:
                    rss = _tree_rss(process.pid)
                    flying = len(load.accepted) - len(trainer.results)
                    peak["rss"] = max(peak["rss"], rss)
                    if flying >= peak["in_flight"]:
                        peak["in_flight"], peak["rss_at_peak_in_flight"] = flying, rss
                    if math.isnan(trainer.barrier_opened_at):
                        peak["rss_waiting"] = rss
                    await trio.sleep(0.1)

            nursery.start_soon(sample)
            sender = Sender(options.init_client, url, options.init_connections)
            started = trio.current_time()
            await _paced(n, options.init_rate, lambda i: load.send(sender, inits, i))
            sent = trio.current_time()
            complete = await _await_results(trainer, load, options.stall_timeout)
            in_time = _arrived(trainer, load)
            elapsed = trio.current_time() - started
            cpu, load_cpu = _tree_cpu(process.pid) - cpu0, _cpu() - load_cpu0
            await sender.aclose()
        nursery.cancel_scope.cancel()

    windows: dict[int, list[float]] = {}
    for at, latency in load.latencies:
        windows.setdefault(int(at - started), []).append(latency)
    by_second = {
        second: _ms(_quantile(v, 0.99)) for second, v in sorted(windows.items()) if len(v) >= 10
    }
    worst = max(by_second.values(), default=None)
    opened = trainer.barrier_opened_at - started
    ports = ephemeral_ports()
    flying = max(int(peak["in_flight"]), 1)
    figures: Figures = {
        "in_flight_target": n,
        "trainer_delay_s": options.in_flight_delay,
        "barrier": options.barrier,
        "barrier_opened": trainer.barrier_reason or "no barrier",
        "barrier_opened_after_s": None if math.isnan(opened) else round(opened, 3),
        "init_rate_per_s": options.init_rate,
        "init_client": options.init_client,
        "send_seconds": round(sent - started, 3),
        "wall_seconds": round(elapsed, 3),
        "all_results_arrived": complete,
        **_outcome(trainer, load, in_time),
        "latency_202": _quantiles_ms([lat for _, lat in load.latencies], (0.5, 0.99, 0.999)),
        "latency_202_worst_1s_window_p99_ms": worst,
        "latency_202_p99_ms_by_second": list(by_second.values()),
        "sender_wait": _quantiles_ms(load.waits, (0.5, 0.99)),
        "peak_outstanding_chat_at_trainer": trainer.peak_outstanding,
        "turn1_calls_arrived_when_barrier_opened": trainer.turn1_at_opening,
        "peak_in_flight_at_server": int(peak["in_flight"]),
        "server_rss_idle_mib": round(idle_rss, 2),
        "server_rss_peak_mib": round(peak["rss"], 2),
        "server_rss_at_peak_in_flight_mib": round(peak["rss_at_peak_in_flight"], 2),
        "server_rss_kib_per_in_flight": round((peak["rss"] - idle_rss) * 1024 / flying, 2),
        # All turn-1 calls waiting at the trainer: what each in-flight rollout holds, without
        # the burst of work when the trainer answers them all at once (the peak above).
        "server_rss_kib_per_waiting_rollout": round(
            (peak["rss_waiting"] - idle_rss) * 1024 / flying, 2
        ),
        "trainer_connections_opened": trainer.connections,
        "trainer_requests": trainer.requests,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_ms_per_rollout": round(cpu * 1000 / max(1, len(load.accepted)), 3),
        "load_tool_cpu_ms_per_rollout": round(load_cpu * 1000 / max(1, len(load.accepted)), 3),
        "nofile_limit_server": [soft, hard],
        "ephemeral_ports": list(ports or ()),
        **_log_problems(tmp / "in-flight.log"),
    }
    # Past half the range, every connect() to the trainer scans it: the 202's tail.
    if ports_warning := capacity_warnings(n, open_files=None, ports=ports):
        figures["ports_warning"] = ports_warning[0]
    if hard < n + 64:
        figures["warning"] = (
            f"RLIMIT_NOFILE hard limit {hard} < {n} + 64: {n} connections to the trainer"
            " cannot all be open in one process here"
        )
    return figures


def _server_nofile(pid: int) -> tuple[int, int]:
    """The RLIMIT_NOFILE (soft, hard) of process ``pid``."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    return -1, -1


def _cpu() -> float:
    """This process's CPU seconds (user + system, all threads)."""
    return time.process_time()


async def _slow(options: Options, tmp: Path) -> Figures:
    """A steady ``slow_rate``/s of rollouts against a trainer answering after 2 s."""
    count = max(1, round(options.duration * options.slow_rate))
    budget = max(1024, round(options.slow_rate * options.slow_delay * 2 * 4))
    trainer = H11Trainer(delay=options.slow_delay)
    load = Load()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(trainer.run)
        inits = Inits(f"http://{_LOCAL}:{port}", "slow")
        async with _server(_ours(tmp, "slow", budget), tmp / "slow.log", None) as (process, url):
            cpu0, load_cpu0 = _tree_cpu(process.pid), _cpu()
            sender = Sender(options.init_client, url, options.init_connections)
            started = trio.current_time()
            await _paced(count, options.slow_rate, lambda i: load.send(sender, inits, i))
            complete = await _await_results(trainer, load, options.stall_timeout)
            in_time = _arrived(trainer, load)
            elapsed = trio.current_time() - started
            cpu, load_cpu = _tree_cpu(process.pid) - cpu0, _cpu() - load_cpu0
            await sender.aclose()
        nursery.cancel_scope.cancel()
    done = max(1, len(load.accepted))
    return {
        "rate_per_s": options.slow_rate,
        "duration_s": options.duration,
        "trainer_delay_s": options.slow_delay,
        "wall_seconds": round(elapsed, 3),
        "all_results_arrived": complete,
        **_outcome(trainer, load, in_time),
        "init_to_result": _quantiles_ms(_end_to_end(trainer, load)),
        "latency_202": _quantiles_ms([lat for _, lat in load.latencies], (0.5, 0.99)),
        "peak_outstanding_chat_at_trainer": trainer.peak_outstanding,
        "trainer_connections_opened": trainer.connections,
        "trainer_requests": trainer.requests,
        "connections_per_request": round(trainer.connections / max(1, trainer.requests), 4),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_ms_per_rollout": round(cpu * 1000 / done, 3),
        "load_tool_cpu_ms_per_rollout": round(load_cpu * 1000 / done, 3),
        **_log_problems(tmp / "slow.log"),
    }


async def _closed_loop(
    options: Options, tmp: Path, name: str, command: list[str], pin: bool
) -> Figures:
    """``--rollouts`` rollouts, ``--concurrency`` at a time, against an instant trainer.
    When ``pin``: the server on core 0, this process on core 1 (restored afterwards)."""
    trainer = H11Trainer(delay=0.0)
    load = Load()
    warmup = min(50, max(1, options.rollouts // 10))
    mine = os.sched_getaffinity(0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(trainer.run)
        inits = Inits(f"http://{_LOCAL}:{port}", name)
        async with _server(command, tmp / f"{name}.log", {0} if pin else None) as (process, url):
            sender = Sender(options.init_client, url, options.init_connections)
            if pin:
                os.sched_setaffinity(0, {1})
            try:

                async def run(first: int, count: int, into: Load) -> bool:
                    """Rollouts first..first+count-1; False when one was not answered."""
                    indexes = iter(range(first, first + count))
                    ok = True

                    async def worker() -> None:
                        nonlocal ok
                        for index in indexes:
                            if await into.send(sender, inits, index):
                                with trio.move_on_after(options.stall_timeout) as scope:
                                    await trainer.wait_result(inits.rollout_id(index))
                                ok = ok and not scope.cancelled_caught

                    async with trio.open_nursery() as workers:
                        for _ in range(min(options.concurrency, count)):
                            workers.start_soon(worker)
                    return ok

                # imports, first connections, SQLite pages: not measured
                await run(0, warmup, Load())
                cpu0, load_cpu0 = _tree_cpu(process.pid), _cpu()
                started = trio.current_time()
                complete = await run(warmup, options.rollouts, load)
                in_time = _arrived(trainer, load)
                elapsed = trio.current_time() - started
                cpu, load_cpu = _tree_cpu(process.pid) - cpu0, _cpu() - load_cpu0
                rss = _tree_rss(process.pid)
            finally:
                os.sched_setaffinity(0, mine)
                await sender.aclose()
        nursery.cancel_scope.cancel()
    done = sum(1 for r in load.accepted if r in trainer.results)
    share = load_cpu / elapsed
    caveat = {}
    if share > 0.8:
        caveat["caveat"] = (
            f"the load tool used {share:.0%} of a core: this figure may be capped by it"
        )
    return {
        "rollouts": options.rollouts,
        "warmup_rollouts": warmup,
        "concurrency": options.concurrency,
        "pinned": pin,
        "init_client": options.init_client,
        "wall_seconds": round(elapsed, 3),
        "all_results_arrived": complete,
        **_outcome(trainer, load, in_time),
        "rollouts_per_s": round(done / elapsed, 2),
        "init_to_result": _quantiles_ms(_end_to_end(trainer, load)),
        "latency_202": _quantiles_ms([lat for _, lat in load.latencies], (0.5, 0.99)),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_ms_per_rollout": round(cpu * 1000 / max(1, done), 3),
        "load_tool_cpu_ms_per_rollout": round(load_cpu * 1000 / max(1, done), 3),
        "load_tool_cpu_share": round(share, 3),
        **caveat,
        "server_rss_mib": round(rss, 2),
        "trainer_connections_opened": trainer.connections,
        "trainer_requests": trainer.requests,
        **_log_problems(tmp / f"{name}.log"),
    }


def _pinnable() -> bool:
    return len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)


async def _throughput(options: Options, tmp: Path) -> Figures:
    """Our server on one core, closed loop, SQLite store."""
    budget = max(1024, options.concurrency)
    return await _closed_loop(
        options, tmp, "throughput", _ours(tmp, "throughput", budget), _pinnable()
    )


async def _stub_scenario(options: Options, tmp: Path) -> Figures:
    """The stub server on one core, closed loop."""
    return await _closed_loop(options, tmp, "stub", _stub(), _pinnable())


async def _workers(options: Options, tmp: Path) -> Figures:
    """``--workers`` worker processes vs one, unpinned, SQLite store."""
    budget = max(1024, options.concurrency)
    one = await _closed_loop(options, tmp, "workers-1", _ours(tmp, "workers-1", budget), False)
    many = await _closed_loop(
        options, tmp, "workers-n", _ours(tmp, "workers-n", budget, options.workers), False
    )
    ratio = many["rollouts_per_s"] / max(one["rollouts_per_s"], 1e-9)
    cores = len(os.sched_getaffinity(0))
    # What the cores allow the workers when the load tool's CPU is paid from the same cores:
    # the rate at which workers and load tool together would use every core.
    spent = many["server_cpu_ms_per_rollout"] + many["load_tool_cpu_ms_per_rollout"]
    ceiling = cores * 1000 / max(spent, 1e-9)
    figures: Figures = {
        "workers": options.workers,
        "one_worker": one,
        "n_workers": many,
        "ratio": round(ratio, 3),
        "cpu_per_rollout_n_vs_one": round(
            many["server_cpu_ms_per_rollout"] / max(one["server_cpu_ms_per_rollout"], 1e-9), 3
        ),
        "cores_ceiling_rollouts_per_s": round(ceiling, 1),
        "share_of_cores_ceiling": round(many["rollouts_per_s"] / ceiling, 3),
        "lost": one["lost"] + many["lost"],
    }
    if cores <= options.workers:
        figures["caveat"] = (
            f"{cores} cores for {options.workers} workers and the load tool: the load tool"
            " competes with the workers for CPU, so the ratio understates their scaling"
            f" (the cores allow {ceiling:.0f} rollouts/s, the workers reached"
            f" {figures['share_of_cores_ceiling']:.0%} of it)"
        )
    return figures


RUNNERS: dict[str, Callable[[Options, Path], Awaitable[Figures]]] = {
    "in-flight": _in_flight,
    "slow": _slow,
    "throughput": _throughput,
    "stub": _stub_scenario,
    "workers": _workers,
}


# ---------------------------------------------------------------------------- reporting


def _flat(figures: Figures, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in figures.items():
        if (
            isinstance(value, dict)
            and value
            and all(not isinstance(v, dict) for v in value.values())
        ):
            if key in ("init_answers", "init_errors", "results"):
                rows.append((prefix + key, json.dumps(value)))
            else:
                rows.append((prefix + key, ", ".join(f"{k} {v}" for k, v in value.items())))
        elif isinstance(value, dict):
            rows.extend(_flat(value, f"{prefix}{key}."))
        else:
            rows.append((prefix + key, str(value)))
    return rows


def _table(name: str, figures: Figures) -> Table:
    table = Table(title=name, show_header=False, title_justify="left")
    for key, value in _flat(figures):
        table.add_row(key, value)
    return table


@attrs.frozen
class Target:
    """One line of the summary: what was promised, what was measured, met or not (None:
    no target, a figure)."""

    scenario: str
    target: str
    measured: str
    met: bool | None


def _targets(options: Options, results: dict[str, Figures]) -> list[Target]:
    out: list[Target] = []
    if f := results.get("in-flight"):
        n = options.in_flight
        out += [
            Target("in-flight", f"{n} chat calls outstanding at once",
                   str(f["peak_outstanding_chat_at_trainer"]),
                   f["peak_outstanding_chat_at_trainer"] >= n),
            Target("in-flight", "0 lost", str(f["lost"]), f["lost"] == 0),
            Target("in-flight", "202 p99 < 50 ms in every 1 s window",
                   f"{f['latency_202_worst_1s_window_p99_ms']} ms (overall p99 "
                   f"{f['latency_202'].get('p99_ms')} ms; ephemeral ports "
                   f"{'-'.join(map(str, f['ephemeral_ports'])) or 'unknown'})",
                   f["latency_202_worst_1s_window_p99_ms"] is not None
                   and f["latency_202_worst_1s_window_p99_ms"] < 50),
            Target("in-flight", "RSS <= 20 KiB per in-flight rollout",
                   f"{f['server_rss_kib_per_in_flight']} KiB at the peak, "
                   f"{f['server_rss_kib_per_waiting_rollout']} waiting (in flight "
                   f"{f['peak_in_flight_at_server']})",
                   f["server_rss_kib_per_in_flight"] <= 20),
            Target("in-flight", "trainer connections opened vs requests",
                   f"{f['trainer_connections_opened']} / {f['trainer_requests']}", None),
        ]  # fmt: skip
    if f := results.get("slow"):
        p50 = f["init_to_result"].get("p50_ms", math.inf)
        out += [
            Target("slow", "init -> result p50 <= 4400 ms",
                   f"{p50} ms (p90 {f['init_to_result'].get('p90_ms')}, "
                   f"p99 {f['init_to_result'].get('p99_ms')})", p50 <= 4400),
            Target("slow", "connections opened << requests (<= 10 %)",
                   f"{f['trainer_connections_opened']} / {f['trainer_requests']}",
                   f["connections_per_request"] <= 0.1),
            Target("slow", "server CPU per rollout", f"{f['server_cpu_ms_per_rollout']} ms", None),
            Target("slow", "0 lost", str(f["lost"]), f["lost"] == 0),
        ]  # fmt: skip
    if f := results.get("throughput"):
        out += [
            Target("throughput", ">= 200 rollouts/s (one core)", str(f["rollouts_per_s"]),
                   f["rollouts_per_s"] >= 200),
            Target("throughput", "<= 5 ms server CPU per rollout",
                   f"{f['server_cpu_ms_per_rollout']} ms", f["server_cpu_ms_per_rollout"] <= 5),
            Target("throughput", "init -> result p50 / p99",
                   f"{f['init_to_result'].get('p50_ms')} / {f['init_to_result'].get('p99_ms')} ms",
                   None),
            Target("throughput", "0 lost", str(f["lost"]), f["lost"] == 0),
        ]  # fmt: skip
    if f := results.get("stub"):
        ceiling = f"{f['rollouts_per_s']}/s, {f['server_cpu_ms_per_rollout']} ms"
        if "caveat" in f:
            ceiling += f" [{f['caveat']}]"
        out.append(Target("stub", "the ceiling: rollouts/s, CPU ms per rollout", ceiling, None))
        if t := results.get("throughput"):
            speed = t["rollouts_per_s"] / max(f["rollouts_per_s"], 1e-9)
            cost = t["server_cpu_ms_per_rollout"] / max(f["server_cpu_ms_per_rollout"], 1e-9)
            out += [
                Target("stub", "ours / stub rollouts/s", f"{speed:.3f}", None),
                Target("stub", "ours / stub CPU per rollout", f"{cost:.2f}x", None),
            ]
    if f := results.get("workers"):
        want = 0.8 * options.workers
        measured = f"{f['ratio']} ({f['n_workers']['rollouts_per_s']} vs "
        measured += f"{f['one_worker']['rollouts_per_s']} rollouts/s)"
        if "caveat" in f:
            measured += f" [{f['caveat']}]"
        out += [
            Target("workers", f"{options.workers} workers >= {want:g}x one", measured,
                   f["ratio"] >= want),
            Target("workers", "0 lost", str(f["lost"]), f["lost"] == 0),
        ]  # fmt: skip
    return out


def _summary(targets: list[Target], failures: dict[str, str]) -> Table:
    table = Table(title="summary", title_justify="left")
    for column in ("scenario", "target", "measured", ""):
        table.add_column(column)
    verdict = {True: "[green]met[/]", False: "[red]missed[/]", None: ""}
    for t in targets:
        table.add_row(t.scenario, t.target, t.measured, verdict[t.met])
    for name, error in failures.items():
        table.add_row(name, "runs to the end", error, "[red]failed[/]")
    return table


@contextlib.contextmanager
def _no_collector_pauses() -> Iterator[None]:
    """This process's cyclic garbage collector off for a scenario, and a collection after.

    The load tool holds as much as the server (19,000 outstanding calls at its trainer):
    with the collector on, its own full collections paused it for up to 0.7 s, and each
    pause showed as a spike in the server's ``202`` latency it measures."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


async def run(options: Options, console: Console) -> int:
    """Run the chosen scenarios; print and save the figures; the exit status."""
    nofile = _raise_nofile()
    results: dict[str, Figures] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="rollout-scale-") as tmp:
        for name in options.scenarios:
            console.print(f"[bold]{name}[/] ...")
            began = time.monotonic()
            try:
                with _no_collector_pauses():
                    results[name] = await RUNNERS[name](options, Path(tmp))
            except Exception as exc:  # a failed scenario is reported, the others still run
                failures[name] = f"{type(exc).__name__}: {exc}"
                log = Path(tmp) / f"{name}.log"
                if log.exists():
                    console.print(log.read_text()[-3000:], markup=False)
                console.print_exception()
                continue
            results[name]["scenario_seconds"] = round(time.monotonic() - began, 1)
            console.print(_table(name, results[name]))
    targets = _targets(options, results)
    console.print(_summary(targets, failures))
    cores = os.cpu_count() or 0
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "machine": {
            "cpu_model": _cpu_model(),
            "cores": cores,
            "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nofile_limit_load_tool": list(nofile),
        },
        "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(options).items()
        },
        "pinned": _pinnable(),
        "scenarios": results,
        "failures": failures,
        "summary": [attrs.asdict(t) for t in targets],
    }
    if not _pinnable():
        report["note"] = f"{cores} core(s): throughput and stub were not pinned"
        console.print(f"[yellow]{report['note']}[/]")
    options.json_path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"figures written to {options.json_path}")
    lost = sum(int(f.get("lost", 0)) for f in results.values())
    return 1 if failures or lost else 0


def _scenarios(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if unknown := [n for n in names if n not in SCENARIOS]:
        raise click.BadParameter(f"unknown {unknown}; choose from {', '.join(SCENARIOS)}")
    return names


@click.command()
@click.option(
    "--scenarios",
    default=",".join(SCENARIOS),
    show_default=True,
    callback=_scenarios,
    help="Comma-separated scenarios to run, in this order.",
)
@click.option(
    "--in-flight",
    type=click.IntRange(1),
    default=20_000,
    show_default=True,
    help="in-flight: rollouts in flight at once.",
)
@click.option(
    "--init-rate",
    type=click.FloatRange(min=1),
    default=200.0,
    show_default=True,
    help="in-flight: inits per second (past what the server admits, 202s queue).",
)
@click.option(
    "--barrier/--no-barrier",
    default=True,
    show_default=True,
    help="in-flight: hold turn-1 answers until all turn-1 calls arrived.",
)
@click.option(
    "--barrier-timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="in-flight: seconds without a turn-1 call that open it.",
)
@click.option(
    "--in-flight-delay",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="in-flight: seconds before each chat answer.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="slow: seconds of steady load.",
)
@click.option(
    "--slow-rate",
    type=click.FloatRange(min=0.1),
    default=100.0,
    show_default=True,
    help="slow: inits per second.",
)
@click.option(
    "--slow-delay",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="slow: seconds before each chat answer.",
)
@click.option(
    "--rollouts",
    type=click.IntRange(1),
    default=6000,
    show_default=True,
    help="throughput/stub/workers: rollouts measured (after a short warm-up).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="throughput/stub/workers: rollouts at once (closed loop).",
)
@click.option(
    "--workers",
    type=click.IntRange(2),
    default=2,
    show_default=True,
    help="workers: worker processes compared with one.",
)
@click.option(
    "--init-connections",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Keep-alive connections the inits are sent over.",
)
@click.option(
    "--init-client",
    type=click.Choice(["h11", "httpx"]),
    default="h11",
    show_default=True,
    help="The HTTP client sending inits.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="Seconds without a result before the rest count as lost.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-results.json"),
    show_default=True,
    help="Figures written here.",
)
def main(**kwargs: Any) -> None:
    """Measure a rollout server process at scale (127.0.0.1 only); see the module doc."""
    options = Options(**kwargs)
    raise SystemExit(trio.run(run, options, Console()))


if __name__ == "__main__":
    main()
