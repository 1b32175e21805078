"""The supervisor: admission, idempotency, the rollout nursery, delivery and drain.

One :class:`Supervisor` per server. It owns the nursery every rollout runs in (no rollout
outlives it), so one failing rollout never harms another or the app: :func:`run_rollout`
turns every failure into a result, and delivery failures are logged, never raised.

Admission (:meth:`Supervisor.admit`, docs/PROTOCOL.md §2.4):

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
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial

import attrs
import trio

from .._trainer.client import CHAT_PATH, SYNC_COMPLETIONS_PATH, TrainerClient, redact_url
from .._wire import codec
from .._wire.models import InitRequest, InitResponse, RolloutResult
from ..agent import Agent
from ..config import ServerConfig
from ..errors import TrainerError, TrainerHTTPError, TrainerTransportError
from .lifecycle import RunControl, encode_result, internal_error_result, run_rollout
from .outbox import Delivered, Outbox, PendingResult

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
    """What the supervisor remembers of one rollout (by ``rollout_id``).

    ``size``: bytes it holds against a budget: its init body while queued or running, its
    encoded result while delivering.
    """

    digest: bytes
    response: InitResponse
    control: RunControl
    idempotency_key: str | None = None
    phase: Phase = Phase.QUEUED
    size: int = 0


class Supervisor:
    """Admits rollouts and runs each in its own task in the supervisor's nursery.

    Use :meth:`run` as a service: ``await nursery.start(supervisor.run)``; it returns once
    :meth:`drain` (or :meth:`close`) finished. Counters for ``GET /health`` are properties.
    """

    def __init__(self, agent: Agent, trainer: TrainerClient, config: ServerConfig) -> None:
        self.agent = agent
        self.trainer = trainer
        self.config = config
        self._records: dict[str, _Record] = {}  # rollout_id -> record
        self._keys: dict[str, str] = {}  # idempotency_key -> rollout_id
        self._phases: Counter[Phase] = Counter()
        self._bytes: Counter[Phase] = Counter()
        self._finished: OrderedDict[str, float] = OrderedDict()  # rollout_id -> done_at
        self._slots = trio.CapacityLimiter(config.max_concurrent_rollouts)
        self._tool_limiter = trio.CapacityLimiter(config.max_tool_threads)
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self._drained = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.completed_rollouts = 0
        self.lost_results = 0
        self.internal_errors = 0
        self._outbox = None if config.outbox_dir is None else Outbox(config.outbox_dir)
        self._hurried = False
        self._runs_ended = trio.Event()  # no rollout queued or running: every result exists
        self._runs_ended.set()
        self._wait_scope: trio.CancelScope | None = None
        #: Set when the engine stopped for a reason other than a drain
        #: (:class:`~rollout.errors.EngineFailure`).
        self.failed = trio.Event()
        self.failure: BaseException | None = None
        self._expired_on_disk: list[str] = []

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the rollout nursery until :meth:`drain` completes.

        Should the nursery itself ever fail (a bug; every rollout's own failure becomes its
        result), the failure is recorded in :attr:`failure`, :attr:`failed` is set and
        this returns: the server then stops admitting and exits non-zero.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._outbox is not None:
                    await self._restore(nursery)
                    nursery.start_soon(self._sweep, name="expired records")
                task_status.started()
                await self._drained.wait()
                nursery.cancel_scope.cancel()  # only stragglers past every grace period remain
        except* Exception as group:
            self.failure = group
            log.critical("the rollout engine stopped", exc_info=group)
            self._drained.set()
            self.failed.set()

    async def _restore(self, nursery: trio.Nursery) -> None:
        """Deliver what an earlier process left in the outbox; remember what it delivered."""
        assert self._outbox is not None
        left, delivered = await trio.to_thread.run_sync(
            partial(
                self._outbox.load,
                keep_delivered_for=self.config.idempotency_ttl,
                now=time.time(),
            )
        )
        if left:
            log.warning(
                "outbox %s: %d results from an earlier run, delivering them",
                self._outbox.directory,
                len(left),
            )
        for done in delivered:
            age = max(0.0, time.time() - done.delivered_at)
            record = self._new_record(
                done.rollout_id, bytes.fromhex(done.digest), done.idempotency_key, Phase.DONE
            )
            self._finished[done.rollout_id] = trio.current_time() - age
        self._finished = OrderedDict(sorted(self._finished.items(), key=lambda item: item[1]))
        for pending in left:
            record = self._new_record(
                pending.rollout_id,
                bytes.fromhex(pending.digest),
                pending.idempotency_key,
                Phase.DELIVERING,
                size=len(pending.result),
            )
            nursery.start_soon(
                self._redeliver, pending, record, name=f"outbox {pending.rollout_id}"
            )

    async def _sweep(self) -> None:
        """Forget expired records now and then, also on disk, even while nothing arrives."""
        assert self._outbox is not None
        interval = min(60.0, max(1.0, self.config.idempotency_ttl / 10))
        while True:
            await trio.sleep(interval)
            self._forget_expired()
            expired, self._expired_on_disk = self._expired_on_disk, []
            for rollout_id in expired:
                with trio.CancelScope(shield=True):
                    try:
                        await trio.to_thread.run_sync(self._outbox.remove, rollout_id)
                    except OSError as exc:
                        log.error("outbox: cannot remove an expired record: %s", exc)

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

    def admit(self, request: InitRequest, size: int = 0) -> tuple[InitResponse, bool]:
        """Admit ``request`` (an init body of ``size`` bytes); returns the ``202`` body and
        whether a new rollout started (docs/PROTOCOL.md §2.4).

        A ``rollout_id`` runs at most once, whatever its ``idempotency_key``: an identical
        init (same canonical body) is answered from the record, a different one with the
        same ``rollout_id`` or the same ``idempotency_key`` is a :class:`Conflict`, whose
        message names neither the other rollout nor its body. Raises :class:`Draining` and
        :class:`Overloaded` too. Must be called while :meth:`run` is running.
        """
        self._forget_expired()
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
            return record.response, False
        self._admission_check(size)
        if self._nursery is None:
            raise RuntimeError("Supervisor.admit() called before Supervisor.run() started")
        record = self._new_record(
            request.rollout_id, digest, request.idempotency_key, Phase.QUEUED, size=size
        )
        self._nursery.start_soon(
            self._rollout, request, record, name=f"rollout {request.rollout_id}"
        )
        return record.response, True

    def _new_record(
        self,
        rollout_id: str,
        digest: bytes,
        idempotency_key: str | None,
        phase: Phase,
        *,
        size: int = 0,
        remember: bool = True,
    ) -> _Record:
        response = InitResponse(rollout_id, self.agent.tool_schemas)
        control = RunControl(trio.CancelScope(), timeout=self.config.rollout_timeout)
        record = _Record(digest, response, control, idempotency_key, phase, size)
        if remember:
            self._records[rollout_id] = record
            if idempotency_key is not None:
                self._keys[idempotency_key] = rollout_id
        self._phases[phase] += 1
        self._bytes[phase] += size
        if phase is not Phase.DONE:
            self._idle = trio.Event() if self._idle.is_set() else self._idle
        if phase in (Phase.QUEUED, Phase.RUNNING):
            self._runs_ended = trio.Event() if self._runs_ended.is_set() else self._runs_ended
        return record

    def _admission_check(self, size: int) -> None:
        if self.failed.is_set():
            raise Draining("the rollout engine stopped; the server is shutting down")
        if self._draining:
            raise Draining("the server is draining for shutdown and admits no new rollouts")
        config = self.config
        unfinished = self._count(Phase.QUEUED, Phase.RUNNING)
        limit = config.max_concurrent_rollouts + config.max_queued_rollouts
        if unfinished >= limit:
            raise Overloaded(f"{unfinished} rollouts are unfinished (limit {limit}); retry later")
        held = self._bytes[Phase.QUEUED] + self._bytes[Phase.RUNNING]
        if held and held + size > config.max_admitted_bytes:
            raise Overloaded(
                f"unfinished rollouts hold {held} bytes of inits (limit"
                f" {config.max_admitted_bytes}); retry later"
            )
        waiting = self._count(Phase.DELIVERING)
        if waiting >= config.max_undelivered_results:
            raise Overloaded(
                f"{waiting} results wait for their trainers' acknowledgement (limit"
                f" {config.max_undelivered_results}); retry later"
            )
        if self._bytes[Phase.DELIVERING] >= config.max_undelivered_bytes:
            raise Overloaded(
                f"results waiting for acknowledgement hold {self._bytes[Phase.DELIVERING]} bytes"
                f" (limit {config.max_undelivered_bytes}); retry later"
            )

    def _forget_expired(self) -> None:
        horizon = trio.current_time() - self.config.idempotency_ttl
        while self._finished:
            rollout_id, done_at = next(iter(self._finished.items()))
            if done_at > horizon:
                break
            del self._finished[rollout_id]
            record = self._records.pop(rollout_id, None)
            if record is not None and record.idempotency_key is not None:
                self._keys.pop(record.idempotency_key, None)
            if self._outbox is not None:
                self._expired_on_disk.append(rollout_id)

    # ------------------------------------------------------------------ one rollout

    async def _rollout(self, request: InitRequest, record: _Record) -> None:
        """Run one rollout, keep its result, deliver it. Never raises but Cancelled: a bug
        here is logged and counted, and the rollout still gets a result if it can."""
        try:
            try:
                result = await self._run(request, record)
            except Exception as exc:  # run_rollout never raises: a bug of ours
                self.internal_errors += 1
                log.exception("rollout %s: internal error", request.rollout_id)
                result = internal_error_result(request, exc)
            pending = PendingResult(
                request.rollout_id,
                request.server_url,
                encode_result(result),
                request.api_key,
                record.digest.hex(),
                request.idempotency_key,
            )
            kept = await self._keep(pending)
            self._move(record, Phase.DELIVERING, size=len(pending.result))  # the result exists
            await self._deliver(pending, kept=kept)
        except Exception:
            self.internal_errors += 1
            self.lost_results += 1
            log.exception("rollout %s: internal error; its result is lost", request.rollout_id)
        finally:
            self.completed_rollouts += 1
            self._done(request.rollout_id, record)

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

    async def run_sync(self, request: InitRequest, size: int = 0) -> RolloutResult:
        """Run one rollout of the synchronous variant (``POST /rollout``) in the caller's
        task and return its result (no callback; LLM turns go to
        ``{server_url}/v1/completions``). docs/PROTOCOL.md §6.

        Admission is bounded as for inits (:class:`Draining`, :class:`Overloaded`); there is
        no idempotency record: the trainer holds the request open. A drain cancels it like
        any rollout, and the caller gets its "shutdown" result. The caller may not be the
        trainer, so no excerpt of the trainer's answers is put in the error message.
        """
        self._admission_check(size)
        record = self._new_record(
            request.rollout_id, b"", None, Phase.QUEUED, size=size, remember=False
        )
        record.control.echo_trainer_body = False
        try:
            return await self._run(request, record, chat_path=SYNC_COMPLETIONS_PATH)
        except Exception as exc:  # run_rollout never raises: a bug of ours
            self.internal_errors += 1
            log.exception("rollout %s: internal error", request.rollout_id)
            return internal_error_result(request, exc)
        finally:
            self.completed_rollouts += 1
            self._move(record, Phase.DONE)
            if self.active_rollouts == 0:
                self._idle.set()

    def _done(self, rollout_id: str, record: _Record) -> None:
        self._move(record, Phase.DONE)
        self._finished[rollout_id] = trio.current_time()
        self._finished.move_to_end(rollout_id)
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
        """Deliver one result; ``kept``: it is in the outbox, to be marked delivered once
        acknowledged.

        Returns whether a 2xx acknowledged it. Never raises but :class:`trio.Cancelled`;
        cancelled mid-delivery (shutdown), a kept result stays in the outbox.
        """
        where = redact_url(pending.server_url)
        try:
            await self.trainer.deliver_bytes(
                pending.server_url, pending.result, api_key=pending.api_key
            )
        except TrainerError as exc:
            refused = not (isinstance(exc, TrainerTransportError) or _retryable_status(exc))
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
                await self._on_disk(self._outbox_remove, pending)
            return False
        log.debug("rollout %s: result delivered to %s", pending.rollout_id, where)
        if kept:
            await self._on_disk(self._outbox_delivered, pending)
        return True

    def _outbox_remove(self, pending: PendingResult) -> None:
        assert self._outbox is not None
        self._outbox.remove(pending.rollout_id)

    def _outbox_delivered(self, pending: PendingResult) -> None:
        assert self._outbox is not None
        self._outbox.mark_delivered(
            Delivered(pending.rollout_id, pending.digest, pending.idempotency_key, time.time())
        )

    async def _on_disk(
        self, change: Callable[[PendingResult], None], pending: PendingResult
    ) -> None:
        """Apply ``change`` to the outbox, shielded: a result acknowledged just before a
        shutdown must not stay there to be delivered a second time after the restart."""
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(change, pending)
            except OSError as exc:  # delivered twice after a restart at worst: same payload
                log.error("outbox: cannot update rollout %s: %s", pending.rollout_id, exc)

    async def _redeliver(self, pending: PendingResult, record: _Record) -> None:
        log.info("outbox: delivering the result of rollout %s again", pending.rollout_id)
        try:
            await self._deliver(pending, kept=True)
        except Exception:
            self.internal_errors += 1
            log.exception("rollout %s: internal error while redelivering", pending.rollout_id)
        finally:
            self._done(pending.rollout_id, record)

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

    def _move(self, record: _Record, phase: Phase, *, size: int | None = None) -> None:
        self._phases[record.phase] -= 1
        self._bytes[record.phase] -= record.size
        record.phase = phase
        if phase is Phase.DONE:
            record.size = 0
        elif size is not None:
            record.size = size
        self._phases[phase] += 1
        self._bytes[phase] += record.size
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
        """The ``GET /health`` body: the reference's keys plus ours (docs/PROTOCOL.md §3)."""
        return {
            "status": self.status,
            "agent_loop": self.agent.name,
            "active_rollouts": self.active_rollouts,
            "completed_rollouts": self.completed_rollouts,
            "queued_rollouts": self.queued_rollouts,
            "running_rollouts": self.running_rollouts,
            "delivering_results": self.delivering_results,
            "lost_results": self.lost_results,
            "internal_errors": self.internal_errors,
            "draining": self._draining,
        }

    @property
    def status(self) -> str:
        """ "healthy", "draining", or "failed" once the engine stopped (see EngineFailure)."""
        if self.failed.is_set():
            return "failed"
        return "draining" if self._draining else "healthy"


def _retryable_status(exc: TrainerError) -> bool:
    return isinstance(exc, TrainerHTTPError) and exc.retryable
