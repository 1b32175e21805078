"""The search for a breaking case: one Hypothesis run per rule, or the state machine of
interleaved rollouts, each shrunk within the shrink budget.

:func:`check_rules` checks rules one after another on a :class:`~conformance.runner.Runner`
(each search runs in a worker thread that calls back into the runner's Trio loop).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import trio
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.internal.conjecture import engine
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    run_state_machine_as_test,
)
from hypothesis.stateful import rule as sm_rule

from .case import Case
from .exchange import Exchange, InvalidExchange
from .rules import Rule
from .runner import Outcome, Runner, RunSettings, Started, _RuleFailed
from .strategies import cases_for, invalid_inits

__all__ = ["SHRINK_LIMIT_NAME", "ShrinkBudgetIgnored", "check_rule", "check_rules"]


#: Hypothesis's bound on shrinking one failure, a module constant it documents as
#: monkeypatchable (an internal: guarded, and pinned by a test).
SHRINK_LIMIT_NAME = "MAX_SHRINKING_SECONDS"


class ShrinkBudgetIgnored(UserWarning):
    """This Hypothesis has no shrink-time constant: ``--shrink-budget`` has no effect."""


@contextmanager
def _shrink_budget(seconds: float) -> Iterator[None]:
    """Bound Hypothesis's shrinking to ``seconds`` (default 300 s per failure).

    Hypothesis keeps the limit in a module constant and documents it as monkeypatchable;
    rules run one at a time, so setting it around one search is safe. When the budget
    runs out, the smallest failure found so far is replayed and reported. Should a
    Hypothesis release drop the constant, this warns (:class:`ShrinkBudgetIgnored`) and
    shrinks with Hypothesis's own limit.
    """
    if not hasattr(engine, SHRINK_LIMIT_NAME):
        warnings.warn(
            f"hypothesis has no {SHRINK_LIMIT_NAME} any more: --shrink-budget is ignored",
            ShrinkBudgetIgnored,
            stacklevel=3,
        )
        yield
        return
    previous = getattr(engine, SHRINK_LIMIT_NAME)
    setattr(engine, SHRINK_LIMIT_NAME, max(seconds, 0.001))
    try:
        yield
    finally:
        setattr(engine, SHRINK_LIMIT_NAME, previous)


def _hypothesis_settings(run: RunSettings) -> settings:
    phases = [Phase.explicit, Phase.generate]
    if run.shrink_budget > 0:  # 0: no shrinking, the first failure found is reported
        phases.append(Phase.shrink)
    return settings(
        max_examples=run.examples,
        deadline=None,
        database=None,
        print_blob=False,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=phases,
        # Our own report shows the failure; Hypothesis's would repeat it (and warn that
        # shrinking stopped when --shrink-budget ends it on purpose).
        verbosity=Verbosity.quiet,
    )


def check_rule(runner: Runner, rule: Rule, tools: list[dict[str, Any]]) -> Outcome:
    """Search for a case that breaks ``rule``; call from a worker thread of the runner's
    Trio loop (see :func:`check_rules`)."""
    if rule.focus == "stateful":
        return _check_interleaved(runner, rule, tools)
    run: Callable[[Any], Exchange | InvalidExchange]
    strategy: st.SearchStrategy[Any]
    if rule.focus == "invalid_init":
        strategy = invalid_inits()
        run = lambda invalid: trio.from_thread.run(runner.run_invalid, invalid)  # noqa: E731
    else:
        strategy = cases_for(tools, rule.focus, slow=runner.settings.slow)
        settle = runner.settle_for(rule)
        run = lambda case: trio.from_thread.run(  # noqa: E731
            partial(runner.run_case, case, settle=settle)
        )
    best: dict[str, Any] = {}
    examples = 0

    @_hypothesis_settings(runner.settings)
    @given(strategy)
    def search(case: Any) -> None:
        nonlocal examples
        examples += 1
        exchange = run(case)
        violations = rule.check(exchange)
        if violations:
            best.update(exchange=exchange, violations=tuple(violations))
            raise _RuleFailed(violations)

    if runner.settings.seed is not None:
        search = hypothesis_seed(runner.settings.seed)(search)
    try:
        with _shrink_budget(runner.settings.shrink_budget):
            search()
    except _RuleFailed:
        return Outcome(rule, "fail", examples, best["violations"], best["exchange"])
    except Flaky:
        note = "the failure did not reproduce on replay (flaky); the last failing case is shown"
        return Outcome(
            rule, "fail", examples, best.get("violations", ()), best.get("exchange"), note
        )
    except Exception as exc:  # the run broke (target unreachable, ...): say so per rule
        return Outcome(rule, "error", examples, note=f"{type(exc).__name__}: {exc}")
    return Outcome(rule, "pass", examples)


async def check_rules(
    runner: Runner,
    rules: Sequence[Rule],
    *,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Check ``rules`` one after another; returns one :class:`Outcome` per rule."""
    tools = await runner.probe_tools()
    outcomes = []
    for rule in rules:
        outcome = await trio.to_thread.run_sync(check_rule, runner, rule, tools)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def _check_interleaved(runner: Runner, rule: Rule, tools: list[dict[str, Any]]) -> Outcome:
    """Run the state machine of interleaved rollouts; a failure shows the first rollout
    that broke a rule, and Hypothesis's minimal step sequence in the note."""
    found: dict[str, Any] = {}
    examples = 0

    class InterleavedRollouts(RuleBasedStateMachine):
        """Starts rollouts concurrently (plain, faulted, and with identical inits racing),
        re-sends inits later, and waits; at the end every rollout's exchange must keep
        every core rule."""

        rollouts = Bundle("rollouts")

        def __init__(self) -> None:
            nonlocal examples
            super().__init__()
            examples += 1
            self.started: list[Started] = []

        def _start(self, case: Case, copies: int = 1) -> Started:
            started = trio.from_thread.run(partial(runner.start_case, case, copies=copies))
            self.started.append(started)
            return started

        @sm_rule(target=rollouts, case=cases_for(tools, "rollout"))
        def start(self, case: Case) -> Started:
            return self._start(case)

        @sm_rule(target=rollouts, case=cases_for(tools, "faults", slow=runner.settings.slow))
        def start_faulted(self, case: Case) -> Started:
            return self._start(case)

        @sm_rule(target=rollouts, case=cases_for(tools, "rollout"), copies=st.integers(2, 3))
        def start_racing_duplicates(self, case: Case, copies: int) -> Started:
            return self._start(case, copies)

        @sm_rule(started=rollouts)
        def duplicate(self, started: Started) -> None:
            trio.from_thread.run(runner.send_again, started, "duplicate")

        @sm_rule(seconds=st.sampled_from([0.0, 0.05, 0.2]))
        def wait(self, seconds: float) -> None:
            trio.from_thread.run(trio.sleep, seconds)

        def teardown(self) -> None:
            exchanges = trio.from_thread.run(
                partial(runner.finish_all, self.started, settle=runner.settle_for(rule))
            )
            for exchange in exchanges:
                violations = rule.check(exchange)
                if violations:
                    found.update(exchange=exchange, violations=tuple(violations))
                    raise _RuleFailed(violations)

    machine_settings = settings(
        _hypothesis_settings(runner.settings),
        max_examples=max(3, runner.settings.examples // 3),
        stateful_step_count=8,
    )
    try:
        with _shrink_budget(runner.settings.shrink_budget):
            run_state_machine_as_test(InterleavedRollouts, settings=machine_settings)
    except _RuleFailed as exc:
        steps = "\n".join(getattr(exc, "__notes__", ()))
        return Outcome(rule, "fail", examples, found["violations"], found["exchange"], steps)
    except Flaky:
        note = "the failure did not reproduce on replay (flaky); the last failing rollout is shown"
        violations = found.get("violations", ())
        return Outcome(rule, "fail", examples, violations, found.get("exchange"), note)
    except Exception as exc:
        return Outcome(rule, "error", examples, note=f"{type(exc).__name__}: {exc}")
    return Outcome(rule, "pass", examples)
