"""Developer sessions. Each installs the locked dependencies into its own venv with uv.

nox -s tests          # the test suite (same as `uv run pytest`)
nox -s lint           # ruff check + ruff format --check
nox -s typecheck      # mypy (strict)
nox -s demo           # the end-to-end demo (same as `uv run rollout demo`)
nox -s conformance -- --target URL [options]   # check any rollout server (docs/CONFORMANCE.md)
nox -s conformance    # without --target: serve ours on a free loopback port and check it
nox -s bench [-- --scenarios in-flight,slow,throughput,stub,workers --rollouts N]   # scale
nox -s browser        # /docs in headless Chromium (needs: apt-get install chromium)
nox -s fuzz [-- --bodies N --seed S --concurrency C --report FILE]   # hostile bodies: 0 5xx
nox -s chaos [-- --rollouts N --concurrency C --seed S]   # kill -9 mid-run: 1 result each
nox -s deploy         # deploy/compose.yaml: 2 replicas, Redis, nginx; one rollout through it
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "tests"]


def _sync(session: nox.Session) -> None:
    """Install the project and its locked dev dependencies into the session's venv."""
    session.run_install(
        "uv",
        "sync",
        "--locked",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )


@nox.session
def tests(session: nox.Session) -> None:
    _sync(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    _sync(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    _sync(session)
    session.run("mypy")
    session.run("mypy", "tests", "benchmarks")


@nox.session
def demo(session: nox.Session) -> None:
    _sync(session)
    session.run("rollout", "demo", *session.posargs)


@nox.session
def conformance(session: nox.Session) -> None:
    _sync(session)
    args = list(session.posargs)
    if any(arg == "--target" or arg.startswith("--target=") for arg in args):
        session.run("python", "-m", "conformance", *args)
        return
    # No target: serve our own server as a real process and check it.
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as sink:
            server = subprocess.Popen(
                [
                    *(Path(session.bin) / "rollout", "serve", "--host", "127.0.0.1"),
                    *("--port", "0", "--store", f"sqlite:{tmp}/store.db"),
                ],
                stderr=sink,
            )
        try:
            url = _wait_for_url(log, server)
            session.run("python", "-m", "conformance", "--target", url, *args)
        finally:
            server.terminate()
            server.wait(timeout=120)


def _wait_for_url(log: Path, server: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text()):
            return match.group(1)
        if server.poll() is not None:
            raise RuntimeError(f"rollout serve exited early:\n{log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"rollout serve did not report its address within {timeout:g} s")


@nox.session
def bench(session: nox.Session) -> None:
    """In-flight, slow-trainer, throughput, stub and workers figures of a server process
    (benchmarks/scale.py); prints tables and writes bench-results.json (--json)."""
    _sync(session)
    session.run("python", "benchmarks/scale.py", *session.posargs)


@nox.session
def ports(session: nox.Session) -> None:
    """What one more connect() to a loopback address costs as connections to it pile up
    (benchmarks/ports.py); prints a row per thousand and writes ports-results.json."""
    _sync(session)
    session.run("python", "benchmarks/ports.py", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """10,000 hostile bodies and headers against a server process; fails on any 5xx."""
    _sync(session)
    session.run("python", "tests/fuzzing/hostile.py", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """Three server workers, trainer faults, SIGKILL and SIGTERM mid-run: every accepted
    rollout gets exactly one result (benchmarks/chaos.py); three passes: separate processes
    on Redis, then on SQLite, then one ``rollout serve --workers 3`` on SQLite."""
    _sync(session)
    passes = [("redis", "processes"), ("sqlite", "processes"), ("sqlite", "workers")]
    for store, layout in passes:  # a --report in posargs comes last, and wins
        report = f"chaos-report-{store}-{layout}.json"
        session.run(
            "python", "benchmarks/chaos.py", "--store", store, "--layout", layout,
            "--report", report, *session.posargs,
        )  # fmt: skip


@nox.session
def browser(session: nox.Session) -> None:
    """The /docs page in a real headless Chromium (tests/browser)."""
    import shutil

    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        session.error("no chromium binary: apt-get install chromium")
    _sync(session)
    session.run("pytest", "-m", "browser", "tests/browser", *session.posargs)


_COMPOSE = ("docker", "compose", "-f", "deploy/compose.yaml")
_LB = "http://127.0.0.1:8000"


@nox.session(venv_backend="none")
def deploy(session: nox.Session) -> None:
    """Build the image, start deploy/compose.yaml, run one rollout through the load balancer.

    Skipped without a Docker daemon. The stack is always taken down (with its volumes).
    ROLLOUT_API_KEY, if set, is the replicas' inbound key and is sent on every request.
    """
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        session.skip("no Docker daemon: `docker info` failed (start Docker to run this)")
    try:
        session.run(*_COMPOSE, "up", "-d", "--build", external=True)
        _check_deployment(session, _LB)
    except RuntimeError as exc:
        session.run(*_COMPOSE, "logs", "--tail", "40", external=True, success_codes=[0, 1])
        session.error(str(exc))
    finally:
        session.run(*_COMPOSE, "down", "-v", external=True, success_codes=[0, 1])


def _check_deployment(session: nox.Session, base: str) -> None:
    """Wait for /health at ``base``, run one rollout through it, and log the figures."""
    health = _wait_for(f"{base}/health", {"status": "healthy"}, timeout=120.0)
    session.log(f"healthy through the load balancer (answered by {health.get('worker')})")
    rollout_id = f"deploy-{int(time.time())}"
    init = {
        "rollout_id": rollout_id,
        "server_url": "http://trainer:9001",
        "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        "completion_params": {"model": "m"},
        "metadata": {"ground_truth": "5"},
    }
    started = time.monotonic()
    status, answer = _http("POST", f"{base}/v1/rollout/init", init)
    if status != 202:
        raise RuntimeError(f"init answered {status}: {answer}")
    session.log(f"init {rollout_id}: 202, {len(answer.get('tools') or [])} tools")
    done = _wait_for(f"{base}/v1/rollout/{rollout_id}", {"phase": "done"}, timeout=60.0)
    result = done.get("result") or {}
    session.log(
        f"rollout {rollout_id}: {result.get('status')} ({result.get('finish_reason')})"
        f" reward={result.get('reward')} turns={done.get('turns')} owner={done.get('owner')}"
        f" seconds={done.get('seconds')} (server) {time.monotonic() - started:.2f} (client)"
    )
    if result.get("status") != "COMPLETED":
        raise RuntimeError(f"the rollout did not complete: {done}")


def _http(method: str, url: str, body: object = None) -> tuple[int, dict[str, Any]]:
    """One request with a JSON body (or none); the status and the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key := os.environ.get("ROLLOUT_API_KEY"):
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"detail": raw.decode(errors="replace")}


def _wait_for(url: str, want: dict[str, str], timeout: float) -> dict[str, Any]:
    """GET ``url`` every half second until a ``200`` whose JSON has the ``want`` items."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = _http("GET", url)
        except (OSError, ValueError) as exc:  # not listening yet, reset, not JSON
            last = repr(exc)
        else:
            if status == 200 and want.items() <= body.items():
                return body
            last = f"{status}: {body}"
        time.sleep(0.5)
    raise RuntimeError(f"{url} not {want} within {timeout:g} s (last: {last})")
