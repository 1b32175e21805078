"""The rule registry: a :class:`Rule` is a check registered with :func:`rule`, next to it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import attrs

__all__ = ["Focus", "Level", "Rule", "all_rules", "rule", "select_rules"]

Level = Literal["core", "strict"]
#: Which situations a rule needs: see :func:`conformance.strategies.cases_for`.
Focus = Literal[
    "rollout",
    "budget",
    "faults",
    "duplicate",
    "changed",
    "params",
    "error",
    "invalid_init",
    "stateful",
    "tool_results",
]

Check = TypeVar("Check", bound=Callable[..., list[str]])


@attrs.frozen
class Rule:
    """A named protocol rule: ``check`` returns the violations found in one exchange.

    ``settles``: the rule is about results, so each case keeps listening for the settle
    period after its first result (a second, different result may come seconds later);
    other rules listen only briefly (see :class:`conformance.runner.RunSettings`).
    """

    name: str
    level: Level
    cites: str
    summary: str
    focus: Focus
    check: Callable[[Any], list[str]] = attrs.field(repr=False)
    settles: bool = False


_RULES: list[Rule] = []


def rule(
    name: str, *, level: Level, cites: str, focus: Focus, summary: str, settles: bool = False
) -> Callable[[Check], Check]:
    """Register the decorated check as rule ``name`` (in definition order); ``cites`` is
    the section of docs/PROTOCOL.md it comes from. Raises :class:`ValueError` for a name
    registered twice."""

    def register(check: Check) -> Check:
        if any(existing.name == name for existing in _RULES):
            raise ValueError(f"rule {name!r} is registered twice")
        _RULES.append(Rule(name, level, cites, summary, focus, check, settles))
        return check

    return register


def all_rules() -> tuple[Rule, ...]:
    """Every registered rule, core ones first, in definition order."""
    return tuple(sorted(_RULES, key=lambda r: r.level != "core"))


def select_rules(names: Iterable[str]) -> tuple[Rule, ...]:
    """Rules by name, or the sets "core", "strict" and "all" (the default).

    Raises :class:`ValueError` naming the unknown entries.
    """
    wanted = [name.strip() for name in names if name.strip()] or ["all"]
    by_name = {rule.name: rule for rule in all_rules()}
    unknown = [n for n in wanted if n not in by_name and n not in ("core", "strict", "all")]
    if unknown:
        raise ValueError(
            f"unknown rule(s) {', '.join(unknown)}; known: core, strict, all, " + ", ".join(by_name)
        )
    chosen = {
        rule.name
        for name in wanted
        for rule in all_rules()
        if name in ("all", rule.level) or name == rule.name
    }
    return tuple(rule for rule in all_rules() if rule.name in chosen)
