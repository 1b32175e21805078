"""Developer sessions. Each installs the locked dependencies into its own venv with uv.

nox -s tests          # the test suite (same as `uv run pytest`)
nox -s lint           # ruff check + ruff format --check
nox -s typecheck      # mypy (strict)
nox -s demo           # the end-to-end demo (same as `uv run rollout demo`)
nox -s conformance -- --target URL [options]   # check any rollout server (docs/CONFORMANCE.md)
nox -s conformance    # without --target: serve ours on a free loopback port and check it
nox -s bench [-- --rollouts N --concurrency C]   # throughput, latency, CPU, memory figures
nox -s browser        # /docs in headless Chromium (needs: apt-get install chromium)
nox -s fuzz [-- --bodies N --seed S --concurrency C --report FILE]   # hostile bodies: 0 5xx
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

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
                    *("--port", "0", "--outbox", str(Path(tmp) / "outbox")),
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
    """Throughput, latency, CPU and memory of a server process; prints figures."""
    _sync(session)
    session.run("python", "benchmarks/rollouts.py", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """10,000 hostile bodies and headers against a server process; fails on any 5xx."""
    _sync(session)
    session.run("python", "tests/fuzzing/hostile.py", *session.posargs)


@nox.session
def browser(session: nox.Session) -> None:
    """The /docs page in a real headless Chromium (tests/browser)."""
    import shutil

    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        session.error("no chromium binary: apt-get install chromium")
    _sync(session)
    session.run("pytest", "-m", "browser", "tests/browser", *session.posargs)
