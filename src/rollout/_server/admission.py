"""Admission: who gets in (docs/PROTOCOL.md §2.4).

:meth:`Admission.admit` decides each init, against this worker's bounds and the shared
store's records (:mod:`rollout._store`), which remember every ``rollout_id`` (and its
``idempotency_key``, in a namespace of its own) from its ``202`` until ``idempotency_ttl``
seconds after its result was acknowledged or given up on:

- the same canonical body as a record → the record's ``202`` again, nothing starts, on
  whichever worker or host the first one ran;
- a different body under a recorded ``rollout_id`` or ``idempotency_key`` →
  :class:`Conflict` (``409``), naming neither the other rollout nor its body;
- draining for shutdown, the engine failed, or the store unreachable → :class:`Draining`
  or :class:`Unavailable` (``503``);
- past a bound of this worker → :class:`Overloaded` (``429`` with ``Retry-After``):
  ``max_concurrent + max_queued`` rollouts unfinished, their init bodies holding
  ``max_admitted_bytes``, or results waiting for delivery past ``max_undelivered_results``
  / ``_bytes`` (kept apart from the others, so a dead trainer cannot starve admission).

The claim in the store is atomic: two workers receiving the same init at once start one
run. The supervisor starts what is admitted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Mapping
from typing import TypeVar

import trio

from .. import _json
from .._json import JSON
from .._store import SHIELDED_CALL_SECONDS, Claimed, NewRollout, Store, StoreError
from .._wire import codec
from .._wire.models import InitRequest, InitResponse
from ..config import ServerConfig
from .lifecycle import RunControl
from .phases import UNFINISHED, Phase, Tally

__all__ = ["Admission", "AdmissionError", "Conflict", "Draining", "Overloaded", "Unavailable"]

T = TypeVar("T")


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


class Unavailable(AdmissionError):
    """The store cannot be reached, so nothing can be admitted safely (``503``)."""

    status = 503
    retry_after = 2.0


class Admission:
    """The bounds of one worker and its claims in ``store`` as ``owner``."""

    def __init__(
        self,
        config: ServerConfig,
        tools: tuple[Mapping[str, JSON], ...],
        store: Store,
        owner: str,
    ) -> None:
        """``tools``: the agent's tool schemas, the ``tools`` of every ``202``."""
        self.config = config
        self.store = store
        self.owner = owner
        self.tally = Tally()
        self.slots = trio.CapacityLimiter(config.max_concurrent_rollouts)
        self._tools = tools
        #: Why nothing is admitted any more (draining, engine failed), or None.
        self.closed: str | None = None

    def response(self, rollout_id: str) -> InitResponse:
        """The ``202`` body of ``rollout_id``."""
        return InitResponse(rollout_id, self._tools)

    async def admit(self, request: InitRequest, size: int) -> tuple[str, RunControl | None]:
        """Admit ``request`` (an init body of ``size`` bytes). Returns the ``rollout_id`` of
        its record and, when its rollout must start here, the handle to run it with (None:
        answered from a record). Raises :class:`Conflict`, :class:`Draining`,
        :class:`Overloaded` or :class:`Unavailable`."""
        digest = hashlib.sha256(codec.canonical_init(request)).digest()
        try:
            control = self.reserve(size)
        except AdmissionError:
            # A re-sent init gets its 202 even now; only a new rollout is refused.
            found = await self._store_call(
                self.store.lookup(request.rollout_id, request.idempotency_key)
            )
            if found is None:
                raise
            return self._same(found, digest), None
        new = NewRollout(
            request.rollout_id,
            digest,
            request.idempotency_key,
            request.server_url,
            request.api_key,
            _json.dumps([codec.unstructure_message(m) for m in request.messages]),
        )
        claimed = None
        try:
            # Shielded: a claim made in the store must be run, even if the caller left.
            with trio.move_on_after(SHIELDED_CALL_SECONDS, shield=True):
                claimed = await self._store_call(self.store.claim(new, self.owner))
        except BaseException:
            control.enter(Phase.DONE)
            raise
        if claimed is None:
            control.enter(Phase.DONE)
            raise Unavailable("the rollout store did not answer in time; retry later")
        if not claimed.new:
            control.enter(Phase.DONE)
            return self._same(claimed, digest), None
        return claimed.rollout_id, control

    def _same(self, found: Claimed, digest: bytes) -> str:
        if found.digest != digest:
            what = "rollout_id or idempotency_key"
            raise Conflict(
                f"this {what} was already used by a different init body; a rollout runs"
                " once: send the same body to get its 202 again, or use new ids"
            )
        return found.rollout_id

    @staticmethod
    async def _store_call(call: Awaitable[T]) -> T:
        try:
            return await call
        except StoreError as exc:
            raise Unavailable(f"the rollout store is unavailable ({exc}); retry later") from exc

    def reserve(self, size: int) -> RunControl:
        """A run handle for a new rollout holding ``size`` bytes of init, counted at once
        (so that concurrent inits cannot pass a bound together). Raises :class:`Draining`
        or :class:`Overloaded`."""
        self.check(size)
        return self.control(size=size)

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

    def control(self, *, size: int = 0, phase: Phase = Phase.QUEUED) -> RunControl:
        """A run handle counted in this admission's tally, bounded by its slots: for a new
        rollout, one taken over from another worker, or the synchronous variant."""
        return RunControl(
            self.tally, self.config.rollout_timeout, size=size, phase=phase, slots=self.slots
        )
