"""An agent module that plants a bug in the rollout engine itself (not in a rollout): the
first rollout to finish raises from the supervisor's bookkeeping. Served by a test to see
the server stop and exit non-zero instead of answering 500 forever."""

from __future__ import annotations

from typing import Any

from rollout._server.admission import Admission
from rollout.examples.calculator import agent


def _broken_finish(self: Admission, *args: Any) -> None:
    raise RuntimeError("a bug in the engine's bookkeeping")


Admission.finish = _broken_finish  # type: ignore[method-assign,assignment]

__all__ = ["agent"]
