"""``rollout test``: an agent over a dataset, in-process, against any chat endpoint.

Each row runs through the server's own lifecycle (:func:`rollout._server.lifecycle.run_rollout`:
the same budgets, tools, deadline and result), with the trainer client talking either to
a trainer (the built-in simulator, :mod:`rollout.testing`, when no ``--base-url`` is given:
offline) or to an OpenAI-compatible server (vLLM, SGLang, Ollama, OpenAI), whose chat body
names ``--model`` and leaves out the trainer-only keys. Retries, ``Retry-After``, the answer
size cap and strict JSON are the trainer client's, so a ``429`` from a hosted model is
waited out, not counted as a failure.

The client is our own trainer client rather than the ``openai`` package: it already does
what this mode needs (retries honouring ``Retry-After``, a deadline, a size cap, strict
JSON, redacted errors) on Trio, and the ``openai`` package would add pydantic and a second
HTTP stack for one endpoint (docs/ARCHITECTURE.md, "Stack notes").
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from rich.console import Console
from rich.table import Table

from ._dataset import Problem
from ._server.lifecycle import RunControl, run_rollout
from ._server.phases import Tally
from ._trace import NO_TRACE, TraceSink
from ._trainer.client import CHAT_PATH, TrainerClient
from ._trainer.transport import ClientTransport
from ._wire import codec
from ._wire.models import InitRequest, RolloutResult
from ._wire.validation import parse_init_request
from .agent import Agent
from .config import RetryPolicy
from .demo import group_rows, quantile

__all__ = [
    "Endpoint",
    "RowResult",
    "client_options",
    "init_request",
    "run_rows",
    "summarize",
    "write_rows",
]

#: Where an OpenAI-compatible server takes chat requests, under its ``/v1`` base URL.
OPENAI_CHAT_PATH = "/chat/completions"


@attrs.frozen
class Endpoint:
    """Where LLM turns go: ``base_url`` with ``model`` (an OpenAI-compatible server), or a
    trainer's URL with ``model`` None. ``api_key`` is sent as a Bearer token."""

    base_url: str
    model: str | None = None
    api_key: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class RowResult:
    """One row's rollout, for the output file: latencies in seconds, counts in tokens."""

    id: str
    status: str
    finish_reason: str
    reward: float | None
    turns: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    error: str | None
    final_answer: str
    messages: list[Any]
    group_id: str | None = None

    @classmethod
    def of(cls, result: RolloutResult, group_id: str | None = None) -> RowResult:
        body = codec.result_json(result)
        final = next((m.text for m in reversed(result.final_messages) if m.role == "assistant"), "")
        return cls(
            id=result.rollout_id,
            status=result.status.value,
            finish_reason=result.finish_reason.value,
            reward=result.reward,
            turns=result.metrics.num_llm_calls,
            prompt_tokens=result.metrics.prompt_tokens,
            completion_tokens=result.metrics.response_tokens,
            seconds=result.metrics.total_latency_ms / 1000,
            error=result.error_message,
            final_answer=final,
            messages=list(body["final_messages"]),  # type: ignore[arg-type]
            group_id=group_id,
        )


#: Chat retries of a local run: a hosted model's 429s and 503s are waited out.
CHAT_RETRY = RetryPolicy(attempts=5, request_timeout=300.0, wait_initial=0.5, wait_max=30.0)


def client_options(endpoint: Endpoint) -> dict[str, Any]:
    """The trainer client's settings for ``endpoint``: the chat path and body of a trainer,
    or of an OpenAI-compatible server when it names a model."""
    return {
        "chat": CHAT_RETRY,
        "delivery": RetryPolicy(),
        "chat_path": CHAT_PATH if endpoint.model is None else OPENAI_CHAT_PATH,
        "model": endpoint.model,
    }


def init_request(
    problem: Problem,
    endpoint: Endpoint,
    completion_params: dict[str, Any],
    max_turns: int,
    max_tokens_total: int,
) -> InitRequest:
    """The init a trainer would send for ``problem``. Raises
    :class:`~rollout._wire.validation.ValidationError` for one that is not valid."""
    return parse_init_request(
        {
            "rollout_id": problem.id,
            "server_url": endpoint.base_url,
            "messages": [dict(m) for m in problem.messages],
            "completion_params": completion_params,
            "max_turns": max_turns,
            "max_tokens_total": max_tokens_total,
            "metadata": problem.init_metadata(),
            "api_key": endpoint.api_key,
        }
    )


async def run_rows(
    agent: Agent,
    problems: Sequence[Problem],
    endpoint: Endpoint,
    *,
    completion_params: dict[str, Any],
    max_turns: int = 10,
    max_tokens_total: int = 8192,
    rollout_timeout: float = 600.0,
    concurrency: int = 4,
    on_done: Callable[[RowResult], None] | None = None,
    trace_dir: Path | None = None,
) -> list[RowResult]:
    """Run ``agent`` on every problem, ``concurrency`` at a time; one result per problem,
    in order; with ``trace_dir``, one trace per row (:mod:`rollout._trace`). Raises
    :class:`~rollout._wire.validation.ValidationError` when the endpoint, the params or a row
    make an invalid rollout (before anything runs)."""
    requests = [
        init_request(problem, endpoint, completion_params, max_turns, max_tokens_total)
        for problem in problems
    ]
    results: list[RowResult | None] = [None] * len(requests)
    tally = Tally()
    slots = trio.CapacityLimiter(concurrency)
    async with ClientTransport() as transport:
        trainer = TrainerClient(transport, **client_options(endpoint))

        sink = None if trace_dir is None else TraceSink(trace_dir, secrets=[endpoint.api_key])

        async def one(index: int) -> None:
            request = requests[index]
            control = RunControl(tally, rollout_timeout, slots=slots)
            trace = NO_TRACE if sink is None else sink.trace(request.rollout_id)
            rollout = await run_rollout(request, agent, trainer, control, trace=trace)
            result = RowResult.of(rollout, problems[index].group_id)
            results[index] = result
            if on_done is not None:
                on_done(result)

        async with trio.open_nursery() as services:
            if sink is not None:
                await services.start(sink.run)
            async with trio.open_nursery() as nursery:
                for index in range(len(requests)):
                    nursery.start_soon(one, index)
            services.cancel_scope.cancel()  # the trace writer: flushes what is left
    return [r for r in results if r is not None]


def summarize(rows: Sequence[RowResult], console: Console, *, title: str) -> bool:
    """Print the summary table; True when no row ended in ERROR."""
    completed = sum(1 for r in rows if r.status == "COMPLETED")
    rewards = [r.reward for r in rows if r.reward is not None]
    seconds = sorted(r.seconds for r in rows)
    table = Table(title=title, show_header=False)
    table.add_row("rows", str(len(rows)))
    table.add_row("completed", str(completed))
    table.add_row("errored", str(len(rows) - completed))
    table.add_row("mean reward", f"{statistics.fmean(rewards):.3f}" if rewards else "n/a")
    if rows:
        table.add_row("mean turns", f"{statistics.fmean(r.turns for r in rows):.2f}")
        table.add_row("tokens (prompt / completion)", _tokens(rows))
        table.add_row("p50 latency", f"{quantile(seconds, 0.50):.2f} s")
        table.add_row("p99 latency", f"{quantile(seconds, 0.99):.2f} s")
    group_rows(table, [(r.group_id, r.reward) for r in rows])
    console.print(table)
    for row in rows:
        if row.status != "COMPLETED":
            console.print(f"[red]{row.id}: {row.finish_reason}: {row.error or ''}[/red]")
    return completed == len(rows)


def _tokens(rows: Sequence[RowResult]) -> str:
    return f"{sum(r.prompt_tokens for r in rows)} / {sum(r.completion_tokens for r in rows)}"


def write_rows(rows: Sequence[RowResult], path: Path) -> None:
    """Write the per-row results as a JSON array."""
    path.write_text(json.dumps([attrs.asdict(r) for r in rows], indent=2) + "\n")
