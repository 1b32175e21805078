"""What the ``rollout`` commands share: loading and checking the agent, its option,
logging, the defaults (from :class:`~rollout.ServerConfig`: one place) and progress bars."""

from __future__ import annotations

import gc
import logging
import sys

import click
import stamina
import structlog
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from .. import _validate
from ..agent import Agent
from ..config import ServerConfig

__all__ = [
    "DEFAULTS",
    "DEFAULT_AGENT",
    "PROGRESS_COLUMNS",
    "agent_option",
    "checked_agent",
    "configure_logging",
    "group_size_option",
    "load_agent",
    "raise_open_files_limit",
    "tune_gc",
]

DEFAULT_AGENT = "rollout.examples.calculator:agent"
#: Every default of ``rollout serve`` comes from here: one place, not three.
DEFAULTS = ServerConfig()
PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
)


def load_agent(reference: str) -> Agent:
    """The agent at ``module:name`` (see :func:`rollout._validate.load_agent`); a
    :class:`click.BadParameter` (exit 2, one line) when it cannot be loaded."""
    try:
        return _validate.load_agent(reference)
    except _validate.AgentLoadError as exc:
        raise click.BadParameter(str(exc), param_hint="-m") from None


def checked_agent(reference: str) -> Agent:
    """:func:`load_agent`, then :func:`rollout._validate.check_agent`: a
    :class:`click.ClickException` (exit 1) listing every problem, one per line."""
    agent = load_agent(reference)
    if problems := _validate.check_agent(agent):
        lines = "\n".join(f"  {problem}" for problem in problems)
        raise click.ClickException(f"agent {reference} is not valid:\n{lines}")
    return agent


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level``: one readable line per message, or with ``log_format``
    "json" one JSON object per line (structlog), with the ``rollout_id`` of the rollout a
    line is about (bound in its task, see :func:`rollout._server.supervisor`)."""
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[
                    structlog.contextvars.merge_contextvars,
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                ],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
            )
        )
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(
            level=level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    # httpx logs every request at INFO: one line per LLM turn is noise at the default level.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    # The trainer client logs each retry with its URL, attempt, wait and cause; stamina's
    # own line ("stamina.retry_scheduled") would only repeat it without saying what.
    stamina.instrumentation.set_on_retry_hooks([])


#: ``--group-size``: rollouts per prompt, for demo and test.
group_size_option = click.option(
    "--group-size",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Rollouts per prompt, as GRPO trains on (one group_id in their metadata).",
)

#: ``-m/--module``: the agent of serve, validate (and what comes next).
agent_option = click.option(
    "-m",
    "--module",
    "agent_ref",
    default=DEFAULT_AGENT,
    show_default=True,
    help="The agent, as module:name.",
)


#: Allocations between two young-generation collections of the cyclic garbage collector
#: (CPython's default is 700). See :func:`tune_gc`.
GC_YOUNG_THRESHOLD = 10_000
#: Young collections between two of the middle generation (CPython's default is 10): with
#: :data:`GC_YOUNG_THRESHOLD`, one every 5,000,000 allocations. See :func:`tune_gc`.
GC_MIDDLE_THRESHOLD = 500


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a server holding thousands of rollouts.

    With CPython's defaults, collections took ~18% of the server's CPU at 1,024 rollouts in
    flight, and their pauses were most of the ``202`` latency's spikes at thousands in
    flight (docs/PERFORMANCE.md): a young collection every 700 allocations, and each older
    one walking every object alive, imported modules included. Here: what exists once the
    agent is loaded is frozen (never walked again), young collections come every
    :data:`GC_YOUNG_THRESHOLD` allocations (a pause grows with it: 30-45 ms at 50,000 on
    the benchmark machine, under 25 ms at 10,000), the middle generation after
    :data:`GC_MIDDLE_THRESHOLD` of them (it walks every rollout's objects: rarely) and the
    oldest after 100 of those (CPython: 10 and 10). Reference counting still frees nearly
    everything at once; only reference cycles wait longer to be freed."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, 100)


def raise_open_files_limit() -> None:
    """Raise this process's open-files limit to its hard limit: every rollout's chat call
    holds a connection, and 1024 (a common soft limit) would cap rollouts in flight."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return
        logging.getLogger("rollout").debug("open files limit: %d (was %d)", target, soft)
