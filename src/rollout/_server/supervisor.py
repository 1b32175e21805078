"""The supervisor: the nursery every rollout runs in, the drain, and health.

One :class:`Supervisor` per worker composes :class:`~rollout._server.admission.Admission`
(who gets in, claimed in the shared store), :class:`~rollout._server.delivery.Delivery`
(results to trainers) and :class:`~rollout._server.leases.Leases` (this worker's hold on
its rollouts, and the take-over of stopped workers' ones), and owns only what joins them:
the nursery (no rollout outlives it), shutdown and ``/health``. One rollout enters each
module once::

    app → admission.admit() → supervisor nursery → lifecycle.run_rollout() → delivery
                                      ↑
        leases: a stopped worker's rollout → lifecycle.orphan_result() → delivery

Nothing one rollout does can end the nursery that runs the others: each rollout task
catches everything but cancellation (a bug becomes an ``ERROR`` result and counts in
``internal_errors``). Should the nursery fail anyway, :attr:`Supervisor.failed` is set,
``/health`` says "failed", admission closes, and the server stops and exits non-zero
(docs/PROTOCOL.md §3).

Shutdown (:meth:`Supervisor.drain`): stop admitting; let rollouts finish for up to
``drain_timeout`` seconds; cancel the rest, which end with ``finish_reason`` "shutdown"; give
their deliveries up to ``shutdown_delivery_timeout`` seconds; then stop. A second signal
(:meth:`Supervisor.hurry`) ends the waiting at once.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
import trio

from .. import _threads
from .._store import Orphan, Store, StoreError, open_store
from .._trace import NO_TRACE, Trace, TraceSink
from .._trainer.client import SYNC_COMPLETIONS_PATH, TrainerClient
from .._wire.models import InitRequest, InitResponse, RolloutResult
from ..agent import Agent
from ..config import ServerConfig
from .admission import Admission
from .delivery import Delivery, Kept, PendingResult
from .leases import Leases, new_worker_id, progress_of
from .lifecycle import (
    RunControl,
    encode_result,
    internal_error_result,
    log_result,
    orphan_result,
    outcome_of,
    run_rollout,
)
from .metrics import ServerMetrics
from .phases import ACTIVE, UNFINISHED, Phase

__all__ = ["Supervisor"]

log = logging.getLogger("rollout.supervisor")


class Supervisor:
    """Admits rollouts and runs each in its own task in the supervisor's nursery.

    Use :meth:`run` as a service: ``await nursery.start(supervisor.run)``; it returns once
    :meth:`drain` finished (or the engine failed). ``store`` (default: the one
    ``config.store`` names) holds the records this worker shares with others.
    """

    def __init__(
        self,
        agent: Agent,
        trainer: TrainerClient,
        config: ServerConfig,
        *,
        metrics: ServerMetrics | None = None,
        store: Store | None = None,
    ) -> None:
        self.agent = agent
        self.trainer = trainer
        self.config = config
        self.metrics = metrics
        self.store = store or open_store(config.store)
        self.owner = new_worker_id()
        self.admission = Admission(config, agent.tool_schemas, self.store, self.owner)
        self.delivery = Delivery(trainer, self.store, self.owner, config.idempotency_ttl)
        #: The rollouts this worker runs or delivers now, by rollout_id.
        self.local: dict[str, RunControl] = {}
        self.leases = Leases(
            self.store,
            self.owner,
            config.lease_ttl,
            self.local,
            adopt=self._adopt,
            room=self._room,
            draining=lambda: self._draining,
        )
        self._sync_trainer = trainer.for_chat_path(SYNC_COMPLETIONS_PATH)
        self.traces = (
            None
            if config.trace_dir is None
            else TraceSink(config.trace_dir, secrets=[config.api_key])
        )
        self._tool_limiter = trio.CapacityLimiter(config.max_tool_threads)
        self._sync_controls: set[RunControl] = set()  # synchronous rollouts in flight
        self._nursery: trio.Nursery | None = None
        # The context rollout tasks start in (set with the nursery): the supervisor's own,
        # not the init handler's, whose copy would keep that request's Quart objects alive
        # for the whole rollout.
        self._context: contextvars.Context | None = None
        self._draining = False
        self._drained = trio.Event()
        self._stopped = trio.Event()  # run() returned: the lease released, the store closed
        self._hurried = False
        self._wait_scope: trio.CancelScope | None = None
        self.completed_rollouts = 0
        self.internal_errors = 0
        #: Set when the engine stopped for a reason other than a drain
        #: (:class:`~rollout.errors.EngineFailure`); :attr:`failure` says why.
        self.failed = trio.Event()
        self.failure: BaseException | None = None

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect the store, hold the lease, and own the rollout nursery until
        :meth:`drain` completes; then release the lease. Raises StoreError when the store
        cannot be used at start; should the nursery fail later, record why in
        :attr:`failure`, set :attr:`failed` and return."""
        try:
            async with self.store.connected():
                await self._serve(task_status)
        finally:
            self._stopped.set()

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        """Hold the lease and own the nursery (see :meth:`run`); the store is connected."""
        await self.leases.acquire()
        started = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._context = contextvars.copy_context()
                if self.traces is not None:
                    await nursery.start(self.traces.run)
                nursery.start_soon(self.leases.run, name="lease")
                nursery.start_soon(self.trainer.keep_connections_pruned, name="idle connections")
                if self.metrics is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                    nursery.start_soon(self.metrics.keep_observing)
                task_status.started()
                started = True
                await self._renew_quietly()  # take over what a stop left, now
                await self._drained.wait()
                nursery.cancel_scope.cancel()  # only stragglers past every grace period
        except* Exception as group:
            if not started:
                raise
            self.failure = group
            log.critical("the rollout engine stopped", exc_info=group)
            self.admission.closed = "the rollout engine stopped; the server is shutting down"
            self._drained.set()
            self.failed.set()
        await self.leases.release()

    async def _renew_quietly(self) -> None:
        try:
            await self.leases.renew_once()
        except StoreError as exc:
            log.error("store: %s", exc)

    def _room(self) -> int:
        """How many rollouts of stopped workers this one may take over now."""
        return self.config.max_undelivered_results - self.admission.tally.count(Phase.DELIVERING)

    # ------------------------------------------------------------------ one rollout

    async def admit(self, request: InitRequest, size: int = 0) -> tuple[InitResponse, bool]:
        """Admit ``request`` (an init body of ``size`` bytes) and start its rollout; returns
        the ``202`` body and whether a rollout started (docs/PROTOCOL.md §2.4). Raises
        :class:`~rollout._server.admission.AdmissionError`. Must be called while :meth:`run`
        is running."""
        nursery, context = self._nursery, self._context
        if nursery is None or context is None:
            raise RuntimeError("Supervisor.admit() called before Supervisor.run() started")
        rollout_id, control = await self.admission.admit(request, size)
        if control is not None:
            self.local[rollout_id] = control
            name = f"rollout {request.rollout_id}"
            context.run(lambda: nursery.start_soon(self._rollout, request, control, name=name))
        return self.admission.response(rollout_id), control is not None

    async def _rollout(self, request: InitRequest, control: RunControl) -> None:
        """Run one rollout, keep its result, deliver it. Never raises but Cancelled: a bug
        here is logged and counted, and the rollout still gets a result if it can."""
        trace = self._trace(request)
        structlog.contextvars.bind_contextvars(rollout_id=request.rollout_id)  # this task's lines
        try:
            result = await self._run(request, control, self.trainer, trace)
            pending = PendingResult(
                request.rollout_id, request.server_url, encode_result(result), request.api_key
            )
            progress = progress_of(request.rollout_id, control, messages=False)
            kept = await self.delivery.keep(pending, outcome_of(result), progress)
            if kept is Kept.SUPERSEDED:
                return
            control.enter(Phase.DELIVERING, size=len(pending.result))
            acknowledged = await self.delivery.deliver(
                pending, outcome_of(result), kept=kept is Kept.KEPT
            )
            trace.event(
                "delivery",
                turn=result.metrics.num_llm_calls,
                acknowledged=acknowledged,
                kept_in_store=kept is Kept.KEPT and not acknowledged,
            )
        except Exception:
            self.internal_errors += 1
            self.delivery.lost_results += 1
            log.exception("rollout %s: internal error; its result is lost", request.rollout_id)
        finally:
            self.completed_rollouts += 1
            self._forget(request.rollout_id, control)

    def _forget(self, rollout_id: str, control: RunControl) -> None:
        control.enter(Phase.DONE)
        if self.local.get(rollout_id) is control:
            del self.local[rollout_id]

    def _trace(self, request: InitRequest) -> Trace:
        if self.traces is None:
            return NO_TRACE
        return self.traces.trace(request.rollout_id, request.api_key)

    async def _run(
        self, request: InitRequest, control: RunControl, trainer: TrainerClient, trace: Trace
    ) -> RolloutResult:
        try:
            result = await run_rollout(
                request,
                self.agent,
                trainer,
                control,
                tool_limiter=self._tool_limiter,
                trace=trace,
                on_turn=self.leases.turned,
            )
        except Exception as exc:  # run_rollout never raises: a bug of ours
            self.internal_errors += 1
            log.exception("rollout %s: internal error", request.rollout_id)
            result = internal_error_result(request, exc)
        log_result(result)
        if self.metrics is not None:
            self.metrics.result(result)
        return result

    def _adopt(self, orphan: Orphan) -> None:
        """Start delivering the one result of a rollout taken over from a stopped worker."""
        assert self._nursery is not None
        size = len(orphan.result or orphan.messages)
        control = self.admission.control(size=size, phase=Phase.DELIVERING)
        self.local[orphan.rollout_id] = control
        self._nursery.start_soon(
            self._take_over, orphan, control, name=f"orphan {orphan.rollout_id}"
        )

    async def _take_over(self, orphan: Orphan, control: RunControl) -> None:
        rollout_id = orphan.rollout_id
        structlog.contextvars.bind_contextvars(rollout_id=rollout_id)
        try:
            if orphan.result is not None:  # written, not acknowledged: deliver it as is
                log.info("rollout %s: delivering the result %s left", rollout_id, orphan.lost_owner)
                left = PendingResult(rollout_id, orphan.server_url, orphan.result, orphan.api_key)
                await self.delivery.deliver(left, None, kept=True)
                return
            result = orphan_result(orphan, time.time())
            log.warning("rollout %s: %s", rollout_id, result.error_message)
            outcome = outcome_of(result)
            pending = PendingResult(
                rollout_id, orphan.server_url, encode_result(result), orphan.api_key
            )
            kept = await self.delivery.keep(pending, outcome)
            if kept is Kept.SUPERSEDED:
                return
            if self.metrics is not None:
                self.metrics.result(result)
            await self.delivery.deliver(pending, outcome, kept=kept is Kept.KEPT)
        except Exception:
            self.internal_errors += 1
            log.exception("rollout %s: internal error while taking it over", rollout_id)
        finally:
            self._forget(rollout_id, control)

    async def run_sync(self, request: InitRequest, size: int = 0) -> RolloutResult:
        """Run one rollout of the synchronous variant (``POST /rollout``) in the caller's
        task and return its result (no callback; LLM turns go to
        ``{server_url}/v1/completions``). docs/PROTOCOL.md §6.

        Admission is bounded as for inits (raises
        :class:`~rollout._server.admission.Draining` or
        :class:`~rollout._server.admission.Overloaded`); there is no idempotency record: the
        trainer holds the request open. A drain cancels it like any rollout, and the caller
        gets its "shutdown" result. The caller may not be the trainer, so no excerpt of the
        trainer's answers is put in the error message.
        """
        control = self.admission.reserve(size)
        control.echo_trainer_body = False
        self._sync_controls.add(control)
        try:
            return await self._run(request, control, self._sync_trainer, self._trace(request))
        finally:
            self._sync_controls.discard(control)
            self.completed_rollouts += 1
            control.enter(Phase.DONE)

    # ------------------------------------------------------------------ shutdown

    async def drain(self) -> None:
        """Graceful shutdown; idempotent (a second call waits for the first).

        Stops admitting, waits up to ``drain_timeout`` seconds for unfinished rollouts,
        cancels the rest (each still gets its "shutdown" result), then waits up to
        ``shutdown_delivery_timeout`` seconds for the last deliveries.
        """
        if self._draining or self.failed.is_set():
            await self._drained.wait()
            await self._stopped.wait()
            return
        self._draining = True
        self.admission.closed = "the server is draining for shutdown and admits no new rollouts"
        tally = self.admission.tally
        if active := tally.count(*ACTIVE):
            log.info(
                "draining: %d rollouts unfinished, waiting up to %g s",
                active,
                self.config.drain_timeout,
            )
        with self._hurry_scope(self.config.drain_timeout):
            await tally.idle.wait()
        cancelled = [c for c in self.local.values() if c.phase in UNFINISHED]
        cancelled += [c for c in self._sync_controls if c.phase in UNFINISHED]
        for control in cancelled:
            control.shut_down()
        if cancelled:
            log.warning(
                "drain timeout: cancelled %d rollouts, delivering their results", len(cancelled)
            )
        # Cancelled rollouts end at their next checkpoint; let them make (and keep) their
        # results even when hurried, or a second signal would lose them.
        with trio.move_on_after(self.config.shutdown_delivery_timeout):
            await tally.runs_ended.wait()
        with self._hurry_scope(self.config.shutdown_delivery_timeout):
            await tally.idle.wait()
        if not tally.idle.is_set():
            where = "kept in the store" if self.store.durable else "LOST"
            log.error(
                "shutdown: %d results not delivered in time (%s)", tally.count(*ACTIVE), where
            )
        self._drained.set()
        # The lease is released, and the store closed, by run(): wait for it, so that
        # whoever stops next (the app's nursery) cannot cut that off.
        await self._stopped.wait()

    def hurry(self) -> None:
        """End a running :meth:`drain` now (a second SIGTERM/SIGINT): unfinished rollouts are
        cancelled at once and their deliveries not waited for. With a durable store their
        results are kept there for another worker or the next start; in the memory store
        they are lost (and logged)."""
        self._hurried = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    @contextmanager
    def _hurry_scope(self, seconds: float) -> Iterator[None]:
        with trio.move_on_after(seconds) as scope:
            self._wait_scope = scope
            if self._hurried:
                scope.cancel()
            try:
                yield
            finally:
                self._wait_scope = None

    # ------------------------------------------------------------------ health

    @property
    def status(self) -> str:
        """ "healthy", "draining", or "failed" once the engine stopped."""
        if self.failed.is_set():
            return "failed"
        return "draining" if self._draining else "healthy"

    def health(self) -> dict[str, object]:
        """The ``GET /health`` body: the reference's keys plus ours (docs/PROTOCOL.md §3)."""
        tally = self.admission.tally
        return {
            "status": self.status,
            "agent_loop": self.agent.name,
            "active_rollouts": tally.count(*ACTIVE),
            "completed_rollouts": self.completed_rollouts,
            "queued_rollouts": tally.count(Phase.QUEUED),
            "running_rollouts": tally.count(Phase.RUNNING),
            "delivering_results": tally.count(Phase.DELIVERING),
            "lost_results": self.delivery.lost_results,
            "internal_errors": self.internal_errors,
            "abandoned_threads": _threads.abandoned_threads(),
            "taken_over": self.leases.taken_over,
            "superseded_results": self.delivery.superseded_results,
            "worker": self.owner,
            "store": self.store.description,
            "draining": self._draining,
        }
