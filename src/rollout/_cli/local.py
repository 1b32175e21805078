"""``rollout test``: an agent over a dataset against a chat endpoint (see
:mod:`rollout._local`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import trio
from rich.console import Console
from rich.progress import Progress

from .. import _local
from .._wire.validation import ValidationError
from ..demo import DatasetError, load_problems
from .common import DEFAULTS, PROGRESS_COLUMNS, agent_option, checked_agent, configure_logging

__all__ = ["test_command"]


@click.command("test")
@agent_option
@click.option(
    "-d",
    "--dataset",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="JSONL rows: id, user_prompt, ground_truth, system_prompt (optional).",
)
@click.option(
    "--base-url",
    default=None,
    help="An OpenAI-compatible endpoint ('/v1' style: vLLM, SGLang, Ollama, OpenAI)."
    " Default: the built-in trainer simulator, offline.",
)
@click.option("--model", default=None, help="The model to ask (required with --base-url).")
@click.option(
    "--api-key",
    envvar="OPENAI_API_KEY",
    default=None,
    show_envvar=True,
    help="Bearer token for --base-url.",
)
@click.option("--max-turns", type=click.IntRange(1), default=10, show_default=True)
@click.option(
    "--max-tokens", type=click.IntRange(1), default=512, show_default=True, help="Per turn."
)
@click.option("--max-tokens-total", type=click.IntRange(1), default=8192, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=None)
@click.option("--top-p", type=click.FloatRange(0, 1), default=None)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=JSON",
    help="Another sampling param, e.g. --param seed=7 (repeatable).",
)
@click.option("--limit", type=click.IntRange(1), default=None, help="Run only N rows.")
@click.option("--offset", type=click.IntRange(0), default=0, help="Skip the first N rows.")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True)
@click.option(
    "--rollout-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.rollout_timeout,
    show_default=True,
    help="Wall-clock deadline of one row, seconds.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write per-row results (messages, reward, status, turns, tokens, latency) as JSON.",
)
@click.option("--debug", is_flag=True, help="Log every request and retry.")
def test_command(
    agent_ref: str,
    dataset: Path,
    base_url: str | None,
    model: str | None,
    api_key: str | None,
    max_turns: int,
    max_tokens: int,
    max_tokens_total: int,
    temperature: float | None,
    top_p: float | None,
    params: tuple[str, ...],
    limit: int | None,
    offset: int,
    concurrency: int,
    rollout_timeout: float,
    output: Path | None,
    debug: bool,
) -> None:
    """Run an agent over a dataset, in-process, against a chat-completions endpoint.

    Each row goes through the server's own lifecycle (budgets, tools, deadline, reward).
    Exits non-zero when any row ended in ERROR.
    """
    configure_logging("debug" if debug else "warning")
    agent = checked_agent(agent_ref)
    if base_url is not None and not model:
        raise click.BadParameter("--model is required with --base-url", param_hint="--model")
    try:
        problems = load_problems(dataset)[offset:][:limit]
    except DatasetError as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from None
    completion: dict[str, object] = {"max_tokens": max_tokens}
    if temperature is not None:
        completion["temperature"] = temperature
    if top_p is not None:
        completion["top_p"] = top_p
    for param in params:
        key, sep, value = param.partition("=")
        try:
            completion[key.strip()] = json.loads(value) if sep else None
        except ValueError:
            completion[key.strip()] = value
    console = Console()

    async def run() -> list[_local.RowResult]:
        async with trio.open_nursery() as nursery:
            if base_url is None:
                from ..testing import MockTrainer
                from ..testing import serve as serve_simulator

                port = await nursery.start(serve_simulator, MockTrainer(), "127.0.0.1", 0)
                endpoint = _local.Endpoint(f"http://127.0.0.1:{port}")
            else:
                endpoint = _local.Endpoint(base_url.rstrip("/"), model, api_key)
            with Progress(*PROGRESS_COLUMNS, console=console) as progress:
                task = progress.add_task("rows", total=len(problems))
                rows = await _local.run_rows(
                    agent,
                    problems,
                    endpoint,
                    completion_params=completion,
                    max_turns=max_turns,
                    max_tokens_total=max_tokens_total,
                    rollout_timeout=rollout_timeout,
                    concurrency=concurrency,
                    on_done=lambda _: progress.advance(task),
                )
            nursery.cancel_scope.cancel()
        return rows

    try:
        rows = trio.run(run)
    except ValidationError as exc:
        raise click.UsageError(f"these settings make no valid rollout: {exc}") from None
    ok = _local.summarize(rows, console, title=f"rollout test: {agent.name}")
    if output is not None:
        _local.write_rows(rows, output)
        console.print(f"per-row results written to {output}")
    sys.exit(0 if ok else 1)
