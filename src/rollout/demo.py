"""``rollout demo``: the whole protocol end to end on loopback, as a trainer would drive it.

It serves the trainer simulator (:mod:`rollout.testing`) and a rollout server with an agent
(the calculator by default, any agent with ``-m``) on free 127.0.0.1 ports, posts one
``/v1/rollout/init`` per problem of the dataset (at most ``concurrency`` waiting at once,
retrying a ``429`` after its ``Retry-After``), waits for each result on the trainer's
``/v1/rollout/completed``, and summarizes: completed / errored / lost, mean reward, turns,
and p50/p99 seconds from init to result. A rollout is *lost* when no result arrived within
``result_timeout`` seconds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rollout.testing import MockTrainer
from rollout.testing import serve as serve_trainer

from ._dataset import Problem, load_problems
from ._server.serve import serve
from .agent import Agent
from .config import ServerConfig
from .examples.calculator import agent as calculator_agent

__all__ = ["DemoOutcome", "Problem", "load_problems", "run_demo", "summarize", "write_outcomes"]

#: The key the demo trainer gives every rollout, to be sent back on every callback.
DEMO_API_KEY = "demo-trainer-key"


@attrs.frozen
class DemoOutcome:
    """What the trainer saw of one rollout. ``status`` is "lost" when no result came."""

    rollout_id: str
    question: str
    ground_truth: str | None
    status: str
    finish_reason: str | None
    reward: float | None
    turns: int | None
    seconds: float
    final_answer: str | None
    error_message: str | None
    group_id: str | None = None


def _outcome(problem: Problem, result: dict[str, Any] | None, seconds: float) -> DemoOutcome:
    if result is None:
        return DemoOutcome(
            problem.id,
            problem.question,
            problem.ground_truth,
            "lost",
            None,
            None,
            None,
            seconds,
            None,
            None,
            problem.group_id,
        )
    answers = [
        m.get("content") for m in result.get("final_messages", []) if m.get("role") == "assistant"
    ]
    return DemoOutcome(
        rollout_id=problem.id,
        question=problem.question,
        ground_truth=problem.ground_truth,
        status=result["status"],
        finish_reason=result.get("finish_reason"),
        reward=result.get("reward"),
        turns=result.get("metrics", {}).get("num_llm_calls"),
        seconds=seconds,
        final_answer=answers[-1] if answers else None,
        error_message=result.get("error_message"),
        group_id=problem.group_id,
    )


async def _one(
    client: httpx.AsyncClient,
    server: str,
    trainer_url: str,
    trainer: MockTrainer,
    problem: Problem,
    result_timeout: float,
) -> DemoOutcome:
    messages = [dict(m) for m in problem.messages]
    body = {
        "rollout_id": problem.id,
        "server_url": trainer_url,
        "messages": messages,
        "completion_params": {"temperature": 0.7, "max_tokens": 256},
        "max_turns": 8,
        "max_tokens_total": 4096,
        "metadata": problem.init_metadata(),
        "api_key": DEMO_API_KEY,
    }
    started = trio.current_time()
    while True:
        response = await client.post(f"{server}/v1/rollout/init", json=body)
        if response.status_code != 429:
            break
        await trio.sleep(float(response.headers.get("retry-after", "1")))
    if response.status_code != 202:
        return attrs.evolve(
            _outcome(problem, None, trio.current_time() - started),
            status=f"rejected ({response.status_code})",
            error_message=response.text,
        )
    try:
        result = await trainer.wait_result(problem.id, timeout=result_timeout)
    except TimeoutError:
        result = None
    return _outcome(problem, result, trio.current_time() - started)


async def run_demo(
    problems: Sequence[Problem],
    *,
    concurrency: int = 32,
    result_timeout: float = 120.0,
    config: ServerConfig | None = None,
    console: Console | None = None,
    agent: Agent = calculator_agent,
) -> list[DemoOutcome]:
    """Run every problem through the protocol with ``agent`` (default: the calculator);
    returns one outcome per problem, in order. The simulator calls whatever tools the
    agent advertises (:mod:`rollout.testing`)."""
    console = console or Console()
    config = config or ServerConfig(api_key=None)
    # The trainer refuses callbacks without the key: the demo also proves callback auth.
    trainer = MockTrainer(api_key=DEMO_API_KEY)
    outcomes: list[DemoOutcome | None] = [None] * len(problems)
    stop_server = trio.Event()
    async with trio.open_nursery() as nursery:
        trainer_port = await nursery.start(serve_trainer, trainer, "127.0.0.1", 0)
        # The rollout server gets its own nursery inside the trainer's: it must drain (and
        # deliver) before the trainer goes away.
        async with trio.open_nursery() as server_nursery:
            server_port = await server_nursery.start(
                partial(
                    serve,
                    agent,
                    config,
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=stop_server.wait,
                )
            )
            server = f"http://127.0.0.1:{server_port}"
            trainer_url = f"http://127.0.0.1:{trainer_port}"
            console.print(
                f"trainer simulator on {trainer_url}, rollout server on {server}"
                f" (agent: {agent.name})"
            )
            limiter = trio.CapacityLimiter(concurrency)
            columns = (
                TextColumn("rollouts"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console) as progress:
                bar = progress.add_task("rollouts", total=len(problems))
                limits = httpx.Limits(max_connections=concurrency)
                async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

                    async def send(index: int) -> None:
                        async with limiter:
                            outcomes[index] = await _one(
                                client,
                                server,
                                trainer_url,
                                trainer,
                                problems[index],
                                result_timeout,
                            )
                        progress.advance(bar)

                    async with trio.open_nursery() as senders:
                        for index in range(len(problems)):
                            senders.start_soon(send, index)
            stop_server.set()
        nursery.cancel_scope.cancel()
    return [o for o in outcomes if o is not None]


def summarize(outcomes: Sequence[DemoOutcome], console: Console) -> bool:
    """Print the summary table; True when no rollout was lost, rejected or errored."""
    counts = {
        status: sum(1 for o in outcomes if o.status == status)
        for status in ("COMPLETED", "ERROR", "lost")
    }
    rejected = len(outcomes) - sum(counts.values())
    rewards = [o.reward for o in outcomes if o.reward is not None]
    turns = [o.turns for o in outcomes if o.turns is not None]
    seconds = sorted(o.seconds for o in outcomes)
    table = Table(title="rollout demo", show_header=False)
    table.add_row("rollouts", str(len(outcomes)))
    table.add_row("completed", str(counts["COMPLETED"]))
    table.add_row("errored", str(counts["ERROR"]))
    table.add_row("lost (no result)", str(counts["lost"]))
    if rejected:
        table.add_row("rejected at init", str(rejected))
    table.add_row("mean reward", f"{statistics.fmean(rewards):.3f}" if rewards else "n/a")
    table.add_row("mean turns", f"{statistics.fmean(turns):.2f}" if turns else "n/a")
    if seconds:
        table.add_row("p50 init -> result", f"{quantile(seconds, 0.50) * 1000:.1f} ms")
        table.add_row("p99 init -> result", f"{quantile(seconds, 0.99) * 1000:.1f} ms")
    group_rows(table, [(o.group_id, o.reward) for o in outcomes])
    console.print(table)
    for outcome in outcomes:
        if outcome.status not in ("COMPLETED",):
            console.print(
                f"[red]{outcome.rollout_id}: {outcome.status} {outcome.error_message or ''}[/red]"
            )
    return counts["ERROR"] == 0 and counts["lost"] == 0 and rejected == 0


def group_rows(table: Table, rewards: Sequence[tuple[str | None, float | None]]) -> None:
    """Add GRPO group rows to ``table`` from ``(group_id, reward)`` pairs: per-group mean
    and spread of reward, and the share of groups whose rewards are all equal (no learning
    signal in them). Nothing when no pair has a group. A missing reward counts as 0."""
    groups: dict[str, list[float]] = {}
    for group, reward in rewards:
        if group is not None:
            groups.setdefault(group, []).append(reward or 0.0)
    if not groups:
        return
    means = [statistics.fmean(values) for values in groups.values()]
    spreads = [statistics.pstdev(values) for values in groups.values()]
    flat = sum(1 for values in groups.values() if len(set(values)) == 1)
    table.add_row("groups", str(len(groups)))
    table.add_row("mean group reward", f"{statistics.fmean(means):.3f}")
    table.add_row("mean group spread (std)", f"{statistics.fmean(spreads):.3f}")
    table.add_row("groups with equal rewards", f"{flat / len(groups):.0%} (no learning signal)")


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of already sorted values."""
    index = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def write_outcomes(outcomes: Sequence[DemoOutcome], path: Path) -> None:
    """Write one JSON object per rollout (a JSON array) to ``path``."""
    path.write_text(json.dumps([attrs.asdict(o) for o in outcomes], indent=2) + "\n")
