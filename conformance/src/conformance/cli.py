"""``python -m conformance --target URL``: check a rollout server, print a rule table.

Exit status: 0 when every selected rule passed, 1 when any failed or could not run,
2 for bad usage (click).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import click
import trio
from rich.console import Console

from .case import Case, InvalidInit, case_from_json
from .exchange import Exchange, InvalidExchange
from .report import exchange_to_json, print_outcomes, write_report
from .rules import RULES, Rule, select_rules
from .runner import GRACE, Outcome, Runner, RunSettings, TargetError, open_runner
from .search import check_rules

__all__ = ["main"]


def _rules_help() -> str:
    return "Comma-separated rule names, or core / strict / all. Rules: " + ", ".join(
        f"{rule.name} ({rule.level})" for rule in RULES
    )


@click.command()
@click.option("--target", required=True, help="Base URL of the rollout server under test.")
@click.option("--rules", "rule_names", default="all", show_default=True, help=_rules_help())
@click.option(
    "--examples", type=click.IntRange(1), default=25, show_default=True, help="Examples per rule."
)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON here.")
@click.option(
    "--result-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds a result may take after the 202 (plus the delays the case scripts).",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Seconds to keep listening after a rollout's first result, for a second, "
    f"different one (rules about results; the others listen at most {GRACE:g} s).",
)
@click.option(
    "--slow",
    type=click.FloatRange(min=0),
    default=6.0,
    show_default=True,
    help="Seconds a 'slow' trainer fault holds a chat answer back (beyond common client timeouts).",
)
@click.option(
    "--shrink-budget",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds spent shrinking a failure to a minimal case (0: report it unshrunk).",
)
@click.option("--seed", type=int, default=None, help="Hypothesis seed, for a reproducible run.")
@click.option(
    "--trainer-host", default="127.0.0.1", show_default=True, help="Bind the trainer here."
)
@click.option("--trainer-port", type=click.IntRange(0, 65535), default=0, show_default=True)
@click.option(
    "--trainer-url",
    default=None,
    help="The trainer's base URL as the server reaches it (default http://HOST:PORT).",
)
@click.option(
    "--server-api-key",
    envvar="CONFORMANCE_SERVER_API_KEY",
    default=None,
    help="The target's inbound API key, sent on init (never logged).",
)
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run one case (a failing_case from a report) and check every selected rule.",
)
def main(
    target: str,
    rule_names: str,
    examples: int,
    report: Path | None,
    result_timeout: float,
    settle: float,
    slow: float,
    shrink_budget: float,
    seed: int | None,
    trainer_host: str,
    trainer_port: int,
    trainer_url: str | None,
    server_api_key: str | None,
    replay: Path | None,
) -> None:
    """Check the rollout server at --target against the Remote Rollout Protocol rules."""
    logging.basicConfig(level=logging.WARNING)
    try:
        rules = select_rules(rule_names.split(","))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rules") from None
    settings = RunSettings(
        examples=examples,
        result_timeout=result_timeout,
        settle=settle,
        slow=slow,
        shrink_budget=shrink_budget,
        seed=seed,
    )
    console = Console()
    case = None if replay is None else _read_case(replay)

    async def run() -> list[Outcome]:
        async with open_runner(
            target,
            settings,
            trainer_host=trainer_host,
            trainer_port=trainer_port,
            trainer_url=trainer_url,
            server_api_key=server_api_key,
        ) as runner:
            console.print(f"target {runner.target}, trainer at {runner.trainer_url}")
            if case is not None:
                return await _replay(runner, case, rules, console)
            return await check_rules(
                runner, rules, on_outcome=lambda o: console.print(f"{o.rule.name}: {o.verdict}")
            )

    try:
        outcomes: list[Outcome] = trio.run(run)
    except (TargetError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    except BaseExceptionGroup as group:  # raised through Trio nurseries
        matched, _ = group.split((TargetError, OSError))
        if matched is None:
            raise
        raise click.ClickException(str(_first_leaf(matched))) from None
    print_outcomes(outcomes, console)
    if report is not None:
        write_report(report, target, outcomes)
        console.print(f"report written to {report}")
    raise SystemExit(0 if all(o.verdict == "pass" for o in outcomes) else 1)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _read_case(path: Path) -> Case | InvalidInit:
    """The case in ``path``: a report's ``failing_case``, or a case written by hand."""
    try:
        data = json.loads(path.read_text())
        data = data.get("failing_case", data)
        return case_from_json(data.get("case", data))
    except (ValueError, AttributeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--replay") from None


async def _replay(
    runner: Runner, case: Case | InvalidInit, rules: Sequence[Rule], console: Console
) -> list[Outcome]:
    """Run one case and check every selected rule that applies to its kind."""
    exchange: Exchange | InvalidExchange
    if isinstance(case, Case):
        exchange = await runner.run_case(case)
    else:
        exchange = await runner.run_invalid(case)
    outcomes = []
    for rule in rules:
        if (rule.focus == "invalid_init") == isinstance(case, Case):
            continue
        violations = rule.check(exchange)
        verdict: Literal["pass", "fail"] = "fail" if violations else "pass"
        outcomes.append(Outcome(rule, verdict, 1, tuple(violations), exchange))
    console.print_json(json.dumps(exchange_to_json(exchange), default=str))
    return outcomes
