"""The supervisor: the nursery every rollout runs in, the drain, and health.

One :class:`Supervisor` per server composes :class:`~rollout._server.admission.Admission`
(who gets in) and :class:`~rollout._server.delivery.Delivery` (results to trainers), and
owns only what joins them: the nursery (no rollout outlives it), shutdown and ``/health``.
One rollout enters each module once::

    app → admission.admit() → supervisor nursery → lifecycle.run_rollout() → delivery

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

import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import structlog
import trio

from .. import _threads
from .._trace import NO_TRACE, Trace, TraceSink
from .._trainer.client import SYNC_COMPLETIONS_PATH, TrainerClient
from .._wire.models import InitRequest, InitResponse, RolloutResult
from ..agent import Agent
from ..config import ServerConfig
from .admission import Admission, Record
from .delivery import Delivery
from .lifecycle import RunControl, encode_result, internal_error_result, run_rollout
from .metrics import ServerMetrics
from .outbox import Outbox, PendingResult
from .phases import ACTIVE, UNFINISHED, Phase

__all__ = ["Supervisor"]

log = logging.getLogger("rollout.supervisor")

#: Who runs the rollouts of this process, as ``/v1/rollout/{id}`` reports it.
_OWNER = f"{socket.gethostname()}:{os.getpid()}"


class Supervisor:
    """Admits rollouts and runs each in its own task in the supervisor's nursery.

    Use :meth:`run` as a service: ``await nursery.start(supervisor.run)``; it returns once
    :meth:`drain` finished (or the engine failed).
    """

    def __init__(
        self,
        agent: Agent,
        trainer: TrainerClient,
        config: ServerConfig,
        *,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.agent = agent
        self.trainer = trainer
        self.config = config
        self.metrics = metrics
        self.admission = Admission(config, agent.tool_schemas)
        outbox = None if config.outbox_dir is None else Outbox(config.outbox_dir)
        self.delivery = Delivery(trainer, outbox)
        self._sync_trainer = trainer.for_chat_path(SYNC_COMPLETIONS_PATH)
        self.traces = (
            None
            if config.trace_dir is None
            else TraceSink(config.trace_dir, secrets=[config.api_key])
        )
        self._tool_limiter = trio.CapacityLimiter(config.max_tool_threads)
        self._sync_controls: set[RunControl] = set()  # synchronous rollouts in flight
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self._drained = trio.Event()
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
        """Own the rollout nursery until :meth:`drain` completes; should the nursery itself
        fail, record why in :attr:`failure`, set :attr:`failed` and return."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.traces is not None:
                    await nursery.start(self.traces.run)
                await self._restore(nursery)
                nursery.start_soon(self._sweep, name="expired records")
                task_status.started()
                await self._drained.wait()
                nursery.cancel_scope.cancel()  # only stragglers past every grace period remain
        except* Exception as group:
            self.failure = group
            log.critical("the rollout engine stopped", exc_info=group)
            self.admission.closed = "the rollout engine stopped; the server is shutting down"
            self._drained.set()
            self.failed.set()

    async def _restore(self, nursery: trio.Nursery) -> None:
        """Deliver what an earlier process left in the outbox; remember what it delivered."""
        pending, delivered = await self.delivery.restore(self.config.idempotency_ttl)
        now, wall = trio.current_time(), time.time()
        for done in delivered:
            done_at = now - max(0.0, wall - done.delivered_at)
            self.admission.remember(
                done.rollout_id,
                bytes.fromhex(done.digest),
                done.idempotency_key,
                phase=Phase.DONE,
                done_at=done_at,
            )
        self.admission.sort_finished()
        for result in pending:
            record = self.admission.remember(
                result.rollout_id,
                bytes.fromhex(result.digest),
                result.idempotency_key,
                phase=Phase.DELIVERING,
                size=len(result.result),
            )
            nursery.start_soon(self._redeliver, result, record, name=f"outbox {result.rollout_id}")

    async def _sweep(self) -> None:
        """Forget expired records now and then, also on disk, even while nothing arrives."""
        interval = min(60.0, max(1.0, self.config.idempotency_ttl / 10))
        while True:
            await trio.sleep(interval)
            await self.delivery.forget(self.admission.forget_expired())

    # ------------------------------------------------------------------ one rollout

    def admit(self, request: InitRequest, size: int = 0) -> tuple[InitResponse, bool]:
        """Admit ``request`` (an init body of ``size`` bytes) and start its rollout; returns
        the ``202`` body and whether a rollout started (docs/PROTOCOL.md §2.4). Raises
        :class:`~rollout._server.admission.AdmissionError`. Must be called while :meth:`run`
        is running."""
        if self._nursery is None:
            raise RuntimeError("Supervisor.admit() called before Supervisor.run() started")
        record, new = self.admission.admit(request, size)
        if new:
            self._nursery.start_soon(
                self._rollout, request, record, name=f"rollout {request.rollout_id}"
            )
        return record.response, new

    async def _rollout(self, request: InitRequest, record: Record) -> None:
        """Run one rollout, keep its result, deliver it. Never raises but Cancelled: a bug
        here is logged and counted, and the rollout still gets a result if it can."""
        trace = self._trace(request)
        structlog.contextvars.bind_contextvars(rollout_id=request.rollout_id)  # this task's lines
        try:
            result = await self._run(request, record.control, self.trainer, trace)
            pending = PendingResult(
                request.rollout_id,
                request.server_url,
                encode_result(result),
                request.api_key,
                record.digest.hex(),
                request.idempotency_key,
            )
            kept = await self.delivery.keep(pending)
            record.control.enter(Phase.DELIVERING, size=len(pending.result))
            acknowledged = await self.delivery.deliver(pending, kept=kept)
            trace.event(
                "delivery",
                turn=result.metrics.num_llm_calls,
                acknowledged=acknowledged,
                kept_in_outbox=kept and not acknowledged,
            )
        except Exception:
            self.internal_errors += 1
            self.delivery.lost_results += 1
            log.exception("rollout %s: internal error; its result is lost", request.rollout_id)
        finally:
            self.completed_rollouts += 1
            self.admission.finish(request.rollout_id, record)

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
            )
        except Exception as exc:  # run_rollout never raises: a bug of ours
            self.internal_errors += 1
            log.exception("rollout %s: internal error", request.rollout_id)
            result = internal_error_result(request, exc)
        _log_result(result)
        if self.metrics is not None:
            self.metrics.result(result)
        return result

    async def _redeliver(self, pending: PendingResult, record: Record) -> None:
        log.info("outbox: delivering the result of rollout %s again", pending.rollout_id)
        try:
            await self.delivery.deliver(pending, kept=True)
        except Exception:
            self.internal_errors += 1
            log.exception("rollout %s: internal error while redelivering", pending.rollout_id)
        finally:
            self.admission.finish(pending.rollout_id, record)

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
        self.admission.check(size)
        control = self.admission.control(size=size)
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
        cancelled = [r.control for r in self.admission.in_phase(*UNFINISHED)]
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
            where = "kept in the outbox" if self.delivery.outbox is not None else "LOST"
            log.error(
                "shutdown: %d results not delivered in time (%s)", tally.count(*ACTIVE), where
            )
        self._drained.set()

    def hurry(self) -> None:
        """End a running :meth:`drain` now (a second SIGTERM/SIGINT): unfinished rollouts are
        cancelled at once and their deliveries not waited for. With an outbox their results
        are kept on disk for the next start; without one they are lost (and logged)."""
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

    # ------------------------------------------------------------------ status and cancel

    def rollout_status(self, rollout_id: str) -> dict[str, object] | None:
        """What is known of ``rollout_id`` (``GET /v1/rollout/{id}``), or None when it is
        unknown here (docs/PROTOCOL.md §3)."""
        record = self.admission.record(rollout_id)
        if record is None:
            return None
        control = record.control
        ctx = control.context
        outcome = control.outcome
        return {
            "rollout_id": rollout_id,
            "phase": control.phase.value,
            "owner": _OWNER,
            "turns": 0 if ctx is None else ctx.turns,
            "prompt_tokens": 0 if ctx is None else ctx._counters.prompt_tokens,
            "completion_tokens": 0 if ctx is None else ctx.completion_tokens,
            "seconds": round(trio.current_time() - control.started_at, 3),
            "cancelled": control.cancelled,
            "result": None
            if outcome is None
            else {"status": outcome[0], "finish_reason": outcome[1], "reward": outcome[2]},
        }

    def cancel(
        self, *, rollout_ids: Sequence[str] = (), prefix: str | None = None, all: bool = False
    ) -> list[str]:
        """Cancel the rollouts named (by ids, an id prefix, or all) that are still queued or
        running; returns the ids that were. Each ends with one ``ERROR`` result,
        ``finish_reason`` "cancelled". Idempotent."""
        found = self.admission.matching(rollout_ids=rollout_ids, prefix=prefix, all=all)
        cancelled = [rollout_id for rollout_id, record in found if record.control.cancel()]
        if cancelled:
            log.info("cancelled on request: %s", ", ".join(cancelled))
        return cancelled

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
            "draining": self._draining,
        }


def _log_result(result: RolloutResult) -> None:
    if result.error_message is None:
        log.info(
            "rollout %s: %s (%s) reward=%s turns=%d",
            result.rollout_id,
            result.status.value,
            result.finish_reason.value,
            result.reward,
            result.metrics.num_llm_calls,
        )
    else:
        log.warning(
            "rollout %s: %s (%s): %s",
            result.rollout_id,
            result.status.value,
            result.finish_reason.value,
            result.error_message,
        )
