"""Admission: who gets in, and what is remembered of who got in (docs/PROTOCOL.md §2.4).

:class:`Admission` keeps a record per ``rollout_id`` (with its ``idempotency_key``, in a
namespace of its own) from the ``202`` until ``idempotency_ttl`` seconds after its result
was acknowledged or given up on, and decides each init:

- the same canonical body as a record → the record's ``202`` again, nothing starts;
- a different body under a recorded ``rollout_id`` or ``idempotency_key`` →
  :class:`Conflict` (``409``), naming neither the other rollout nor its body;
- draining for shutdown, or the engine failed → :class:`Draining` (``503``);
- past a bound → :class:`Overloaded` (``429`` with ``Retry-After``): ``max_concurrent +
  max_queued`` rollouts unfinished, their init bodies holding ``max_admitted_bytes``, or
  results waiting for delivery past ``max_undelivered_results`` / ``_bytes`` (kept apart from
  the others, so a dead trainer cannot starve admission).

Pure bookkeeping: no I/O, no tasks. The supervisor starts what is admitted.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import attrs
import trio

from .._json import JSON
from .._wire import codec
from .._wire.models import InitRequest, InitResponse
from ..config import ServerConfig
from .lifecycle import RunControl
from .phases import UNFINISHED, Phase, Tally

__all__ = ["Admission", "AdmissionError", "Conflict", "Draining", "Overloaded", "Record"]


class AdmissionError(Exception):
    """An init that is valid but not admitted; ``status`` is the HTTP status to answer."""

    status = 503
    retry_after: float | None = None


class Conflict(AdmissionError):
    """The ``rollout_id`` or ``idempotency_key`` is in use by a different init (``409``)."""

    status = 409


class Overloaded(AdmissionError):
    """A bound is reached (``429`` with ``Retry-After``): backpressure, not failure."""

    status = 429
    retry_after = 1.0


class Draining(AdmissionError):
    """The server is shutting down and admits nothing new (``503``)."""

    status = 503
    retry_after = 5.0


@attrs.define(eq=False)
class Record:
    """What is remembered of one admitted rollout: the SHA-256 of its canonical init, its
    ``202`` body, its idempotency key, and the handle that steers its run."""

    digest: bytes
    response: InitResponse
    control: RunControl
    idempotency_key: str | None = None


class Admission:
    """The records and the bounds of one server (see the module docstring)."""

    def __init__(self, config: ServerConfig, tools: tuple[Mapping[str, JSON], ...]) -> None:
        """``tools``: the agent's tool schemas, the ``tools`` of every ``202``."""
        self.config = config
        self.tally = Tally()
        self.slots = trio.CapacityLimiter(config.max_concurrent_rollouts)
        self._tools = tools
        self._records: dict[str, Record] = {}  # rollout_id -> record
        self._keys: dict[str, str] = {}  # idempotency_key -> rollout_id
        self._finished: OrderedDict[str, float] = OrderedDict()  # rollout_id -> done at
        #: Why nothing is admitted any more (draining, engine failed), or None.
        self.closed: str | None = None

    def admit(self, request: InitRequest, size: int) -> tuple[Record, bool]:
        """The record for ``request`` (an init body of ``size`` bytes), and whether it is
        new, so that its rollout must start. Raises :class:`Conflict`, :class:`Draining`
        or :class:`Overloaded`."""
        self.forget_expired()
        digest = hashlib.sha256(codec.canonical_init(request)).digest()
        record, what = None, "rollout_id"
        if request.idempotency_key is not None:
            owner = self._keys.get(request.idempotency_key)
            record, what = self._records.get(owner or ""), "idempotency_key"
        if record is None:
            record, what = self._records.get(request.rollout_id), "rollout_id"
        if record is not None:
            if record.digest != digest:
                raise Conflict(
                    f"this {what} was already used by a different init body; a rollout runs"
                    " once: send the same body to get its 202 again, or use new ids"
                )
            return record, False
        self.check(size)
        return self.remember(request.rollout_id, digest, request.idempotency_key, size=size), True

    def check(self, size: int) -> None:
        """Raise :class:`Draining` or :class:`Overloaded` unless a new rollout holding
        ``size`` bytes of init may start now."""
        if self.closed is not None:
            raise Draining(self.closed)
        config, tally = self.config, self.tally
        unfinished = tally.count(*UNFINISHED)
        limit = config.max_concurrent_rollouts + config.max_queued_rollouts
        if unfinished >= limit:
            raise Overloaded(f"{unfinished} rollouts are unfinished (limit {limit}); retry later")
        held = tally.held(*UNFINISHED)
        if held and held + size > config.max_admitted_bytes:
            raise Overloaded(
                f"unfinished rollouts hold {held} bytes of inits (limit"
                f" {config.max_admitted_bytes}); retry later"
            )
        waiting = tally.count(Phase.DELIVERING)
        if waiting >= config.max_undelivered_results:
            raise Overloaded(
                f"{waiting} results wait for their trainers' acknowledgement (limit"
                f" {config.max_undelivered_results}); retry later"
            )
        if tally.held(Phase.DELIVERING) >= config.max_undelivered_bytes:
            raise Overloaded(
                f"results waiting for acknowledgement hold {tally.held(Phase.DELIVERING)}"
                f" bytes (limit {config.max_undelivered_bytes}); retry later"
            )

    def remember(
        self,
        rollout_id: str,
        digest: bytes,
        idempotency_key: str | None,
        *,
        phase: Phase = Phase.QUEUED,
        size: int = 0,
        done_at: float | None = None,
    ) -> Record:
        """Make (and keep) the record of a rollout: a new one, or one an earlier process
        left in the outbox (``phase`` DELIVERING, or DONE at Trio time ``done_at``)."""
        control = self.control(size=size, phase=phase)
        record = Record(digest, InitResponse(rollout_id, self._tools), control, idempotency_key)
        self._records[rollout_id] = record
        if idempotency_key is not None:
            self._keys[idempotency_key] = rollout_id
        if phase is Phase.DONE:
            self._finished[rollout_id] = trio.current_time() if done_at is None else done_at
        return record

    def control(self, *, size: int = 0, phase: Phase = Phase.QUEUED) -> RunControl:
        """A run handle counted in this admission's tally, bounded by its slots: for a new
        rollout, or for one with no record (the synchronous variant)."""
        return RunControl(
            self.tally, self.config.rollout_timeout, size=size, phase=phase, slots=self.slots
        )

    def finish(self, rollout_id: str, record: Record) -> None:
        """The rollout's result was acknowledged or given up on: keep its record for the
        idempotency TTL from now."""
        record.control.enter(Phase.DONE)
        self._finished[rollout_id] = trio.current_time()
        self._finished.move_to_end(rollout_id)

    def forget_expired(self) -> list[str]:
        """Drop records finished more than ``idempotency_ttl`` seconds ago; returns their
        ``rollout_id``s (oldest first)."""
        horizon = trio.current_time() - self.config.idempotency_ttl
        expired: list[str] = []
        while self._finished:
            rollout_id, done_at = next(iter(self._finished.items()))
            if done_at > horizon:
                break
            del self._finished[rollout_id]
            record = self._records.pop(rollout_id, None)
            if record is not None and record.idempotency_key is not None:
                self._keys.pop(record.idempotency_key, None)
            expired.append(rollout_id)
        return expired

    def record(self, rollout_id: str) -> Record | None:
        """The record of ``rollout_id``, or None (never admitted, or forgotten)."""
        self.forget_expired()
        return self._records.get(rollout_id)

    def matching(
        self, *, rollout_ids: Sequence[str] = (), prefix: str | None = None, all: bool = False
    ) -> list[tuple[str, Record]]:
        """The records named by ids, by an id prefix, or all of them."""
        self.forget_expired()
        if all:
            return list(self._records.items())
        if prefix is not None:
            return [(i, r) for i, r in self._records.items() if i.startswith(prefix)]
        return [(i, self._records[i]) for i in dict.fromkeys(rollout_ids) if i in self._records]

    def in_phase(self, *phases: Phase) -> list[Record]:
        """The records of rollouts now in ``phases``."""
        return [r for r in self._records.values() if r.control.phase in phases]

    def sort_finished(self) -> None:
        """Order finished records by when they finished (after restoring older ones)."""
        self._finished = OrderedDict(sorted(self._finished.items(), key=lambda item: item[1]))
