"""Reports: the rule table on the terminal, and a JSON file with replayable failures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.table import Table

from .case import case_to_json
from .exchange import Exchange, InvalidExchange
from .runner import Outcome

__all__ = ["exchange_to_json", "outcome_to_json", "print_outcomes", "write_report"]

_STYLE = {"pass": "green", "fail": "bold red", "error": "yellow"}


def exchange_to_json(exchange: Exchange | InvalidExchange) -> dict[str, Any]:
    """The case (replayable with ``--replay``) and its wire log, as JSON-able data."""
    data: dict[str, Any] = {"case": case_to_json(exchange.case), "server_url": exchange.server_url}
    if isinstance(exchange, Exchange):
        data["inits"] = [attrs.asdict(answer) for answer in exchange.inits]
        data["acknowledged"] = exchange.acknowledged
    else:
        data["init_status"] = exchange.status
        data["init_answer"] = exchange.body
    data["wire"] = [attrs.asdict(entry) for entry in exchange.wire]
    return data


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    rule = outcome.rule
    data: dict[str, Any] = {
        "rule": rule.name,
        "level": rule.level,
        "cites": rule.cites,
        "verdict": outcome.verdict,
        "examples": outcome.examples,
    }
    if outcome.violations:
        data["violations"] = list(outcome.violations)
    if outcome.note:
        data["note"] = outcome.note
    if outcome.exchange is not None:
        data["failing_case"] = exchange_to_json(outcome.exchange)
    return data


def print_outcomes(outcomes: Sequence[Outcome], console: Console, *, verbose: bool = True) -> None:
    """The rule table, then each failure's minimal case and wire log."""
    table = Table(title="rollout protocol conformance")
    for column in ("rule", "level", "cites", "verdict", "examples"):
        table.add_column(column)
    for outcome in outcomes:
        style = _STYLE[outcome.verdict]
        table.add_row(
            outcome.rule.name,
            outcome.rule.level,
            outcome.rule.cites,
            f"[{style}]{outcome.verdict}[/{style}]",
            str(outcome.examples),
        )
    console.print(table)
    for outcome in outcomes:
        if outcome.verdict == "pass":
            continue
        console.rule(f"{outcome.rule.name}: {outcome.verdict}")
        console.print(outcome.rule.summary)
        for violation in outcome.violations:
            console.print(f"  - {violation}", markup=False)
        if outcome.note:
            console.print(f"  ({outcome.note})", markup=False)
        if verbose and outcome.exchange is not None:
            console.print("minimal failing case and its wire log (replay with --replay FILE):")
            console.print_json(json.dumps(exchange_to_json(outcome.exchange), default=str))


def write_report(path: Path, target: str, outcomes: Sequence[Outcome]) -> None:
    """Write the JSON report: target, per-rule verdicts, failing cases with wire logs."""
    data = {
        "target": target,
        "passed": all(o.verdict == "pass" for o in outcomes),
        "rules": [outcome_to_json(o) for o in outcomes],
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
