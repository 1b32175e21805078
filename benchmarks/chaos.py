"""Chaos run: every accepted rollout gets exactly one result, across worker crashes.

Three server workers share one store (a real ``redis-server`` of this run's own, or with
``--store sqlite`` one SQLite file), in one of two layouts:

- ``--layout processes`` (the default): three separate ``rollout serve`` processes, each on
  its own port; inits go round-robin over the live ones. One is killed with SIGKILL (and
  replaced by a new process), later another gets SIGTERM (it drains; replaced too), and
  the survivors get SIGTERM at the end.
- ``--layout workers``: one ``rollout serve --workers 3`` parent on one port, whose worker
  processes accept on the same socket; every init goes to that port. A worker found through
  ``GET /health`` (its ``worker`` is ``host:pid/nonce``) is killed with SIGKILL, later
  another one gets SIGTERM; the parent replaces both. At the end the parent gets SIGTERM,
  passes it on to every worker, and must exit 0.

This process plays the trainer cluster (benchmarks/_chaos_trainer.py): a
:class:`rollout.testing.MockTrainer` that injects faults (chat 500s, 429s with
``Retry-After``, chat answers hanging 1-3 s, a window in which every
``/v1/rollout/completed`` answers 503), behind a TCP proxy that resets a fraction of
requests (``SO_LINGER`` 0), some before the trainer saw them and some after it answered;
and the load generator, which keeps ``--concurrency`` rollouts outstanding (a slot is held
from the init until its result arrives), re-sending the same body (to another process, or
on a new connection) when an init's answer is lost.

    uv run python benchmarks/chaos.py --rollouts 2000
    uv run python benchmarks/chaos.py --store sqlite --rollouts 300
    uv run python benchmarks/chaos.py --store sqlite --layout workers --rollouts 300
    nox -s chaos

Figures: accepted, results, lost (accepted ids without a result), duplicates (ids with
two or more different result bodies), redelivered (the same body more than once: allowed),
runs started per id (from the servers' ``rollout <id> accepted`` log lines), orphan results
(the killed worker's rollouts, ended by a survivor) and seconds from the SIGKILL to the
last of them. Exit status 1 when a rollout was lost, got two different results, or ran
twice, or (workers layout) the parent did not exit 0; 0 otherwise. Everything listens on
127.0.0.1 only.

Importable: ``await run(Options(...))`` returns the report dict (tests/e2e/test_chaos.py).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from rollout.testing import MockTrainer
from rollout.testing import serve as serve_trainer

# The trainer and the proxy live in a sibling module; benchmarks/ is not a package, and
# this file may be loaded by path (tests/e2e/test_chaos.py), so put its directory on the path.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chaos_trainer import DrawnFaults, Injector, TimedResults, proxy

#: A bound on starting or stopping one process, seconds.
PROCESS_TIMEOUT = 60.0
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
#: Logged once per run start (src/rollout/_server/app.py).
RUN_STARTED = re.compile(r" rollout (\S+) accepted$", re.MULTILINE)
DUPLICATE_INIT = re.compile(r" rollout (\S+): duplicate init", re.MULTILINE)
ORPHAN = "stopped before it finished"
ERROR_LINE = re.compile(r"^\S+ \S+ (?:ERROR|CRITICAL) ", re.MULTILINE)
#: The ``rollout serve --workers`` parent's lines about its workers (rollout/_cli/workers.py).
WORKER_STARTED = re.compile(r"worker (?P<index>\d+) started \(pid (?P<pid>\d+)\)")
WORKER_EXITED = re.compile(
    r"worker (?P<index>\d+) \(pid (?P<pid>\d+)\) exited with (?P<code>-?\d+)"
    r"(?P<restarted>; starting a new one)?"
)
LAYOUTS = ("processes", "workers")


@dataclasses.dataclass
class Options:
    """One chaos run. Rates are probabilities per request; times in seconds.

    - ``store``: "redis" (a ``redis-server`` started for the run, or ``redis_url``) or
      "sqlite" (one file in the work directory).
    - ``layout``: "processes" (``servers`` separate ``rollout serve`` processes) or
      "workers" (one ``rollout serve --workers`` with ``servers`` workers); see above.
    - ``concurrency``: rollouts outstanding at once (init sent, result not yet received).
    - ``outage``: (start, end) seconds after the first init during which every
      ``/v1/rollout/completed`` answers 503.
    - ``kill_at`` / ``term_at``: fraction of the rollouts accepted when one worker gets
      SIGKILL, and when another gets SIGTERM.
    - ``settle``: how long after the last init to wait for the last results.
    - ``quiet``: once every result arrived, how long to keep listening for late duplicates.
    - ``workdir``: where logs and the SQLite store go (kept); default a temporary directory,
      removed at the end unless the run failed.
    - ``report``: where the JSON report is written (None: not written).
    """

    store: str = "redis"
    layout: str = "processes"
    rollouts: int = 2000
    concurrency: int = 128
    seed: int = 0
    report: Path | None = Path("chaos-report.json")
    workdir: Path | None = None
    servers: int = 3
    max_concurrent: int = 64
    lease_ttl: float = 2.0
    chat_500: float = 0.05
    chat_429: float = 0.05
    chat_hang: float = 0.03
    hang: tuple[float, float] = (1.0, 3.0)
    reset: float = 0.02
    outage: tuple[float, float] = (5.0, 15.0)
    kill_at: float = 0.3
    term_at: float = 0.5
    settle: float = 180.0
    quiet: float = 5.0
    slot_timeout: float = 60.0
    init_tries: int = 20
    redis_url: str | None = None
    echo: Callable[[str], None] = print


# ---------------------------------------------------------------------------- processes


@dataclasses.dataclass
class Worker:
    """One ``rollout serve`` process started here: a server of the processes layout, or
    the ``--workers`` parent of the workers layout (its workers are known by pid only)."""

    name: str
    process: trio.Process
    log: Path
    url: str = ""
    worker_id: str = ""
    live: bool = True
    fate: str = "running"
    exit_status: int | None = None


def _pid(worker_id: str) -> int:
    """The pid in a worker id, ``host:pid/nonce``."""
    match = re.search(r":(\d+)/", worker_id)
    if match is None:
        raise ValueError(f"not a worker id: {worker_id!r}")
    return int(match.group(1))


def _parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` (Linux ``/proc``); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # after "pid (comm)": state, ppid


async def _stop(process: trio.Process, grace: float) -> int | None:
    """SIGTERM ``process``, SIGKILL it after ``grace`` seconds; its exit status."""
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(grace):
            await process.wait()
    if process.returncode is None:
        process.kill()
        with trio.move_on_after(PROCESS_TIMEOUT):
            await process.wait()
    return process.returncode


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_redis(workdir: Path, processes: list[trio.Process]) -> str:
    """Start ``redis-server`` (no persistence, loopback only) in ``workdir``; its URL. The
    process is appended to ``processes`` (the caller stops it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found (apt-get install redis-server)")
    for attempt in range(5):  # a probed port may be taken before redis binds it: retry
        port = _free_port()
        command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        command += ["--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes"]
        with (workdir / f"redis-{attempt}.log").open("wb") as sink:
            process = await trio.lowlevel.open_process(command, stdout=sink, stderr=sink)
        processes.append(process)
        with trio.move_on_after(PROCESS_TIMEOUT):
            while process.returncode is None:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return f"redis://127.0.0.1:{port}/0"
        await _stop(process, 5.0)
    raise RuntimeError("redis-server did not start on any of 5 free ports")


# ---------------------------------------------------------------------------- the run


class Chaos:
    """The load generator, the process juggling, and the tally."""

    def __init__(
        self,
        options: Options,
        workdir: Path,
        store_url: str,
        trainer_url: str,
        results: TimedResults,
        injector: Injector,
        processes: list[trio.Process],
    ) -> None:
        self.options = options
        self.workdir = workdir
        self.store_url = store_url
        self.trainer_url = trainer_url
        self.results = results
        self.injector = injector
        self.processes = processes
        self.workers: list[Worker] = []
        self.turn = 0
        self.accepted: set[str] = set()
        self.refused: dict[str, str] = {}
        self.init_failures: collections.Counter[str] = collections.Counter()
        self.resent = 0
        self.crossed: dict[float, trio.Event] = {}
        self.events: dict[str, float] = {}  # what happened when: Unix time, seconds
        self.last_init = 0.0
        self.monkey_done = trio.Event()
        self.random = random.Random(options.seed)
        self.health: dict[str, dict[str, Any]] = {}  # worker id -> its /health at the end
        # The workers layout: pid -> worker id of the parent's workers seen on /health, and
        # of those signalled here, pid -> "SIGKILL" or "SIGTERM"; any left running at the end.
        self.seen: dict[int, str] = {}
        self.struck: dict[int, str] = {}
        self.left_running: list[int] = []

    # -- processes

    async def start_worker(self) -> Worker:
        """Start one ``rollout serve`` (the workers layout: the ``--workers`` parent) and wait
        for its port and a worker id (for the parent: until each of its workers listens)."""
        o = self.options
        parent = o.layout == "workers"
        name = "parent" if parent else f"server-{len(self.workers) + 1}"
        log = self.workdir / f"{name}.log"
        command = [sys.executable, "-m", "rollout", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--store", self.store_url, "--lease-ttl", f"{o.lease_ttl:g}"]
        command += ["--max-concurrent", str(o.max_concurrent)]
        if parent:
            command += ["--workers", str(o.servers)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as sink:  # O_APPEND: the parent's workers write to it too
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env,
                cwd=self.workdir,
            )  # fmt: skip
        self.processes.append(process)
        worker = Worker(name, process, log, live=False)  # no inits before it listens
        self.workers.append(worker)
        lines = 1 + o.servers if parent else 1  # the parent's "listening", then each worker's
        with trio.fail_after(PROCESS_TIMEOUT):
            while len(LISTENING.findall(text := log.read_text(errors="replace"))) < lines:
                if process.returncode is not None:
                    raise RuntimeError(f"{name} exited early:\n{text}")
                await trio.sleep(0.05)
        match = LISTENING.search(text)
        assert match is not None
        worker.url = f"http://127.0.0.1:{match.group(1)}"
        async with httpx.AsyncClient(timeout=10.0) as client:
            some_worker = (await client.get(f"{worker.url}/health")).json()["worker"]
        worker.worker_id = f"pid {process.pid}" if parent else some_worker
        worker.live = True
        o.echo(f"{name}: {worker.url} worker {some_worker}")
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.live]

    def _victim(self) -> Worker:
        """The oldest live worker."""
        return self.live()[0]

    async def monkey(self) -> None:
        """SIGKILL one worker at ``kill_at`` of the rollouts accepted and SIGTERM another at
        ``term_at``; each is replaced by a fresh process (by the parent in the workers layout)."""
        if self.options.layout == "workers":
            await self._monkey_workers()
        else:
            await self._monkey_processes()
        self.monkey_done.set()

    async def _monkey_processes(self) -> None:
        o = self.options
        await self._crossing(o.kill_at).wait()
        victim = self._victim()
        victim.live, victim.fate = False, "SIGKILL"
        victim.process.kill()
        self.events["sigkill"] = time.time()
        self.options.echo(
            f"SIGKILL {victim.name} ({victim.worker_id}) after {len(self.accepted)} accepted"
        )
        with trio.move_on_after(PROCESS_TIMEOUT):
            await victim.process.wait()
        victim.exit_status = victim.process.returncode
        await self.start_worker()
        await self._crossing(o.term_at).wait()
        victim = self._victim()
        victim.live, victim.fate = False, "SIGTERM"
        victim.process.terminate()
        self.events["sigterm"] = time.time()
        self.options.echo(
            f"SIGTERM {victim.name} ({victim.worker_id}) after {len(self.accepted)} accepted"
        )
        await self.start_worker()
        # The drain lasts at most drain_timeout + shutdown_delivery_timeout + a margin.
        with trio.move_on_after(120.0):
            await victim.process.wait()
        victim.exit_status = victim.process.returncode
        self.events["sigterm exited"] = time.time()
        self.options.echo(f"{victim.name} exited with status {victim.exit_status}")

    async def _monkey_workers(self) -> None:
        o = self.options
        async with httpx.AsyncClient(timeout=10.0) as client:
            for fate, fraction in (("SIGKILL", o.kill_at), ("SIGTERM", o.term_at)):
                await self._crossing(fraction).wait()
                log_size = self.workers[0].log.stat().st_size
                pid = await self._strike(client, getattr(signal, fate))
                self.struck[pid] = fate
                self.events[fate.lower()] = time.time()
                o.echo(f"{fate} worker {self.seen[pid]} after {len(self.accepted)} accepted")
                # The drain lasts at most drain_timeout + shutdown_delivery_timeout + a margin.
                status = await self._worker_exit(pid, log_size, 120.0)
                if fate == "SIGTERM":
                    self.events["sigterm exited"] = time.time()
                o.echo(f"worker pid {pid} exited with status {status}")

    async def _strike(self, client: httpx.AsyncClient, signum: int) -> int:
        """Send ``signum`` to a worker of the parent that answers ``GET /health`` on a new
        connection, not one signalled before, preferably one with rollouts; its pid."""
        parent, attempt = self.workers[0], 0
        with trio.fail_after(PROCESS_TIMEOUT):
            while True:
                attempt += 1
                try:
                    answer = await client.get(
                        f"{parent.url}/health", headers={"connection": "close"}
                    )
                    health = answer.json()
                    pid = _pid(health["worker"])
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    await trio.sleep(0.05)
                    continue
                self.seen[pid] = health["worker"]
                busy = health.get("status") == "healthy" and health.get("active_rollouts")
                if (
                    pid not in self.struck
                    and (busy or attempt >= 20)
                    and _parent_pid(pid) == parent.process.pid  # one of ours, still running
                ):
                    os.kill(pid, signum)
                    return pid
                await trio.sleep(0.02)
        raise AssertionError("unreachable: fail_after raises")

    async def _worker_exit(self, pid: int, offset: int, timeout: float) -> int | None:  # noqa: ASYNC109
        """The exit status the parent logs for its worker ``pid`` (after byte ``offset`` of
        its log); None when it logged none within ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while True:
                with self.workers[0].log.open("rb") as log:
                    log.seek(offset)
                    text = log.read().decode(errors="replace")
                for match in WORKER_EXITED.finditer(text):
                    if int(match["pid"]) == pid:
                        return int(match["code"])
                await trio.sleep(0.1)
        return None

    def _crossing(self, fraction: float) -> trio.Event:
        return self.crossed.setdefault(fraction, trio.Event())

    # -- load

    def body(self, index: int) -> dict[str, Any]:
        """The init of rollout ``index``; sent as is, every time, under its id."""
        a, b = self.random.randint(1, 99), self.random.randint(1, 99)
        return {
            "rollout_id": f"chaos-{self.options.seed}-{index}",
            "server_url": self.trainer_url,
            "messages": [
                {"role": "system", "content": "You are a calculator. Use the tools."},
                {"role": "user", "content": f"What is {a} + {b}?"},
            ],
            "completion_params": {"temperature": 0.7, "max_tokens": 64},
            "max_turns": 8,
            "max_tokens_total": 4096,
            "metadata": {"ground_truth": str(a + b)},
        }

    async def init(
        self, client: httpx.AsyncClient, fresh: httpx.AsyncClient, body: dict[str, Any]
    ) -> bool:
        """POST ``body`` round-robin until a process answers 202 (True); the same body to
        another process whenever the answer is lost or says "later". In the workers layout
        (one port) a re-send goes on a new connection (``fresh`` keeps none alive), which
        the kernel hands to any worker, not back to one that died or drains."""
        rollout_id = body["rollout_id"]
        for attempt in range(self.options.init_tries):
            if attempt:
                self.resent += 1
                await trio.sleep(min(2.0, 0.05 * 2**attempt))
            live = self.live()
            worker = live[self.turn % len(live)]
            self.turn += 1
            sender = fresh if attempt and self.options.layout == "workers" else client
            try:
                answer = await sender.post(f"{worker.url}/v1/rollout/init", json=body)
            except httpx.HTTPError as exc:
                self.init_failures[type(exc).__name__] += 1
                continue
            if answer.status_code == 202:
                return True
            self.init_failures[str(answer.status_code)] += 1
            if answer.status_code not in (429, 503) and answer.status_code < 500:
                self.refused[rollout_id] = f"{answer.status_code} {answer.text[:200]}"
                return False
        self.refused[rollout_id] = f"no 202 in {self.options.init_tries} tries"
        return False

    async def one(
        self,
        clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
        index: int,
        limiter: trio.CapacityLimiter,
    ) -> None:
        try:
            body = self.body(index)
            accepted = await self.init(*clients, body)
            self.last_init = trio.current_time()
            if not accepted:
                return
            self.accepted.add(body["rollout_id"])
            for fraction, event in self.crossed.items():
                if len(self.accepted) >= fraction * self.options.rollouts:
                    event.set()
            await self.results.wait(body["rollout_id"], self.options.slot_timeout)
        finally:
            limiter.release_on_behalf_of(index)

    async def drive(self) -> None:
        """Start the workers, send every rollout, wait for the results."""
        o = self.options
        for _ in range(1 if o.layout == "workers" else o.servers):
            await self.start_worker()
        self._crossing(o.kill_at)
        self._crossing(o.term_at)
        limits = httpx.Limits(max_connections=o.concurrency + 16)
        once = httpx.Limits(max_connections=o.concurrency + 16, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(timeout=15.0, limits=limits) as client,
            httpx.AsyncClient(timeout=15.0, limits=once) as fresh,
            trio.open_nursery() as chaos,
        ):
            chaos.start_soon(self.monkey)
            limiter = trio.CapacityLimiter(o.concurrency)
            self.injector.t0 = trio.current_time()
            self.events["first init"] = time.time()
            async with trio.open_nursery() as senders:
                for index in range(o.rollouts):
                    await limiter.acquire_on_behalf_of(index)
                    senders.start_soon(self.one, (client, fresh), index, limiter)
            self.events["last init"] = time.time()
            o.echo(f"inits done: {len(self.accepted)} accepted; waiting for the last results")
            with trio.move_on_at(self.last_init + o.settle):
                for rollout_id in sorted(self.accepted):
                    await self.results.wait(rollout_id, o.settle)
            self.events["results in"] = time.time()
            o.echo(f"{len(self.accepted & self.results.keys())} accepted rollouts have a result")
            # Let the drained worker finish (bounded in monkey) and a survivor take over
            # anything it left, then listen a little longer for late second results.
            if "sigterm" in self.events:
                with trio.move_on_after(o.settle):
                    await self.monkey_done.wait()
            await trio.sleep(o.quiet)
            await self.final_health(fresh)
            chaos.cancel_scope.cancel()
        async with trio.open_nursery() as stoppers:
            for worker in self.live():
                stoppers.start_soon(self._stop_worker, worker)
        self.kill_left_running()

    async def final_health(self, fresh: httpx.AsyncClient) -> None:
        """``GET /health`` of each live process; in the workers layout, on new connections
        until each of the parent's workers answered (at most 20 tries per worker)."""
        per_url = self.options.servers if self.options.layout == "workers" else 1
        for worker in self.live():
            answered: set[str] = set()
            for _ in range(20 * per_url):
                try:
                    health = (await fresh.get(f"{worker.url}/health")).json()
                    answered.add(str(health["worker"]))
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    continue
                self.health[str(health["worker"])] = health
                with contextlib.suppress(ValueError):
                    self.seen.setdefault(_pid(str(health["worker"])), str(health["worker"]))
                if len(answered) >= per_url:
                    break

    async def _stop_worker(self, worker: Worker) -> None:
        worker.live, worker.fate = False, "stopped at the end"
        worker.exit_status = await _stop(worker.process, PROCESS_TIMEOUT)

    def kill_left_running(self) -> None:
        """The workers layout, once the parent exited: SIGKILL any of its workers still
        running (none should be: the parent waits for them) and note their pids."""
        if self.options.layout != "workers" or not self.workers:
            return
        if self.workers[0].process.returncode is None:
            return
        for match in WORKER_STARTED.finditer(self.workers[0].log.read_text(errors="replace")):
            pid = int(match["pid"])
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # gone
            if b"--listen-fd" in command and self.store_url.encode() in command:
                os.kill(pid, signal.SIGKILL)
                self.left_running.append(pid)

    # -- the tally

    def tally(self, elapsed: float) -> dict[str, Any]:
        """The report: see the module docstring."""
        results = self.results
        lost = sorted(self.accepted - results.keys())
        duplicates, redelivered, orphans = [], [], []
        statuses: collections.Counter[str] = collections.Counter()
        orphan_arrivals: list[float] = []
        errors: dict[str, Any] = {}
        for rollout_id, records in results.items():
            bodies = {json.dumps(r.body, sort_keys=True) for r in records}
            if len(bodies) > 1:
                duplicates.append(rollout_id)
            elif len(records) > 1:
                redelivered.append(rollout_id)
            first = records[0].body
            statuses[f"{first.get('status')} reward={first.get('reward')}"] += 1
            message = str(first.get("error_message") or "")
            if first.get("status") != "COMPLETED" and ORPHAN not in message:
                errors[rollout_id] = {
                    "error_message": message[:300],
                    "chat_faults": self.injector.chats.get(rollout_id, []),
                }
            for record, arrived in zip(records, results.arrivals.get(rollout_id, []), strict=False):
                if ORPHAN in str(record.body.get("error_message") or ""):
                    orphan_arrivals.append(arrived)
                    if rollout_id not in orphans:
                        orphans.append(rollout_id)
        runs: collections.Counter[str] = collections.Counter()
        duplicate_inits = 0
        log_errors: dict[str, int] = {}
        for worker in self.workers:
            text = worker.log.read_text(errors="replace")
            runs.update(RUN_STARTED.findall(text))
            duplicate_inits += len(DUPLICATE_INIT.findall(text))
            log_errors[worker.name] = len(ERROR_LINE.findall(text)) + text.count("Traceback")
        ran_twice = sorted(i for i, n in runs.items() if n > 1)
        killed = self.events.get("sigkill")
        health_sums: collections.Counter[str] = collections.Counter()
        for health in self.health.values():
            for key in ("lost_results", "internal_errors", "taken_over", "superseded_results"):
                value = health.get(key)
                if isinstance(value, int):
                    health_sums[key] += value
        workers = [
            {
                "name": w.name,
                "url": w.url,
                "worker": w.worker_id,
                "fate": w.fate,
                "exit_status": w.exit_status,
                "log_error_lines": log_errors.get(w.name, 0),
            }
            for w in self.workers
        ]
        if self.options.layout == "workers":
            workers += self.children()
        report: dict[str, Any] = {
            "store": self.options.store,
            "layout": self.options.layout,
            "rollouts": self.options.rollouts,
            "concurrency": self.options.concurrency,
            "seed": self.options.seed,
            "accepted": len(self.accepted),
            "not_accepted": len(self.refused),
            "not_accepted_ids": dict(sorted(self.refused.items())[:20]),
            "init_failures": dict(self.init_failures),
            "inits_resent": self.resent,
            "results_received": len(results.keys() & self.accepted),
            "result_bodies_received": sum(len(r) for r in results.values()),
            "unexpected_results": sorted(results.keys() - self.accepted)[:20],
            "result_statuses": dict(statuses),
            "lost": len(lost),
            "lost_ids": lost[:50],
            "duplicates": len(duplicates),
            "duplicate_ids": sorted(duplicates)[:50],
            "redelivered": len(redelivered),
            "redelivered_ids": sorted(redelivered)[:50],
            "max_runs_per_id": max(runs.values(), default=0),
            "ids_run_more_than_once": len(ran_twice),
            "ids_run_more_than_once_sample": ran_twice[:50],
            "accepted_ids_never_started": len(self.accepted - runs.keys()),
            "duplicate_inits_answered_from_record": duplicate_inits,
            "orphan_results": len(orphans),
            "other_error_results": errors,
            "sigkill_at_unix": killed,
            "sigkill_to_last_orphan_s": (
                round(max(orphan_arrivals) - killed, 3) if orphan_arrivals and killed else None
            ),
            "faults": dict(self.injector.counts),
            "workers": workers,
            "worker_processes_started": len(workers) - (self.options.layout == "workers"),
            "worker_processes_left_running": self.left_running,
            "health_at_end": dict(health_sums),
            "health_at_end_workers": len(self.health),
            "events": {k: round(v - self.events["first init"], 3) for k, v in self.events.items()},
            "elapsed_s": round(elapsed, 3),
        }
        report["passed"] = (
            report["lost"] == 0
            and report["duplicates"] == 0
            and report["max_runs_per_id"] <= 1
            and report["accepted"] > 0
            and (self.options.layout != "workers" or self.workers[0].exit_status == 0)
        )
        return report

    def children(self) -> list[dict[str, Any]]:
        """The workers layout: the parent's workers, from its log lines, as report entries.
        Once stopping, the parent logs a worker's exit only when it is not 0, and exits 0
        only when every worker exited 0: a worker with no such line exited 0 then."""
        parent = self.workers[0]
        text = parent.log.read_text(errors="replace")
        rows: dict[int, dict[str, Any]] = {}
        for match in WORKER_STARTED.finditer(text):
            pid = int(match["pid"])
            rows[pid] = {
                "name": f"worker {match['index']} (pid {pid})",
                "url": parent.url,
                "worker": self.seen.get(pid, ""),
                "fate": self.struck.get(pid, "running"),
                "exit_status": None,
                "log_error_lines": None,  # in the parent's log
            }
        for match in WORKER_EXITED.finditer(text):
            row = rows.get(int(match["pid"]))
            if row is None:
                continue
            row["exit_status"] = int(match["code"])
            if row["fate"] == "running":
                row["fate"] = "exited unasked" if match["restarted"] else "stopped at the end"
        for row in rows.values():
            if row["fate"] == "running" and parent.fate == "stopped at the end":
                row["fate"] = "stopped at the end"
                row["exit_status"] = 0 if parent.exit_status == 0 else None
        return list(rows.values())


async def run(options: Options) -> dict[str, Any]:
    """One chaos run; returns the report (and writes it to ``options.report``).

    Every child process (servers, redis) is stopped before this returns, even on error.
    The work directory is removed unless given or the run failed (its path is then in the
    report as ``workdir``).
    """
    started = trio.current_time()
    temporary = options.workdir is None
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="rollout-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    processes: list[trio.Process] = []
    counts: collections.Counter[str] = collections.Counter()
    report: dict[str, Any] = {"passed": False}
    try:
        async with trio.open_nursery() as nursery:
            if options.store == "sqlite":
                store_url = f"sqlite:{workdir}/store.db"
            elif options.redis_url is not None:
                store_url = options.redis_url
            else:
                store_url = await start_redis(workdir, processes)
            injector = Injector(options, counts)
            results = TimedResults()
            trainer = MockTrainer(
                chat_faults=DrawnFaults(injector.chat),
                completed_faults=DrawnFaults(injector.completed),
                results=results,
            )
            injector.trainer = trainer
            trainer_port = await nursery.start(serve_trainer, trainer, "127.0.0.1", 0)
            proxy_port = await nursery.start(
                proxy, trainer_port, options.reset, options.seed, counts
            )
            chaos = Chaos(
                options,
                workdir,
                store_url,
                f"http://127.0.0.1:{proxy_port}",
                results,
                injector,
                processes,
            )
            options.echo(f"store {store_url}, work directory {workdir}")
            try:
                await chaos.drive()
            finally:
                with trio.CancelScope(shield=True):
                    for process in processes:
                        await _stop(process, 10.0)
                chaos.kill_left_running()
            report = chaos.tally(trio.current_time() - started)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                await _stop(process, 10.0)
        keep = not temporary or not report.get("passed")
        report["workdir"] = str(workdir) if keep else None
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        if options.report is not None:
            options.report.write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary(report: dict[str, Any]) -> str:
    """The figures, one per line."""
    keys = [
        "store", "layout", "accepted", "not_accepted", "results_received", "result_bodies_received",
        "lost", "duplicates", "redelivered", "max_runs_per_id", "ids_run_more_than_once",
        "orphan_results", "sigkill_to_last_orphan_s", "inits_resent", "init_failures",
        "result_statuses", "faults", "health_at_end", "worker_processes_left_running",
        "elapsed_s", "passed",
    ]  # fmt: skip
    lines = [f"{key:>26}: {report.get(key)}" for key in keys]
    for worker in report.get("workers", []):
        lines.append(
            f"{worker['name']:>26}: {worker['fate']}, exit {worker['exit_status']}"
            + (
                f", {worker['log_error_lines']} error lines"
                if worker["log_error_lines"] is not None
                else ""
            )
            + f" ({worker['worker']})"
        )
    if report.get("workdir"):
        lines.append(f"{'work directory (kept)':>26}: {report['workdir']}")
    return "\n".join(lines)


def _window(text: str) -> tuple[float, float]:
    start, _, end = text.partition(",")
    return float(start), float(end)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["redis", "sqlite"], default="redis")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="processes",
        help="separate processes, or one `rollout serve --workers` (sqlite or redis)",
    )
    parser.add_argument("--rollouts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=128, help="rollouts outstanding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=Path("chaos-report.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="kept; logs and store")
    parser.add_argument(
        "--redis-url", default=None, help="an existing Redis instead of starting one"
    )
    parser.add_argument("--settle", type=float, default=180.0, help="seconds after the last init")
    parser.add_argument(
        "--outage", type=_window, default=(5.0, 15.0), help="START,END seconds of completed 503s"
    )
    args = parser.parse_args(argv)
    options = Options(
        store=args.store,
        layout=args.layout,
        rollouts=args.rollouts,
        concurrency=args.concurrency,
        seed=args.seed,
        report=args.report,
        workdir=args.workdir,
        redis_url=args.redis_url,
        settle=args.settle,
        outage=args.outage,
    )
    report = trio.run(partial(run, options))
    print(summary(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
