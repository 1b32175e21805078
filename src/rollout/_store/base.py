"""What every store keeps, and the operations every backend implements atomically.

One record per accepted rollout (docs/PROTOCOL.md §2.4 and §5.3)::

    claim ──► queued/running ──keep_result──► delivering ──acknowledged──► done
                   │                               └──refused for good──► lost
                   └── owner's lease expired: take_orphans() hands it to a live worker

- A **claim** is the one atomic admission of a ``rollout_id`` (and its idempotency key, in
  a namespace of its own): of two workers claiming the same id at once, one creates the
  record and the other is told what is there.
- Every record has an **owner**: the worker (``host:pid/nonce``) that runs or delivers it.
  A worker holds one **lease** in the store, renewed every ``lease_ttl / 3`` seconds; a
  rollout's lease is its owner's. When it expires (the worker was killed, its host lost)
  or is released (a clean stop), a live worker takes the rollout over with
  :meth:`Store.take_orphans` and delivers its one result.
- Writes by a worker that is no longer the owner are refused (:meth:`Store.keep_result`
  returns False), so a worker that stalled past its lease cannot deliver a second result.
- A finished record (done or lost) keeps the digest and key for ``idempotency_ttl`` seconds,
  then expires; its api key, messages and result body are dropped when it finishes.

Each backend (:mod:`.memory`, :mod:`.sqlite`, :mod:`.redis`) raises :class:`StoreError` for
anything that goes wrong in the store itself, and nothing else.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import AsyncIterator, Sequence

import attrs

from ..errors import RolloutError

__all__ = [
    "SHIELDED_CALL_SECONDS",
    "Claimed",
    "NewRollout",
    "Orphan",
    "Outcome",
    "Progress",
    "Store",
    "StoreError",
    "StoredPhase",
    "StoredRollout",
]


#: How long a shielded store call (one that must not be cut off by a shutdown) may take,
#: seconds; past it the caller goes on as if the store had failed.
SHIELDED_CALL_SECONDS = 30.0


class StoreError(RolloutError):
    """The store could not do what was asked (unreachable, corrupt, misconfigured)."""


class StoredPhase(enum.Enum):
    """Where a rollout is, as the store knows it (``GET /v1/rollout/{id}``)."""

    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"
    DONE = "done"
    LOST = "lost"


#: Phases in which a rollout has no result yet.
UNFINISHED_PHASES = (StoredPhase.QUEUED, StoredPhase.RUNNING)
#: Phases after which nothing more happens to a rollout.
FINISHED_PHASES = (StoredPhase.DONE, StoredPhase.LOST)


@attrs.frozen
class NewRollout:
    """What a claim writes: ids, the SHA-256 of the canonical init, where its result goes,
    and the init's messages (the trajectory an orphan's result carries when nothing more
    is known). ``api_key`` is kept until the result is acknowledged: its delivery needs it."""

    rollout_id: str
    digest: bytes
    idempotency_key: str | None
    server_url: str
    api_key: str | None = attrs.field(repr=False)
    messages: bytes = attrs.field(repr=False)  # JSON array


@attrs.frozen
class Claimed:
    """The answer to a claim: the record under that id or key (``rollout_id`` may differ
    from the claimed one when the idempotency key matched), and whether this claim made it."""

    rollout_id: str
    digest: bytes
    new: bool


@attrs.frozen
class Outcome:
    """The result's status, finish reason and reward (None: not scored)."""

    status: str
    finish_reason: str
    reward: float | None


@attrs.frozen
class Progress:
    """A snapshot of a running rollout, written at each lease renewal: turns and tokens so
    far, and the trajectory (JSON array) when it changed since the last snapshot."""

    rollout_id: str
    phase: StoredPhase
    turns: int
    prompt_tokens: int
    completion_tokens: int
    messages: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen
class StoredRollout:
    """A record as ``GET /v1/rollout/{id}`` reports it. Times: Unix seconds."""

    rollout_id: str
    phase: StoredPhase
    owner: str
    turns: int
    prompt_tokens: int
    completion_tokens: int
    created_at: float
    updated_at: float
    cancel_requested: bool
    outcome: Outcome | None


@attrs.frozen
class Orphan:
    """A rollout taken over from a worker whose lease ended (``lost_owner``).

    ``result`` is its result body when one was written but not acknowledged (deliver it as
    is); otherwise the rollout never finished and ``messages``/``turns``/tokens are the last
    snapshot, for the ``ERROR`` result the new owner makes."""

    rollout_id: str
    lost_owner: str
    server_url: str
    api_key: str | None = attrs.field(repr=False)
    digest: bytes
    idempotency_key: str | None
    result: bytes | None = attrs.field(repr=False)
    messages: bytes = attrs.field(repr=False)
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: float = 0.0


class Store(abc.ABC):
    """The operations of a store. Every method is atomic in the backend and raises
    :class:`StoreError` on failure; none blocks the event loop."""

    #: Whether records survive the process (False only for the memory store).
    durable: bool = True

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """The store for logs and ``/health``: kind and place, no password."""

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        """Connect and prepare (create tables) for the time of the ``async with`` block:
        the block is where every other method may be called."""
        yield

    @abc.abstractmethod
    async def claim(self, new: NewRollout, owner: str) -> Claimed:
        """Create the record of ``new`` owned by ``owner`` (phase queued) unless its
        ``rollout_id`` or ``idempotency_key`` is recorded already; atomic."""

    @abc.abstractmethod
    async def lookup(self, rollout_id: str, idempotency_key: str | None) -> Claimed | None:
        """The record under ``idempotency_key`` (first) or ``rollout_id``, unchanged; None
        when there is none (``Claimed.new`` is False)."""

    @abc.abstractmethod
    async def get(self, rollout_id: str) -> StoredRollout | None:
        """The record of ``rollout_id`` for status, or None."""

    @abc.abstractmethod
    async def save_progress(self, owner: str, snapshots: Sequence[Progress]) -> None:
        """Write the snapshots of rollouts ``owner`` still owns (others are skipped)."""

    @abc.abstractmethod
    async def keep_result(
        self,
        rollout_id: str,
        owner: str,
        result: bytes,
        outcome: Outcome,
        progress: Progress | None = None,
    ) -> bool:
        """Write the result ahead of its delivery (phase delivering), with the final turns
        and tokens of ``progress``, if ``owner`` still owns the rollout and it has no result
        yet; returns whether it was written."""

    @abc.abstractmethod
    async def finish(
        self, rollout_id: str, phase: StoredPhase, ttl: float, outcome: Outcome | None = None
    ) -> None:
        """End the record: ``phase`` done (acknowledged) or lost (refused for good). Drops
        the api key, messages and result; the record expires ``ttl`` seconds from now."""

    @abc.abstractmethod
    async def release_result(self, rollout_id: str, owner: str) -> None:
        """``owner`` gives up delivering a kept result for now (its trainer is down): any
        live worker may take it over and try again."""

    @abc.abstractmethod
    async def renew(self, owner: str, ttl: float) -> frozenset[str]:
        """Hold ``owner``'s lease for ``ttl`` more seconds; returns the ids of its unfinished
        rollouts whose cancellation was requested."""

    @abc.abstractmethod
    async def release(self, owner: str) -> None:
        """End ``owner``'s lease now (a clean stop): what it still owns is an orphan."""

    @abc.abstractmethod
    async def take_orphans(self, owner: str, limit: int) -> list[Orphan]:
        """Take over, for ``owner``, up to ``limit`` unfinished or undelivered rollouts whose
        owner's lease ended; atomic per rollout (two workers never take the same one)."""

    @abc.abstractmethod
    async def request_cancel(
        self, *, rollout_ids: Sequence[str] = (), prefix: str | None = None, all: bool = False
    ) -> list[str]:
        """Mark the unfinished rollouts named (ids, an id prefix, or all) for cancellation;
        returns the ids newly marked. Their owners learn it at their next renewal."""

    async def sweep(self) -> None:  # noqa: B027 - a no-op where the store expires by itself
        """Delete expired records (backends without their own expiry)."""
