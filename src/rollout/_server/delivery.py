"""Delivery: each result to its trainer, kept on disk until acknowledged (docs/PROTOCOL.md
§5.3 and §7.6).

:class:`Delivery` owns the outbox (when there is one) and the count of lost results. For one
result: :meth:`~Delivery.keep` writes it ahead (a shielded write: a shutdown cannot cut off
the one write that makes the result survive it), :meth:`~Delivery.deliver` posts it with
retries until a 2xx, then marks it delivered on disk (shielded too: a result acknowledged
just before a shutdown must not be delivered again after the restart). A result the
trainer refuses for good (a final 4xx, a refused address) is lost: logged, counted, and
removed from disk. One that is not acknowledged before the process stops stays on disk,
and :meth:`~Delivery.restore` hands it to the next start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from functools import partial

import trio

from .._trainer.client import TrainerClient, redact_url
from ..errors import TrainerError, TrainerHTTPError, TrainerTransportError
from .outbox import Delivered, Outbox, PendingResult

__all__ = ["Delivery"]

log = logging.getLogger("rollout.delivery")


class Delivery:
    """Posts results with ``trainer``; keeps them in ``outbox`` (None: in memory only)."""

    def __init__(self, trainer: TrainerClient, outbox: Outbox | None) -> None:
        self.trainer = trainer
        self.outbox = outbox
        #: Results never acknowledged: refused for good, or undeliverable without an outbox.
        self.lost_results = 0

    async def restore(
        self, keep_delivered_for: float
    ) -> tuple[list[PendingResult], list[Delivered]]:
        """What an earlier process left in the outbox: results to deliver (oldest first) and
        records of delivered rollouts younger than ``keep_delivered_for`` seconds."""
        if self.outbox is None:
            return [], []
        load = partial(self.outbox.load, keep_delivered_for=keep_delivered_for, now=time.time())
        pending, delivered = await trio.to_thread.run_sync(load)
        if pending:
            log.warning(
                "outbox %s: %d results from an earlier run, delivering them",
                self.outbox.directory,
                len(pending),
            )
        return pending, delivered

    async def keep(self, pending: PendingResult) -> bool:
        """Write the result to the outbox, if there is one; whether it is kept there."""
        if self.outbox is None:
            return False
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self.outbox.put, pending)
            except OSError as exc:
                log.error(
                    "outbox: cannot keep the result of rollout %s (%s); delivering without it",
                    pending.rollout_id,
                    exc,
                )
                return False
        return True

    async def deliver(self, pending: PendingResult, *, kept: bool) -> bool:
        """Deliver one result; ``kept``: it is in the outbox. Returns whether a 2xx
        acknowledged it. Never raises but :class:`trio.Cancelled`; cancelled mid-delivery
        (shutdown), a kept result stays in the outbox."""
        where = redact_url(pending.server_url)
        try:
            await self.trainer.deliver_bytes(
                pending.server_url, pending.result, api_key=pending.api_key
            )
        except TrainerError as exc:
            retryable = isinstance(exc, TrainerTransportError) or (
                isinstance(exc, TrainerHTTPError) and exc.retryable
            )
            if kept and retryable:
                log.error(
                    "rollout %s: result not delivered to %s yet (%s); kept in the outbox for the"
                    " next start",
                    pending.rollout_id,
                    where,
                    exc,
                )
                return False
            self.lost_results += 1
            log.error("rollout %s: result NOT delivered to %s: %s", pending.rollout_id, where, exc)
            if kept:
                await self._on_disk(self._remove, pending)
            return False
        log.debug("rollout %s: result delivered to %s", pending.rollout_id, where)
        if kept:
            await self._on_disk(self._mark_delivered, pending)
        return True

    async def forget(self, rollout_ids: Iterable[str]) -> None:
        """Remove the outbox records of rollouts whose idempotency TTL expired."""
        if self.outbox is None:
            return
        for rollout_id in rollout_ids:
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(self.outbox.remove, rollout_id)
                except OSError as exc:
                    log.error("outbox: cannot remove an expired record: %s", exc)

    def _remove(self, pending: PendingResult) -> None:
        assert self.outbox is not None
        self.outbox.remove(pending.rollout_id)

    def _mark_delivered(self, pending: PendingResult) -> None:
        assert self.outbox is not None
        self.outbox.mark_delivered(
            Delivered(pending.rollout_id, pending.digest, pending.idempotency_key, time.time())
        )

    async def _on_disk(
        self, change: Callable[[PendingResult], None], pending: PendingResult
    ) -> None:
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(change, pending)
            except OSError as exc:  # delivered twice after a restart at worst: same payload
                log.error("outbox: cannot update rollout %s: %s", pending.rollout_id, exc)
