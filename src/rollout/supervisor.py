"""The supervisor: admission, idempotency, the rollout nursery, delivery and drain.

One :class:`Supervisor` per server. It owns the nursery every rollout runs in (no rollout
outlives it), so one failing rollout never harms another or the app: :func:`run_rollout`
turns every failure into a result, and delivery failures are logged, never raised.

Admission (:meth:`Supervisor.admit`, PROTOCOL.md §1 "Our rule"):

- same idempotency key, same canonical body -> the same ``202`` body, nothing new starts;
- same key, different body -> :class:`Conflict` (``409``);
- draining for shutdown -> :class:`Draining` (``503``);
- more than ``max_concurrent + max_queued`` rollouts unfinished -> :class:`Overloaded`
  (``429`` with ``Retry-After``).

A record is kept until its result was acknowledged (or given up on) plus
``idempotency_ttl`` seconds, so a duplicate init arriving meanwhile never starts a second run.

Shutdown (:meth:`Supervisor.drain`): stop admitting; let rollouts finish for up to
``drain_timeout`` seconds; cancel the rest, which end with ``finish_reason`` "shutdown"; give
their deliveries up to ``shutdown_delivery_timeout`` seconds; then stop.

With an ``outbox_dir`` (:mod:`rollout.outbox`), every result is written to disk before its
first delivery attempt and removed once acknowledged; at start the supervisor delivers what
a previous process left there, and remembers those idempotency keys, so a trainer re-sending
such an init gets its ``202`` without a second run.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import attrs
import trio

from .agent import Agent
from .config import ServerConfig
from .errors import TrainerError, TrainerHTTPError
from .lifecycle import RunControl, run_rollout
from .outbox import Outbox, PendingResult
from .protocol import InitRequest, InitResponse, RolloutResult
from .trainer import CHAT_PATH, SYNC_COMPLETIONS_PATH, TrainerClient, redact_url

__all__ = ["AdmissionError", "Conflict", "Draining", "Overloaded", "Supervisor"]

log = logging.getLogger("rollout.supervisor")


class AdmissionError(Exception):
    """An init that is valid but not admitted; ``status`` is the HTTP status to answer."""

    status = 503
    retry_after: float | None = None


class Conflict(AdmissionError):
    """The idempotency key is in use by a different init body (``409``)."""

    status = 409


class Overloaded(AdmissionError):
    """The queue is full (``429`` with ``Retry-After``): backpressure, not failure."""

    status = 429
    retry_after = 1.0


class Draining(AdmissionError):
    """The server is shutting down and admits nothing new (``503``)."""

    status = 503
    retry_after = 5.0


class Phase(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"
    DONE = "done"


@attrs.define(eq=False)
class _Record:
    """What the supervisor remembers of one idempotency key."""

    digest: bytes
    response: InitResponse
    control: RunControl
    phase: Phase = Phase.QUEUED
    delivered: bool = False
    done_at: float | None = None


class Supervisor:
    """Admits rollouts and runs each in its own task in the supervisor's nursery.

    Use :meth:`run` as a service: ``await nursery.start(supervisor.run)``; it returns once
    :meth:`drain` (or :meth:`close`) finished. Counters for ``GET /health`` are properties.
    """

    def __init__(self, agent: Agent, trainer: TrainerClient, config: ServerConfig) -> None:
        self.agent = agent
        self.trainer = trainer
        self.config = config
        self._records: dict[str, _Record] = {}
        self._phases: Counter[Phase] = Counter()
        self._finished: OrderedDict[str, float] = OrderedDict()  # key -> done_at, oldest first
        self._slots = trio.CapacityLimiter(config.max_concurrent_rollouts)
        self._tool_limiter = trio.CapacityLimiter(config.max_tool_threads)
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self._drained = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.completed_rollouts = 0
        self.lost_results = 0
        self._outbox = None if config.outbox_dir is None else Outbox(config.outbox_dir)
        self._hurried = False
        self._runs_ended = trio.Event()  # no rollout queued or running: every result exists
        self._runs_ended.set()
        self._wait_scope: trio.CancelScope | None = None

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the rollout nursery until :meth:`drain` completes."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._outbox is not None:
                left = await trio.to_thread.run_sync(self._outbox.pending)
                if left:
                    log.warning(
                        "outbox %s: %d results from an earlier run, delivering them",
                        self._outbox.directory,
                        len(left),
                    )
                for pending in left:
                    self._remember_delivering(pending)
                    nursery.start_soon(self._redeliver, pending, name=f"outbox {pending.key}")
            task_status.started()
            await self._drained.wait()
            nursery.cancel_scope.cancel()  # only stragglers past every grace period remain

    async def drain(self) -> None:
        """Graceful shutdown; idempotent (a second call waits for the first).

        Stops admitting, waits up to ``drain_timeout`` seconds for unfinished rollouts,
        cancels the rest (each still gets its "shutdown" result), then waits up to
        ``shutdown_delivery_timeout`` seconds for the last deliveries.
        """
        if self._draining:
            await self._drained.wait()
            return
        self._draining = True
        active = self.active_rollouts
        if active:
            log.info(
                "draining: %d rollouts unfinished, waiting up to %g s",
                active,
                self.config.drain_timeout,
            )
        with self._hurry_scope(self.config.drain_timeout):
            await self._idle.wait()
        cancelled = [r for r in self._records.values() if r.phase in (Phase.QUEUED, Phase.RUNNING)]
        for record in cancelled:
            record.control.shut_down()
        if cancelled:
            log.warning(
                "drain timeout: cancelled %d rollouts, delivering their results", len(cancelled)
            )
        # Cancelled rollouts end at their next checkpoint; let them make (and keep) their
        # results even when hurried, or a second signal would lose them.
        with trio.move_on_after(self.config.shutdown_delivery_timeout):
            await self._runs_ended.wait()
        with self._hurry_scope(self.config.shutdown_delivery_timeout):
            await self._idle.wait()
        if not self._idle.is_set():
            where = "kept in the outbox" if self._outbox is not None else "LOST"
            log.error(
                "shutdown: %d results not delivered in time (%s)", self.active_rollouts, where
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

    # ------------------------------------------------------------------ admission

    def admit(self, request: InitRequest) -> tuple[InitResponse, bool]:
        """Admit ``request``; returns the ``202`` body and whether a new rollout started.

        Raises :class:`Conflict`, :class:`Draining` or :class:`Overloaded`. Must be called
        while :meth:`run` is running.
        """
        self._forget_expired()
        digest = hashlib.sha256(request.canonical_json()).digest()
        record = self._records.get(request.key)
        if record is not None:
            if record.digest != digest:
                raise Conflict(
                    f"idempotency key {request.key!r} is already used by a different init body"
                    f" (rollout_id {record.response.rollout_id!r}); use a new key for a new rollout"
                )
            return record.response, False
        self._admission_check()
        if self._nursery is None:
            raise RuntimeError("Supervisor.admit() called before Supervisor.run() started")
        response = InitResponse(request.rollout_id, self.agent.tool_schemas)
        control = RunControl(trio.CancelScope(), timeout=self.config.rollout_timeout)
        record = _Record(digest, response, control)
        self._records[request.key] = record
        self._phases[Phase.QUEUED] += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._runs_ended = trio.Event() if self._runs_ended.is_set() else self._runs_ended
        self._nursery.start_soon(
            self._rollout, request, record, name=f"rollout {request.rollout_id}"
        )
        return response, True

    def _admission_check(self) -> None:
        if self._draining:
            raise Draining("the server is draining for shutdown and admits no new rollouts")
        limit = self.config.max_concurrent_rollouts + self.config.max_queued_rollouts
        if self.active_rollouts >= limit:
            raise Overloaded(
                f"{self.active_rollouts} rollouts are unfinished (limit {limit}); retry later"
            )

    def _forget_expired(self) -> None:
        horizon = trio.current_time() - self.config.idempotency_ttl
        while self._finished:
            key, done_at = next(iter(self._finished.items()))
            if done_at > horizon:
                break
            del self._finished[key]
            self._records.pop(key, None)

    # ------------------------------------------------------------------ one rollout

    async def _rollout(self, request: InitRequest, record: _Record) -> None:
        try:
            result = await self._run(request, record)
            pending = PendingResult(
                request.key,
                request.server_url,
                result.to_json(),
                request.api_key,
                record.digest.hex(),
            )
            kept = await self._keep(pending)
            self._move(record, Phase.DELIVERING)  # from here on, the result exists
            record.delivered = await self._deliver(pending, kept=kept)
        finally:
            self.completed_rollouts += 1
            self._done(request.key, record)

    async def _run(
        self, request: InitRequest, record: _Record, *, chat_path: str = CHAT_PATH
    ) -> RolloutResult:
        started_at = trio.current_time()
        record.control.scope.deadline = started_at + self.config.rollout_timeout

        @asynccontextmanager
        async def slot() -> AsyncIterator[None]:
            async with self._slots:
                self._move(record, Phase.RUNNING)
                yield

        result = await run_rollout(
            request,
            self.agent,
            self.trainer,
            record.control,
            slot=slot,
            started_at=started_at,
            tool_limiter=self._tool_limiter,
            chat_path=chat_path,
        )
        self._log_result(result)
        return result

    async def run_sync(self, request: InitRequest) -> RolloutResult:
        """Run one rollout of seed 000's synchronous ``POST /rollout`` in the caller's task
        and return its result (no callback; LLM turns go to ``{server_url}/v1/completions``).

        Admission is bounded as for inits (:class:`Draining`, :class:`Overloaded`); there is
        no idempotency record: the trainer holds the request open. A drain cancels it like
        any rollout, and the caller gets its "shutdown" result.
        """
        self._admission_check()
        key = f"sync {request.rollout_id} {id(request)}"
        control = RunControl(trio.CancelScope(), timeout=self.config.rollout_timeout)
        record = _Record(b"", InitResponse(request.rollout_id, ()), control)
        self._records[key] = record
        self._phases[Phase.QUEUED] += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._runs_ended = trio.Event() if self._runs_ended.is_set() else self._runs_ended
        try:
            return await self._run(request, record, chat_path=SYNC_COMPLETIONS_PATH)
        finally:
            self.completed_rollouts += 1
            self._done(key, record)
            del self._records[key]
            del self._finished[key]

    def _done(self, key: str, record: _Record) -> None:
        self._move(record, Phase.DONE)
        record.done_at = trio.current_time()
        self._finished[key] = record.done_at
        if self.active_rollouts == 0:
            self._idle.set()

    async def _keep(self, pending: PendingResult) -> bool:
        """Write the result to the outbox, if there is one; whether it is kept there.

        Shielded: a shutdown must not cancel the one write that makes the result survive it.
        """
        if self._outbox is None:
            return False
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self._outbox.put, pending)
            except OSError as exc:
                log.error(
                    "outbox: cannot keep the result of rollout %s (%s); delivering without it",
                    pending.rollout_id,
                    exc,
                )
                return False
        return True

    async def _deliver(self, pending: PendingResult, *, kept: bool) -> bool:
        """Deliver one result; ``kept``: it is in the outbox, to be removed once acknowledged.

        Returns whether a 2xx acknowledged it. Never raises but :class:`trio.Cancelled`;
        cancelled mid-delivery (shutdown), a kept result stays in the outbox.
        """
        where = redact_url(pending.server_url)
        try:
            await self.trainer.deliver_json(
                pending.server_url, pending.result, api_key=pending.api_key
            )
        except TrainerError as exc:
            refused = isinstance(exc, TrainerHTTPError) and not exc.retryable
            if kept and not refused:
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
                await self._forget_pending(pending)
            return False
        log.debug("rollout %s: result delivered to %s", pending.rollout_id, where)
        if kept:
            await self._forget_pending(pending)
        return True

    async def _forget_pending(self, pending: PendingResult) -> None:
        assert self._outbox is not None
        try:
            await trio.to_thread.run_sync(self._outbox.remove, pending.key)
        except OSError as exc:  # delivered twice after a restart at worst: same payload
            log.error("outbox: cannot remove the result of rollout %s: %s", pending.rollout_id, exc)

    def _remember_delivering(self, pending: PendingResult) -> None:
        """Admit nothing new for a key whose result a previous process left in the outbox."""
        response = InitResponse(pending.rollout_id, self.agent.tool_schemas)
        control = RunControl(trio.CancelScope(), timeout=self.config.rollout_timeout)
        record = _Record(bytes.fromhex(pending.digest), response, control, phase=Phase.DELIVERING)
        self._records[pending.key] = record
        self._phases[Phase.DELIVERING] += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle

    async def _redeliver(self, pending: PendingResult) -> None:
        record = self._records[pending.key]
        log.info("outbox: delivering the result of rollout %s again", pending.rollout_id)
        try:
            record.delivered = await self._deliver(pending, kept=True)
        finally:
            self._done(pending.key, record)

    def _log_result(self, result: RolloutResult) -> None:
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

    # ------------------------------------------------------------------ health

    def _move(self, record: _Record, phase: Phase) -> None:
        self._phases[record.phase] -= 1
        self._phases[phase] += 1
        record.phase = phase
        if self._count(Phase.QUEUED, Phase.RUNNING) == 0:
            self._runs_ended.set()

    def _count(self, *phases: Phase) -> int:
        return sum(self._phases[phase] for phase in phases)

    @property
    def queued_rollouts(self) -> int:
        return self._count(Phase.QUEUED)

    @property
    def running_rollouts(self) -> int:
        return self._count(Phase.RUNNING)

    @property
    def delivering_results(self) -> int:
        return self._count(Phase.DELIVERING)

    @property
    def active_rollouts(self) -> int:
        """Accepted rollouts whose result was not yet delivered or given up on."""
        return self._count(Phase.QUEUED, Phase.RUNNING, Phase.DELIVERING)

    @property
    def draining(self) -> bool:
        return self._draining

    def health(self) -> dict[str, object]:
        """The ``GET /health`` body: the reference's keys plus our counters (PROTOCOL.md §1)."""
        return {
            "status": "draining" if self._draining else "healthy",
            "agent_loop": self.agent.name,
            "active_rollouts": self.active_rollouts,
            "completed_rollouts": self.completed_rollouts,
            "queued_rollouts": self.queued_rollouts,
            "running_rollouts": self.running_rollouts,
            "delivering_results": self.delivering_results,
            "lost_results": self.lost_results,
            "draining": self._draining,
        }
