"""The ``rollout`` command line: ``serve``, ``validate``, ``test`` and ``demo``."""

from __future__ import annotations

import json
import logging
import sys
from functools import partial
from pathlib import Path

import click
import trio
from rich.console import Console

from . import _validate
from ._cli.common import (
    DEFAULTS,
    agent_option,
    checked_agent,
    configure_logging,
    group_size_option,
)
from ._cli.eval import eval_command
from ._cli.host import raise_open_files_limit, tune_gc, warn_capacity
from ._cli.local import test_command
from ._cli.trace import trace_command
from ._server.serve import check_store, serve
from .config import ServerConfig
from .errors import RolloutError


@click.group()
@click.version_option(package_name="rollout")
def main() -> None:
    """A rollout server for RL training of LLM agents (the Remote Rollout Protocol)."""


@main.command("serve")
@agent_option
@click.option(
    "--host", envvar="ROLLOUT_SERVER_HOST", default="0.0.0.0", show_default=True, show_envvar=True
)
@click.option(
    "-p",
    "--port",
    envvar="ROLLOUT_SERVER_PORT",
    type=click.IntRange(0, 65535),
    default=9000,
    show_default=True,
    show_envvar=True,
)
@click.option(
    "--api-key",
    envvar="ROLLOUT_SERVER_API_KEY",
    default=None,
    show_envvar=True,
    help="Require 'Authorization: Bearer KEY' on /v1/rollout/init.",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(1),
    default=DEFAULTS.max_concurrent_rollouts,
    show_default=True,
    help="Rollouts running at once; the rest queue.",
)
@click.option(
    "--max-queued",
    type=click.IntRange(0),
    default=DEFAULTS.max_queued_rollouts,
    show_default=True,
    help="Unfinished rollouts beyond --max-concurrent before 429.",
)
@click.option(
    "--rollout-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.rollout_timeout,
    show_default=True,
    help="Wall-clock deadline of one rollout, seconds.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULTS.drain_timeout,
    show_default=True,
    help="On SIGTERM/SIGINT, seconds unfinished rollouts may go on.",
)
@click.option(
    "--store",
    envvar="ROLLOUT_SERVER_STORE",
    default="sqlite:rollout-store.db",
    show_default=True,
    show_envvar=True,
    metavar="memory|sqlite:PATH|redis://HOST:PORT/DB",
    help="Where idempotency records, rollout state and undelivered results live: sqlite"
    " (durable; shared by the workers of one host), redis (shared by many hosts; needs"
    " rollout[redis]) or memory (lost when the process stops).",
)
@click.option(
    "--lease-ttl",
    envvar="ROLLOUT_SERVER_LEASE_TTL",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.lease_ttl,
    show_default=True,
    show_envvar=True,
    help="Seconds after a worker's last renewal before live workers take its rollouts over.",
)
@click.option(
    "-w",
    "--workers",
    envvar="ROLLOUT_SERVER_WORKERS",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    show_envvar=True,
    help="Worker processes on one port, sharing --store (sqlite or redis); one SIGTERM"
    " drains them all, and a worker that dies is replaced while the others take over its"
    " rollouts.",
)
@click.option("--listen-fd", type=int, default=None, hidden=True)  # set for each worker
@click.option(
    "--log",
    "trace_dir",
    envvar="ROLLOUT_DEBUG_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    show_envvar=True,
    help="Write one JSONL trace per rollout under DIR/<start time>/ (rollout trace reads them).",
)
@click.option(
    "--allow-trainer",
    "allow_trainers",
    envvar="ROLLOUT_SERVER_ALLOW_TRAINER",
    multiple=True,
    show_envvar=True,
    metavar="HOST[:PORT]|CIDR",
    help="Trainers the server may connect to (repeatable; the environment variable takes a"
    " space-separated list). Default: any, but link-local and cloud metadata addresses.",
)
@click.option(
    "--max-response-bytes",
    type=click.IntRange(1),
    default=DEFAULTS.max_response_bytes,
    show_default=True,
    help="Largest trainer answer read; a larger one fails its rollout.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line, with rollout_id on a rollout's lines.",
)
@click.option(
    "--reload",
    is_flag=True,
    help="Restart when a .py file under the current directory changes (for development).",
)
def serve_command(
    agent_ref: str,
    host: str,
    port: int,
    api_key: str | None,
    max_concurrent: int,
    max_queued: int,
    rollout_timeout: float,
    drain_timeout: float,
    store: str,
    lease_ttl: float,
    workers: int,
    listen_fd: int | None,
    trace_dir: Path | None,
    allow_trainers: tuple[str, ...],
    max_response_bytes: int,
    log_level: str,
    log_format: str,
    reload: bool,
) -> None:
    """Serve an agent until SIGTERM or SIGINT, then drain gracefully.

    Before exposing the port beyond loopback, set --api-key and --allow-trainer (see
    docs/SECURITY.md).
    """
    configure_logging(log_level, log_format)
    agent = checked_agent(agent_ref)
    if reload and workers > 1:
        raise click.UsageError("--reload serves one process: leave out --workers")
    if reload:
        _serve_with_reload()
    if listen_fd is None:  # not a worker: the process that sees every worker's share
        warn_capacity(max_concurrent, processes=workers)
    else:
        raise_open_files_limit()
    try:
        config = ServerConfig(
            api_key=api_key or None,
            max_concurrent_rollouts=max_concurrent,
            max_queued_rollouts=max_queued,
            rollout_timeout=rollout_timeout,
            drain_timeout=drain_timeout,
            store=store,
            lease_ttl=lease_ttl,
            allow_trainers=allow_trainers,
            max_response_bytes=max_response_bytes,
            trace_dir=trace_dir,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow-trainer") from None

    if workers > 1 and listen_fd is None:
        if store == "memory":
            raise click.BadParameter(
                "workers share the store: use sqlite:PATH or redis://", param_hint="--store"
            )
        _serve_workers(workers, config, host, port)

    tune_gc()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                partial(serve, agent, config, host=host, port=port, listen_fd=listen_fd)
            )
            auth = "required" if config.api_key else "not required"
            logging.getLogger("rollout").info(
                "rollout server listening on http://%s:%d (agent %s, inbound API key %s)",
                host,
                bound,
                agent.name,
                auth,
            )

    try:
        trio.run(run)
    except BaseExceptionGroup as group:  # raised through Trio nurseries
        ours, _ = group.split(RolloutError)
        if ours is not None:
            raise click.ClickException(str(_leaf(ours))) from None
        matched, _ = group.split(OSError)
        if matched is None:
            raise
        raise click.ClickException(f"cannot listen on {host}:{port}: {_leaf(matched)}") from None
    except RolloutError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None


def _serve_workers(workers: int, config: ServerConfig, host: str, port: int) -> None:
    """Check the store, then run ``workers`` copies of this same command as worker
    processes (:mod:`rollout._cli.workers`); returns only by exiting."""
    from ._cli.workers import serve_workers

    try:
        trio.run(check_store, config)
        code = serve_workers(workers, host, port, sys.argv[1:])
    except BaseExceptionGroup as group:
        raise click.ClickException(str(_leaf(group))) from None
    except (RolloutError, OSError) as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from None
    sys.exit(code)


def _serve_with_reload() -> None:
    """Run this same ``rollout serve`` (without ``--reload``) in a child process, restarted
    by watchfiles when a ``.py`` file under the current directory changes; returns only by
    exiting."""
    import shlex

    import watchfiles

    arguments = [a for a in sys.argv[1:] if a != "--reload"]
    command = shlex.join([sys.executable, "-m", "rollout", *arguments])
    log = logging.getLogger("rollout")

    def changed(changes: set[tuple[watchfiles.Change, str]]) -> None:
        names = ", ".join(sorted({Path(path).name for _, path in changes}))
        log.warning("reload: %s changed, restarting the server", names)

    log.info("reload: watching %s for .py changes", Path.cwd())
    watchfiles.run_process(
        Path.cwd(),
        target=command,
        target_type="command",
        callback=changed,
        watch_filter=watchfiles.PythonFilter(),
    )
    sys.exit(0)


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


@main.command("validate")
@agent_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def validate_command(agent_ref: str, as_json: bool) -> None:
    """Import an agent and check it without serving: tool schemas, reward and loop.

    Exit status 0 when valid, 1 when it has problems, 2 when it cannot be loaded. One line
    per problem, never a traceback.
    """
    try:
        agent = _validate.load_agent(agent_ref)
    except _validate.AgentLoadError as exc:
        if as_json:
            click.echo(json.dumps({"agent": agent_ref, "valid": False, "load_error": str(exc)}))
        else:
            click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    problems = _validate.check_agent(agent)
    if as_json:
        report = {
            "agent": agent_ref,
            "name": agent.name,
            "valid": not problems,
            "tools": [tool.name for tool in agent.tools],
            "problems": [{"check": p.check, "message": p.message} for p in problems],
        }
        click.echo(json.dumps(report))
    elif problems:
        for problem in problems:
            click.echo(f"{agent_ref}: {problem}", err=True)
    else:
        tools = ", ".join(tool.name for tool in agent.tools) or "none"
        click.echo(f"{agent_ref}: agent {agent.name!r} is valid (tools: {tools})")
    sys.exit(1 if problems else 0)


@main.command("demo")
@agent_option
@click.option(
    "--dataset",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Problems (.jsonl, .json, .csv, .parquet; default: the bundled 124 calculator problems).",
)
@click.option(
    "--limit", type=click.IntRange(1), default=None, help="Run only the first N problems."
)
@group_size_option
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Rollouts in flight at once.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("rollout-demo-results.json"),
    show_default=True,
    help="Where to write per-rollout results.",
)
@click.option(
    "--result-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds to wait for a result before counting it lost.",
)
def demo_command(
    agent_ref: str,
    dataset: Path | None,
    limit: int | None,
    group_size: int,
    concurrency: int,
    output: Path,
    result_timeout: float,
) -> None:
    """Run the trainer simulator and a rollout server on loopback and push a dataset
    through, with the calculator or any agent (-m).

    Exits non-zero when any rollout was lost, rejected or ended in ERROR.
    """
    agent = checked_agent(agent_ref)
    from ._dataset import DatasetError, expand_groups, load_problems
    from .demo import run_demo, summarize, write_outcomes

    configure_logging("warning")
    console = Console()
    try:
        problems = expand_groups(load_problems(dataset)[:limit], group_size)
    except DatasetError as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from None
    outcomes = trio.run(
        partial(
            run_demo,
            problems,
            concurrency=concurrency,
            result_timeout=result_timeout,
            console=console,
            agent=agent,
        )
    )
    ok = summarize(outcomes, console)
    write_outcomes(outcomes, output)
    console.print(f"per-rollout results written to {output}")
    sys.exit(0 if ok else 1)


main.add_command(test_command)
main.add_command(eval_command)
main.add_command(trace_command)
