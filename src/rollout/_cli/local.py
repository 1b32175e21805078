"""``rollout test`` and ``rollout eval``: an agent over a dataset against a chat endpoint
(see :mod:`rollout._local` and :mod:`rollout._eval`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
import trio
from rich.console import Console
from rich.progress import Progress

from .. import _local
from .._dataset import DatasetError, Problem, expand_groups, load_problems
from .._wire.validation import ValidationError
from ..agent import Agent
from .common import (
    DEFAULTS,
    PROGRESS_COLUMNS,
    agent_option,
    checked_agent,
    configure_logging,
    group_size_option,
)

__all__ = ["Run", "endpoint_of", "run_options", "test_command"]

F = TypeVar("F", bound=Callable[..., Any])


def run_options(function: F) -> F:
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
class Run:
    """What ``test`` and ``eval`` read from the shared options."""

    problems: list[Problem]
    completion: dict[str, Any]
    max_turns: int
    max_tokens_total: int
    rollout_timeout: float
    trace_dir: Path | None

    @classmethod
    def of(cls, options: dict[str, Any]) -> Run:
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
        """Run ``problems`` with a progress bar (see :meth:`_on`)."""

        async def work(target: _local.Endpoint) -> list[_local.RowResult]:
            with Progress(*PROGRESS_COLUMNS, console=console) as progress:
                task = progress.add_task(label, total=len(problems))
                return await _local.run_rows(
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

        return self._on(endpoint, work)

    def interactive(
        self,
        agent: Agent,
        problems: Sequence[Problem],
        endpoint: _local.Endpoint | None,
        *,
        start_row: int,
        console: Console,
    ) -> list[_local.RowResult]:
        """Step through ``problems`` (:mod:`rollout._cli.interactive`)."""
        from .interactive import run_interactive

        async def work(target: _local.Endpoint) -> list[_local.RowResult]:
            return await run_interactive(
                agent,
                problems,
                target,
                start_row=start_row,
                completion_params=self.completion,
                max_turns=self.max_turns,
                max_tokens_total=self.max_tokens_total,
                rollout_timeout=self.rollout_timeout,
                console=console,
                ask=_ask,
            )

        return self._on(endpoint, work)

    @staticmethod
    def _on(
        endpoint: _local.Endpoint | None,
        work: Callable[[_local.Endpoint], Awaitable[list[_local.RowResult]]],
    ) -> list[_local.RowResult]:
        """``work`` on ``endpoint``, or on the built-in simulator served on loopback when it
        is None. Raises :class:`click.UsageError` for settings that make no valid rollout."""

        async def run() -> list[_local.RowResult]:
            async with trio.open_nursery() as nursery:
                target = endpoint
                if target is None:
                    from ..testing import MockTrainer
                    from ..testing import serve as serve_simulator

                    port = await nursery.start(serve_simulator, MockTrainer(), "127.0.0.1", 0)
                    target = _local.Endpoint(f"http://127.0.0.1:{port}")
                rows = await work(target)
                nursery.cancel_scope.cancel()
            return rows

        try:
            return trio.run(run)
        except ValidationError as exc:
            raise click.UsageError(f"these settings make no valid rollout: {exc}") from None


async def _ask(prompt: str) -> str:
    """A line from the terminal, read off the event loop; end of input means quit."""

    def read() -> str:
        try:
            return input(prompt)
        except EOFError:
            return "q"

    return await trio.to_thread.run_sync(read, abandon_on_cancel=True)


def endpoint_of(base_url: str | None, model: str | None, key: str | None) -> _local.Endpoint | None:
    return None if base_url is None else _local.Endpoint(base_url.rstrip("/"), model, key)


@click.command("test")
@agent_option
@run_options
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True)
@group_size_option
@click.option(
    "-i",
    "--interactive",
    is_flag=True,
    help="Step through each LLM call of each row (next, continue, skip, jump, quit).",
)
@click.option(
    "--row",
    "start_row",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="With -i: the row (1-based) to start at.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write per-row results (messages, reward, status, turns, tokens, latency) as JSON.",
)
def test_command(
    agent_ref: str,
    concurrency: int,
    group_size: int,
    interactive: bool,
    start_row: int,
    output: Path | None,
    **options: Any,
) -> None:
    """Run an agent over a dataset, in-process, against a chat-completions endpoint.

    Each row goes through the server's own lifecycle (budgets, tools, deadline, reward).
    Exits non-zero when any row ended in ERROR.
    """
    run = Run.of(options)
    agent = checked_agent(agent_ref)
    console = Console()
    endpoint = endpoint_of(options["base_url"], options["model"], options["api_key"])
    problems = expand_groups(run.problems, group_size)
    if interactive:
        rows = run.interactive(agent, problems, endpoint, start_row=start_row, console=console)
    else:
        rows = run.rows(
            agent, problems, endpoint, concurrency=concurrency, console=console, label="rows"
        )
    ok = _local.summarize(rows, console, title=f"rollout test: {agent.name}")
    if output is not None:
        _local.write_rows(rows, output)
        console.print(f"per-row results written to {output}")
    sys.exit(0 if ok else 1)
