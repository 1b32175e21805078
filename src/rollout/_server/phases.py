"""Where the accepted rollouts are: a phase each, counted with the bytes they hold.

A rollout moves QUEUED → RUNNING → DELIVERING → DONE in the worker that runs it (one taken
over from a stopped worker starts at DELIVERING). :class:`Tally` counts
rollouts and bytes per phase for admission's bounds and ``/health``, and keeps two events
for the drain: *idle* (nothing queued, running or delivering) and *runs ended* (nothing
queued or running: every result exists).
"""

from __future__ import annotations

import enum
from collections import Counter

import trio

__all__ = ["Phase", "Tally"]


class Phase(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"
    DONE = "done"


#: Phases of a rollout whose result does not exist yet.
UNFINISHED = (Phase.QUEUED, Phase.RUNNING)
#: Phases of a rollout whose result was not acknowledged (or given up on) yet.
ACTIVE = (Phase.QUEUED, Phase.RUNNING, Phase.DELIVERING)


class Tally:
    """Counts of rollouts and of the bytes they hold, per :class:`Phase`."""

    def __init__(self) -> None:
        self._counts: Counter[Phase] = Counter()
        self._bytes: Counter[Phase] = Counter()
        self.idle = trio.Event()
        self.idle.set()
        self.runs_ended = trio.Event()
        self.runs_ended.set()

    def count(self, *phases: Phase) -> int:
        return sum(self._counts[phase] for phase in phases)

    def held(self, *phases: Phase) -> int:
        """Bytes held by the rollouts in ``phases``."""
        return sum(self._bytes[phase] for phase in phases)

    def add(self, phase: Phase, size: int) -> None:
        self._counts[phase] += 1
        self._bytes[phase] += size
        if phase in ACTIVE and self.idle.is_set():
            self.idle = trio.Event()
        if phase in UNFINISHED and self.runs_ended.is_set():
            self.runs_ended = trio.Event()

    def move(self, old: Phase, old_size: int, new: Phase, new_size: int) -> None:
        self._counts[old] -= 1
        self._bytes[old] -= old_size
        self.add(new, new_size)
        if self.count(*UNFINISHED) == 0:
            self.runs_ended.set()
        if self.count(*ACTIVE) == 0:
            self.idle.set()
