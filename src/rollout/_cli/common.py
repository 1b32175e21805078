"""What the ``rollout`` commands share: loading and checking the agent, its option,
logging, the defaults (from :class:`~rollout.ServerConfig`: one place) and progress bars."""

from __future__ import annotations

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
