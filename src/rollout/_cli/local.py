"""``rollout test`` and ``rollout eval``: an agent over a dataset against a chat endpoint
(see :mod:`rollout._local` and :mod:`rollout._eval`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
import trio
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .. import _eval, _local, _validate
from .._dataset import DatasetError, Problem, expand_groups, load_problems
from .._wire.validation import ValidationError
from ..agent import Agent
from .common import DEFAULTS, PROGRESS_COLUMNS, agent_option, checked_agent, configure_logging

__all__ = ["eval_command", "test_command"]

F = TypeVar("F", bound=Callable[..., Any])


def _run_options(function: F) -> F:
    """The options ``test`` and ``eval`` share: the dataset, the endpoint, the budgets and
    the sampling params."""
    options = [
        click.option(
            "-d",
            "--dataset",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            required=True,
            help="Rows (.jsonl, .json, .csv, .parquet): user_prompt, ground_truth, optional"
            " system_prompt and id; or a messages list; other columns go to metadata.",
        ),
        click.option(
            "--prompt-field",
            default="user_prompt",
            show_default=True,
            help="The column holding the prompt.",
        ),
        click.option(
            "--answer-field",
            default="ground_truth",
            show_default=True,
            help="The column holding the expected answer (metadata.ground_truth).",
        ),
        click.option(
            "--base-url",
            default=None,
            help="An OpenAI-compatible endpoint ('/v1' style: vLLM, SGLang, Ollama, OpenAI)."
            " Default: the built-in trainer simulator, offline.",
        ),
        click.option("--model", default=None, help="The model (required with --base-url)."),
        click.option(
            "--api-key",
            envvar="OPENAI_API_KEY",
            default=None,
            show_envvar=True,
            help="Bearer token for --base-url.",
        ),
        click.option("--max-turns", type=click.IntRange(1), default=10, show_default=True),
        click.option(
            "--max-tokens", type=click.IntRange(1), default=512, show_default=True, help="Per turn."
        ),
        click.option("--max-tokens-total", type=click.IntRange(1), default=8192, show_default=True),
        click.option("--temperature", type=click.FloatRange(min=0), default=None),
        click.option("--top-p", type=click.FloatRange(0, 1), default=None),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="KEY=JSON",
            help="Another sampling param, e.g. --param seed=7 (repeatable).",
        ),
        click.option("--limit", type=click.IntRange(1), default=None, help="Run only N rows."),
        click.option("--offset", type=click.IntRange(0), default=0, help="Skip the first N rows."),
        click.option(
            "--rollout-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULTS.rollout_timeout,
            show_default=True,
            help="Wall-clock deadline of one rollout, seconds.",
        ),
        click.option("--debug", is_flag=True, help="Log every request and retry."),
        click.option(
            "--log",
            "trace_dir",
            envvar="ROLLOUT_DEBUG_DIR",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Write one JSONL trace per rollout under DIR/<start time>/.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@attrs.frozen
class _Run:
    """What ``test`` and ``eval`` read from the shared options."""

    problems: list[Problem]
    completion: dict[str, Any]
    max_turns: int
    max_tokens_total: int
    rollout_timeout: float
    trace_dir: Path | None

    @classmethod
    def of(cls, options: dict[str, Any]) -> _Run:
        configure_logging("debug" if options["debug"] else "warning")
        if options["base_url"] is not None and not options["model"]:
            raise click.BadParameter("--model is required with --base-url", param_hint="--model")
        try:
            problems = load_problems(
                options["dataset"],
                prompt_field=options["prompt_field"],
                answer_field=options["answer_field"],
            )[options["offset"] :][: options["limit"]]
        except DatasetError as exc:
            raise click.BadParameter(str(exc), param_hint="--dataset") from None
        completion: dict[str, Any] = {"max_tokens": options["max_tokens"]}
        for key in ("temperature", "top_p"):
            if options[key] is not None:
                completion[key] = options[key]
        for param in options["params"]:
            key, sep, value = param.partition("=")
            try:
                completion[key.strip()] = json.loads(value) if sep else None
            except ValueError:
                completion[key.strip()] = value
        return cls(
            problems,
            completion,
            options["max_turns"],
            options["max_tokens_total"],
            options["rollout_timeout"],
            options["trace_dir"],
        )

    def rows(
        self,
        agent: Agent,
        problems: Sequence[Problem],
        endpoint: _local.Endpoint | None,
        *,
        concurrency: int,
        console: Console,
        label: str,
    ) -> list[_local.RowResult]:
        """Run ``problems`` with a progress bar; against the built-in simulator when
        ``endpoint`` is None. Raises :class:`click.UsageError` for settings that make no
        valid rollout."""

        async def run() -> list[_local.RowResult]:
            async with trio.open_nursery() as nursery:
                target = endpoint
                if target is None:
                    from ..testing import MockTrainer
                    from ..testing import serve as serve_simulator

                    port = await nursery.start(serve_simulator, MockTrainer(), "127.0.0.1", 0)
                    target = _local.Endpoint(f"http://127.0.0.1:{port}")
                with Progress(*PROGRESS_COLUMNS, console=console) as progress:
                    task = progress.add_task(label, total=len(problems))
                    rows = await _local.run_rows(
                        agent,
                        problems,
                        target,
                        completion_params=self.completion,
                        max_turns=self.max_turns,
                        max_tokens_total=self.max_tokens_total,
                        rollout_timeout=self.rollout_timeout,
                        concurrency=concurrency,
                        on_done=lambda _: progress.advance(task),
                        trace_dir=self.trace_dir,
                    )
                nursery.cancel_scope.cancel()
            return rows

        try:
            return trio.run(run)
        except ValidationError as exc:
            raise click.UsageError(f"these settings make no valid rollout: {exc}") from None


def _endpoint(base_url: str | None, model: str | None, key: str | None) -> _local.Endpoint | None:
    return None if base_url is None else _local.Endpoint(base_url.rstrip("/"), model, key)


@click.command("test")
@agent_option
@_run_options
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True)
@click.option(
    "--group-size",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Rollouts per prompt, as GRPO trains on (one group_id in their metadata).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write per-row results (messages, reward, status, turns, tokens, latency) as JSON.",
)
def test_command(
    agent_ref: str, concurrency: int, group_size: int, output: Path | None, **options: Any
) -> None:
    """Run an agent over a dataset, in-process, against a chat-completions endpoint.

    Each row goes through the server's own lifecycle (budgets, tools, deadline, reward).
    Exits non-zero when any row ended in ERROR.
    """
    run = _Run.of(options)
    agent = checked_agent(agent_ref)
    console = Console()
    endpoint = _endpoint(options["base_url"], options["model"], options["api_key"])
    problems = expand_groups(run.problems, group_size)
    rows = run.rows(
        agent, problems, endpoint, concurrency=concurrency, console=console, label="rows"
    )
    ok = _local.summarize(rows, console, title=f"rollout test: {agent.name}")
    if output is not None:
        _local.write_rows(rows, output)
        console.print(f"per-row results written to {output}")
    sys.exit(0 if ok else 1)


@click.command("eval")
@agent_option
@_run_options
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
    run = _Run.of(options)
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
        endpoint = _endpoint(base_url, model, options["api_key"])
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
