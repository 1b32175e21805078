"""Leases: this worker's hold on its rollouts in the shared store, and the take-over of the
rollouts of workers whose lease ended (docs/PROTOCOL.md §5.3).

Every ``lease_ttl / 3`` seconds :meth:`Leases.run` renews the lease (one write, whatever
the number of rollouts: a rollout's lease is its owner's), learns which of this worker's
rollouts were cancelled through another worker, writes a snapshot of each rollout that made
turns since (turns, tokens, the trajectory: what an orphan's result will carry), and —
unless draining — takes over rollouts whose owner's lease ended, handing each to
``adopt``. A worker that dies stops renewing; ``lease_ttl`` seconds later the survivors
take its rollouts over. A worker that stops cleanly releases its lease, so that what it
leaves is taken over at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping

import trio

from .. import _json
from .._store import Orphan, Progress, Store, StoredPhase, StoreError
from .._wire import codec
from .lifecycle import RunControl
from .phases import Phase

__all__ = ["Leases", "new_worker_id", "progress_of"]

log = logging.getLogger("rollout.leases")

#: Rollouts taken over per renewal at most (the rest wait for the next one, or for others).
_TAKE_PER_ROUND = 256
#: Trajectories encoded per renewal at most (each is JSON encoded on the event loop).
_ENCODE_PER_ROUND = 256
#: Expired records are swept every this many renewals.
_SWEEP_EVERY = 20


def new_worker_id() -> str:
    """A worker's name in the store and in status: ``host:pid/nonce`` (the nonce tells two
    lives of one pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}/{secrets.token_hex(3)}"


def progress_of(rollout_id: str, control: RunControl, *, messages: bool) -> Progress | None:
    """A snapshot of a rollout this worker runs (None: it has not started), with its
    trajectory encoded when ``messages`` and JSON can carry it."""
    ctx = control.context
    if ctx is None:
        return None
    encoded = None
    if messages:
        try:
            encoded = _json.dumps([codec.unstructure_message(m) for m in ctx.messages])
        except _json.JSONError:
            encoded = None  # agent code put something JSON cannot carry: counts only
    return Progress(
        rollout_id,
        StoredPhase.RUNNING if control.phase is Phase.RUNNING else StoredPhase.QUEUED,
        ctx.turns,
        ctx.prompt_tokens,
        ctx.completion_tokens,
        encoded,
    )


class Leases:
    """Keeps ``owner``'s lease in ``store`` for the rollouts in ``local``.

    ``adopt`` starts the delivery of a rollout taken over; ``room`` says how many more
    this worker may take now; ``draining`` whether it takes any.
    """

    def __init__(
        self,
        store: Store,
        owner: str,
        ttl: float,
        local: Mapping[str, RunControl],
        *,
        adopt: Callable[[Orphan], None],
        room: Callable[[], int],
        draining: Callable[[], bool],
    ) -> None:
        self.store = store
        self.owner = owner
        self.ttl = ttl
        self._local = local
        self._adopt = adopt
        self._room = room
        self._draining = draining
        #: Rollouts that made a turn since their last snapshot, in order (:meth:`turned`).
        self._turned: dict[str, None] = {}
        self._failing = False
        #: Rollouts taken over from other workers by this one.
        self.taken_over = 0

    async def acquire(self) -> None:
        """Hold the lease before anything is claimed under it. Raises StoreError."""
        await self.store.renew(self.owner, self.ttl)

    async def release(self) -> None:
        """End the lease now (a clean stop); never raises."""
        with trio.move_on_after(5.0) as scope:
            scope.shield = True
            try:
                await self.store.release(self.owner)
            except StoreError as exc:
                log.error("store: cannot release this worker's lease (%s)", exc)

    async def run(self) -> None:
        """Renew, snapshot, take over; every ``ttl / 3`` seconds, until cancelled."""
        rounds = 0
        while True:
            await trio.sleep(self.ttl / 3)
            rounds += 1
            try:
                await self.renew_once(sweep=rounds % _SWEEP_EVERY == 0)
            except StoreError as exc:
                if not self._failing:
                    log.error("store: cannot renew this worker's lease (%s); retrying", exc)
                self._failing = True
            else:
                if self._failing:
                    log.warning("store: the lease is renewed again")
                self._failing = False

    async def renew_once(self, *, sweep: bool = False) -> None:
        """One round (see the module docstring). Raises StoreError."""
        for rollout_id in await self.store.renew(self.owner, self.ttl):
            control = self._local.get(rollout_id)
            if control is not None and control.cancel():
                log.info("rollout %s: cancelled on request (through the store)", rollout_id)
        await self.store.save_progress(self.owner, self._snapshots())
        if not self._draining() and (room := min(self._room(), _TAKE_PER_ROUND)) > 0:
            for orphan in await self.store.take_orphans(self.owner, room):
                self.taken_over += 1
                self._adopt(orphan)
        if sweep:
            await self.store.sweep()

    def turned(self, rollout_id: str) -> None:
        """A rollout of this worker made a turn: snapshot it at the next renewal."""
        self._turned[rollout_id] = None

    def _snapshots(self) -> list[Progress]:
        """Snapshots (with the trajectory) of the rollouts that made turns since the last
        round (:meth:`turned`), at most ``_ENCODE_PER_ROUND`` of them (the others wait for
        the next round): each is encoded on the event loop and written in one transaction.
        A rollout still at turn 0 needs none: the store has its init's messages from the
        claim. The work is per rollout that turned, not per rollout held: a scan of 19,000
        every renewal stalled the event loop for tens of milliseconds
        (docs/PERFORMANCE.md)."""
        snapshots: list[Progress] = []
        turned, self._turned = self._turned, {}
        for rollout_id in turned:
            if len(snapshots) >= _ENCODE_PER_ROUND:
                self._turned[rollout_id] = None
                continue
            control = self._local.get(rollout_id)
            if control is None or control.phase not in (Phase.QUEUED, Phase.RUNNING):
                continue
            if (snapshot := progress_of(rollout_id, control, messages=True)) is not None:
                snapshots.append(snapshot)
        return snapshots
