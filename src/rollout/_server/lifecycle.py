"""One rollout, from start to result: scopes, budgets, reward, and every way it can end.

:func:`run_rollout` never raises for anything the trainer, the tools, the model or the agent
did: every ending becomes a :class:`~rollout.RolloutResult` (docs/PROTOCOL.md §7.6).
The nesting of scopes is the whole design::

    with control.scope:              # wall-clock deadline; cancelled on shutdown
        async with control.slots:    # waiting for a free slot counts against the deadline
            await ctx._run()         # the agent loop in the budget scope (max_turns,
                                     # max_tokens_total: cancelled by ctx.chat())
            reward = await agent.score(...)

| how it ended                      | status    | finish_reason           | reward   |
|-----------------------------------|-----------|-------------------------|----------|
| the loop returned                 | COMPLETED | stop (length if cut)    | computed |
| a budget was spent                | COMPLETED | max_turns / max_tokens  | computed |
| the deadline passed               | ERROR     | timeout                 | none     |
| the server shut down              | ERROR     | shutdown                | none     |
| trainer, agent or reward failed   | ERROR     | error                   | none     |

Infrastructure failures are never scored as reward 0: an ``ERROR`` result has no reward, so
a trainer can tell "the model failed" from "the system failed". Every result carries the
trajectory so far and real metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable

import attrs
import trio

from .. import _json
from .._json import JSON
from .._store import Orphan, Outcome
from .._trace import NO_TRACE, Trace
from .._trainer.chat import Completion
from .._trainer.client import TrainerClient
from .._wire import codec
from .._wire.models import (
    FinishReason,
    InitRequest,
    JSONObject,
    Message,
    Metrics,
    RolloutResult,
    Status,
)
from ..agent import Agent, RolloutContext, Trajectory
from ..errors import AgentError, TrainerError, TrainerHTTPError, TrainerTransportError
from .phases import Phase, Tally

__all__ = [
    "RunControl",
    "encode_result",
    "internal_error_result",
    "log_result",
    "orphan_result",
    "outcome_of",
    "run_rollout",
]

log = logging.getLogger("rollout.lifecycle")


@attrs.define(eq=False)
class RunControl:
    """One accepted rollout as the server steers it: its deadline, start time and phase.

    - ``scope`` bounds the whole run: its deadline is ``timeout`` seconds after
      ``started_at`` (the Trio time of the ``202``: queueing counts); :meth:`shut_down`
      cancels it with the reason "shutdown" instead of "timeout";
    - ``phase`` is where the rollout is (:class:`~rollout._server.phases.Phase`), counted in
      ``tally`` with the ``size`` in bytes it holds; :meth:`enter` moves it;
    - ``slots``: the concurrency limit it waits for before its agent runs (None: no wait);
    - ``echo_trainer_body``: whether an error message may quote the trainer's answer (only
      when the result goes back to that trainer, docs/PROTOCOL.md §4.3).
    """

    tally: Tally
    timeout: float
    size: int = 0
    phase: Phase = Phase.QUEUED
    slots: trio.CapacityLimiter | None = None
    echo_trainer_body: bool = True
    started_at: float = attrs.field(factory=trio.current_time)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    shutting_down: bool = False
    cancelled: bool = False
    #: The running rollout's context, for status (turns, tokens so far); None until it runs.
    context: RolloutContext | None = None
    #: Status, finish reason and reward of the result, once it exists.
    outcome: Outcome | None = None

    def __attrs_post_init__(self) -> None:
        self.scope.deadline = self.started_at + self.timeout
        self.tally.add(self.phase, self.size)

    def enter(self, phase: Phase, *, size: int | None = None) -> None:
        """Move to ``phase``, now holding ``size`` bytes (default: as before; none when
        DONE)."""
        new_size = 0 if phase is Phase.DONE else self.size if size is None else size
        self.tally.move(self.phase, self.size, phase, new_size)
        self.phase, self.size = phase, new_size

    def shut_down(self) -> None:
        self.shutting_down = True
        self.scope.cancel()

    def cancel(self) -> bool:
        """Stop the rollout on request; its result is ``ERROR`` "cancelled". Returns whether
        it was still queued or running (idempotent: a second call returns False)."""
        if self.phase not in (Phase.QUEUED, Phase.RUNNING) or self.cancelled:
            return False
        self.cancelled = True
        self.scope.cancel()
        return True


async def run_rollout(
    request: InitRequest,
    agent: Agent,
    trainer: TrainerClient,
    control: RunControl,
    *,
    tool_limiter: trio.CapacityLimiter | None = None,
    trace: Trace = NO_TRACE,
    on_turn: Callable[[str], None] | None = None,
) -> RolloutResult:
    """Run ``agent`` on ``request`` and return its one result. Never raises but
    :class:`trio.Cancelled` from a scope *outside* ``control.scope``.

    Waits for one of ``control.slots``, then enters RUNNING; ``total_latency_ms`` counts
    from ``control.started_at``. LLM turns go where ``trainer`` sends chat requests (the
    synchronous variant's client uses ``/v1/completions``, docs/PROTOCOL.md §6); after
    each answered one, ``on_turn(rollout_id)`` (the leases' snapshots).
    """

    async def send_chat(body: dict[str, JSON]) -> Completion:
        completion = await trainer.chat(request.server_url, body, api_key=request.api_key)
        if on_turn is not None:
            on_turn(request.rollout_id)
        return completion

    ctx = RolloutContext(
        rollout_id=request.rollout_id,
        messages=request.messages,
        metadata=request.metadata,
        params=request.completion_params,
        max_turns=request.max_turns,
        max_tokens_total=request.max_tokens_total,
        agent=agent,
        send_chat=send_chat,
        tool_limiter=tool_limiter,
        trace=trace,
    )
    control.context = ctx
    status, finish, reward, error = Status.ERROR, FinishReason.ERROR, None, None
    with control.scope:
        try:
            async with control.slots or contextlib.nullcontext():
                control.enter(Phase.RUNNING)
                finish = await ctx._run()
                trajectory = Trajectory(request.rollout_id, ctx.messages, request.metadata, finish)
                try:
                    reward = await agent.score(trajectory)
                except Exception as exc:
                    raise _RewardFailed(exc) from exc
                if reward is not None and not math.isfinite(reward):
                    raise _RewardFailed(ValueError(f"the reward {reward} is not a finite number"))
                status = Status.COMPLETED
        except TrainerError as exc:
            error = _describe_trainer_error(exc, echo_body=control.echo_trainer_body)
        except AgentError as exc:
            error = f"agent error: {exc}"
        except _RewardFailed as exc:
            error = f"reward function failed: {_describe(exc.cause)}"
            finish = FinishReason.ERROR
        except Exception as exc:
            log.exception("rollout %s: the agent loop raised", request.rollout_id)
            error = f"agent loop raised {_describe(exc)}"
    if control.scope.cancelled_caught:
        status, reward = Status.ERROR, None
        if control.shutting_down:
            finish, error = (
                FinishReason.SHUTDOWN,
                "the server shut down before the rollout finished",
            )
        elif control.cancelled:
            finish, error = FinishReason.CANCELLED, "the rollout was cancelled on request"
        else:
            finish = FinishReason.TIMEOUT
            error = f"the rollout exceeded its deadline of {control.timeout:g} s"
    if status is Status.ERROR:
        reward = None  # an infrastructure or agent failure is never scored
        if finish not in (FinishReason.TIMEOUT, FinishReason.SHUTDOWN, FinishReason.CANCELLED):
            finish = FinishReason.ERROR
    result = RolloutResult(
        rollout_id=request.rollout_id,
        status=status,
        final_messages=ctx.messages,
        finish_reason=finish,
        metrics=ctx._metrics(trio.current_time() - control.started_at),
        error_message=error,
        reward=reward,
    )
    control.outcome = Outcome(status.value, finish.value, reward)
    if trace.enabled:
        trace.event(
            "rollout_complete",
            turn=ctx.turns,
            status=status.value,
            finish_reason=finish.value,
            reward=reward,
            error_message=error,
            metrics=attrs.asdict(result.metrics),
        )
    return result


def _describe_trainer_error(exc: TrainerError, *, echo_body: bool) -> str:
    """The error_message for a trainer failure, with the prefixes of the synchronous
    variant (docs/PROTOCOL.md §6): "Network error: ..." when the trainer never answered,
    "Trainer HTTP error: <code>: ..." for a status, "trainer error: ..." otherwise; then
    the excerpt of the trainer's answer, when ``echo_body``."""
    body = f": {exc.body}" if echo_body and exc.body else ""
    if isinstance(exc, TrainerTransportError):
        return f"Network error: {exc}{body}"
    if isinstance(exc, TrainerHTTPError):
        return f"Trainer HTTP error: {exc.status}: {exc}{body}"
    return f"trainer error: {exc}{body}"


def internal_error_result(request: InitRequest, exc: BaseException) -> RolloutResult:
    """The result of a rollout that an internal error (a bug of this server) ended."""
    return RolloutResult(
        rollout_id=request.rollout_id,
        status=Status.ERROR,
        final_messages=request.messages,
        finish_reason=FinishReason.ERROR,
        metrics=Metrics(),
        error_message=f"internal error of the rollout server: {_describe(exc)}",
    )


def orphan_result(orphan: Orphan, now: float) -> RolloutResult:
    """The ``ERROR`` result of a rollout whose worker stopped before it finished: the
    trajectory and counts of the store's last snapshot, and an error message naming the
    lost worker (docs/PROTOCOL.md §5.3). ``now``: Unix time, seconds."""
    try:
        messages = codec.structure(_json.loads(orphan.messages), tuple[Message, ...])
        note = f"trajectory as of turn {orphan.turns}"
    except Exception:  # a snapshot this server wrote; should it be unreadable, say so
        messages, note = (), "its trajectory could not be read back"
    lost = orphan.lost_owner or "that stopped"
    return RolloutResult(
        rollout_id=orphan.rollout_id,
        status=Status.ERROR,
        final_messages=messages,
        finish_reason=FinishReason.ERROR,
        metrics=Metrics(
            total_latency_ms=max(0.0, (now - orphan.created_at) * 1000),
            num_llm_calls=orphan.turns,
            prompt_tokens=orphan.prompt_tokens,
            response_tokens=orphan.completion_tokens,
        ),
        error_message=(
            f"the worker {lost} running this rollout stopped before it finished (its lease"
            f" in the store ended); {note}"
        ),
    )


def outcome_of(result: RolloutResult) -> Outcome:
    """The status, finish reason and reward of ``result``."""
    return Outcome(result.status.value, result.finish_reason.value, result.reward)


def encode_result(result: RolloutResult) -> bytes:
    """The body of ``POST {server_url}/v1/rollout/completed``, strict UTF-8 JSON.

    Every result gets a body: when agent code put something in the history that JSON cannot
    carry, the result becomes an ``ERROR`` that says so, without the trajectory.
    """
    try:
        return _json.dumps(codec.result_json(result))
    except _json.JSONError as exc:
        fallback = attrs.evolve(
            result,
            status=Status.ERROR,
            finish_reason=FinishReason.ERROR,
            final_messages=(),
            reward=None,
            extra_fields=JSONObject({}),
            error_message=f"the result could not be encoded as JSON ({exc}); trajectory left out",
        )
        return _json.dumps(codec.result_json(fallback))


class _RewardFailed(Exception):
    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def log_result(result: RolloutResult) -> None:
    """One line per result: INFO when it has no error message, WARNING otherwise."""
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
