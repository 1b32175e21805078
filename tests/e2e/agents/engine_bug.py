"""An agent module that plants a bug in the rollout engine itself (not in a rollout): the
first rollout to finish raises from the supervisor's bookkeeping. Served by a test to see
the server stop and exit non-zero instead of answering 500 forever."""

from __future__ import annotations

from typing import Any

from rollout._server.supervisor import Supervisor
from rollout.examples.calculator import agent


def _broken_forget(self: Supervisor, *args: Any) -> None:
    raise RuntimeError("a bug in the engine's bookkeeping")


Supervisor._forget = _broken_forget  # type: ignore[method-assign,assignment]

__all__ = ["agent"]
