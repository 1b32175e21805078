"""Delivery: each result to its trainer, kept in the store until acknowledged
(docs/PROTOCOL.md §5.3 and §7.6).

For one result: :meth:`Delivery.keep` writes it ahead into the store (shielded: a shutdown
cannot cut off the one write that makes the result survive it) — unless another worker took
the rollout over meanwhile, in which case this worker's result is dropped and the new owner
delivers the only one. :meth:`Delivery.deliver` posts it with retries until a 2xx, then
finishes the record (shielded too: a result acknowledged just before a shutdown must not be
delivered again). A result the trainer refuses for good (a final 4xx, a refused address) is
lost: logged, counted, its record ends as "lost". One whose trainer stays unreachable
through every retry is released in a durable store, so that a live worker (this one
included) takes it over and tries again later; in the memory store it is lost. One not
acknowledged when the process stops stays in the store for whoever takes it over.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable

import attrs
import trio

from .._store import SHIELDED_CALL_SECONDS, Outcome, Progress, Store, StoredPhase, StoreError
from .._trainer.client import TrainerClient
from .._trainer.transport import redact_url
from ..errors import TrainerError, TrainerHTTPError, TrainerTransportError

__all__ = ["Delivery", "Kept", "PendingResult"]

log = logging.getLogger("rollout.delivery")


@attrs.frozen
class PendingResult:
    """A result waiting for its acknowledgement: where it goes, with which key, and the
    encoded body of ``POST {server_url}/v1/rollout/completed`` (strict UTF-8 JSON)."""

    rollout_id: str
    server_url: str
    result: bytes = attrs.field(repr=False)
    api_key: str | None = attrs.field(default=None, repr=False)


class Kept(enum.Enum):
    """What :meth:`Delivery.keep` did with a result."""

    KEPT = "kept"  # in the store: it survives this process
    SUPERSEDED = "superseded"  # another worker owns the rollout now: drop this result
    UNKEPT = "unkept"  # the store failed: deliver it anyway, from memory


class Delivery:
    """Posts results with ``trainer``; keeps them in ``store`` as ``owner``; finished
    records are remembered for ``ttl`` seconds (the idempotency TTL)."""

    def __init__(self, trainer: TrainerClient, store: Store, owner: str, ttl: float) -> None:
        self.trainer = trainer
        self.store = store
        self.owner = owner
        self.ttl = ttl
        #: Results never acknowledged: refused for good, or undeliverable without a store.
        self.lost_results = 0
        #: Results dropped because another worker had taken their rollout over.
        self.superseded_results = 0

    async def keep(
        self, pending: PendingResult, outcome: Outcome, progress: Progress | None = None
    ) -> Kept:
        """Write the result ahead of its delivery, with its final ``progress``."""
        kept: bool | None = None
        with trio.move_on_after(SHIELDED_CALL_SECONDS, shield=True):
            try:
                kept = await self.store.keep_result(
                    pending.rollout_id, self.owner, pending.result, outcome, progress
                )
            except StoreError as exc:
                log.error(
                    "rollout %s: cannot keep its result in the store (%s)", pending.rollout_id, exc
                )
        if kept is None:  # failed, or no answer in time: deliver it all the same
            log.error("rollout %s: delivering its result from memory", pending.rollout_id)
            return Kept.UNKEPT
        if not kept:
            self.superseded_results += 1
            log.warning(
                "rollout %s: another worker took it over (this one held no lease in time);"
                " its result is delivered by that worker, this one is dropped",
                pending.rollout_id,
            )
            return Kept.SUPERSEDED
        return Kept.KEPT

    async def deliver(self, pending: PendingResult, outcome: Outcome | None, *, kept: bool) -> bool:
        """Deliver one result; ``kept``: it is in the store. Returns whether a 2xx
        acknowledged it. Never raises but :class:`trio.Cancelled`; cancelled mid-delivery
        (shutdown), a kept result stays in the store."""
        where = redact_url(pending.server_url)
        try:
            await self.trainer.deliver_bytes(
                pending.server_url, pending.result, api_key=pending.api_key
            )
        except TrainerError as exc:
            retryable = isinstance(exc, TrainerTransportError) or (
                isinstance(exc, TrainerHTTPError) and exc.retryable
            )
            if kept and retryable and self.store.durable:
                log.error(
                    "rollout %s: result not delivered to %s yet (%s); kept in the store, to be"
                    " tried again",
                    pending.rollout_id,
                    where,
                    exc,
                )
                await self._shielded(self.store.release_result(pending.rollout_id, self.owner))
                return False
            self.lost_results += 1
            log.error("rollout %s: result NOT delivered to %s: %s", pending.rollout_id, where, exc)
            await self._shielded(
                self.store.finish(pending.rollout_id, StoredPhase.LOST, self.ttl, outcome)
            )
            return False
        log.debug("rollout %s: result delivered to %s", pending.rollout_id, where)
        await self._shielded(
            self.store.finish(pending.rollout_id, StoredPhase.DONE, self.ttl, outcome)
        )
        return True

    async def _shielded(self, change: Awaitable[None]) -> None:
        with trio.move_on_after(SHIELDED_CALL_SECONDS, shield=True):
            try:
                await change
            except StoreError as exc:  # delivered twice at worst: the same payload
                log.error("store: cannot record a delivery: %s", exc)
