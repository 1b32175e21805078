"""Developer sessions. Each installs the locked dependencies into its own venv with uv.

nox -s tests          # the test suite (same as `uv run pytest`)
nox -s lint           # ruff check + ruff format --check
nox -s typecheck      # mypy (strict)
nox -s demo           # the end-to-end demo (same as `uv run rollout demo`)
"""

from __future__ import annotations

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


@nox.session
def demo(session: nox.Session) -> None:
    _sync(session)
    session.run("rollout", "demo", *session.posargs)
