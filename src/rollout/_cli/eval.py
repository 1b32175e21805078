"""``rollout eval``: a model benchmarked with an agent (see :mod:`rollout._eval`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
from rich.console import Console
from rich.table import Table

from .. import _eval, _validate
from .._trace import safe_name
from .common import agent_option, checked_agent
from .local import Run, endpoint_of, run_options

__all__ = ["eval_command"]


@click.command("eval")
@agent_option
@run_options
@click.option(
    "--n", "n", type=click.IntRange(1), default=1, show_default=True, help="Samples per row."
)
@click.option(
    "--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Rollouts at once."
)
@click.option(
    "--eval-fn",
    default=None,
    metavar="MODULE:FN",
    help="Score with FN(trajectory) -> float instead of the agent's reward.",
)
@click.option(
    "--pass-threshold",
    type=float,
    default=1.0,
    show_default=True,
    help="A sample passes (for pass@k) when its score is at least this.",
)
@click.option("--baseline-model", default=None, help="Compare with this model, same rows.")
@click.option(
    "--baseline-base-url", default=None, help="Where the baseline model is (default: --base-url)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report (with per-row rewards) as JSON.",
)
def eval_command(
    agent_ref: str,
    n: int,
    batch_size: int,
    eval_fn: str | None,
    pass_threshold: float,
    baseline_model: str | None,
    baseline_base_url: str | None,
    as_json: bool,
    output: Path | None,
    **options: Any,
) -> None:
    """Benchmark a model with an agent: N samples per row, mean and spread of the score,
    pass@k for k = 1..N (Chen et al. 2021), optionally side by side with a baseline."""
    run = Run.of(options)
    agent = checked_agent(agent_ref)
    if eval_fn is not None:
        agent = attrs.evolve(agent, reward=_load_function(eval_fn))
    console = Console(stderr=as_json)
    samples = [
        attrs.evolve(problem, id=_eval.sample_id(problem.id, index))
        for problem in run.problems
        for index in range(n)
    ]
    targets = [(options["model"] or "simulator", options["base_url"], options["model"])]
    if baseline_model is not None:
        base = baseline_base_url or options["base_url"]
        if base is None:
            raise click.BadParameter(
                "needs --baseline-base-url or --base-url", param_hint="--baseline-model"
            )
        targets.append((baseline_model, base, baseline_model))
    reports = []
    for label, base_url, model in targets:
        endpoint = endpoint_of(base_url, model, options["api_key"])
        if run.trace_dir is not None:  # one trace directory per model
            run = attrs.evolve(run, trace_dir=options["trace_dir"] / safe_name(label))
        rows = run.rows(
            agent, samples, endpoint, concurrency=batch_size, console=console, label=label
        )
        reports.append(_eval.report(label, rows, n=n, threshold=pass_threshold))
    body = {"agent": agent.name, "reports": [r.to_json() for r in reports]}
    if output is not None:
        output.write_text(json.dumps(body, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(body))
    else:
        _print_reports(reports, console)
    sys.exit(0 if all(r.errored == 0 for r in reports) else 1)


def _print_reports(reports: Sequence[_eval.EvalReport], console: Console) -> None:
    table = Table(title="rollout eval")
    table.add_column("")
    for report in reports:
        table.add_column(report.label, justify="right")

    def row(name: str, value: Callable[[_eval.EvalReport], str]) -> None:
        table.add_row(name, *(value(r) for r in reports))

    row("rows x samples", lambda r: f"{r.rows} x {r.n}")
    row("errored", lambda r: str(r.errored))
    row("mean score", lambda r: "n/a" if r.mean_reward is None else f"{r.mean_reward:.3f}")
    row("std score", lambda r: "n/a" if r.std_reward is None else f"{r.std_reward:.3f}")
    row("rows with equal scores", lambda r: "n/a" if r.flat_rows is None else f"{r.flat_rows:.0%}")
    for k in range(1, max(r.n for r in reports) + 1):
        row(f"pass@{k}", lambda r, k=k: f"{r.pass_at[k]:.3f}" if k in r.pass_at else "")  # type: ignore[misc]
    console.print(table)


def _load_function(reference: str) -> Callable[..., Any]:
    module_name, _, name = reference.partition(":")
    try:
        module = _validate.import_module(module_name)
        function = getattr(module, name)
    except (_validate.AgentLoadError, AttributeError) as exc:
        raise click.BadParameter(str(exc) or f"no {reference}", param_hint="--eval-fn") from None
    if not callable(function):
        raise click.BadParameter(f"{reference} is not callable", param_hint="--eval-fn")
    return function  # type: ignore[no-any-return]
