"""The conformance suite against our server (every rule passes) and against mutants (each
is caught by the rule named for it). Real servers on 127.0.0.1, bounded example budgets."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

import attrs
import pytest
import trio
from click.testing import CliRunner

from conformance import (
    RULES,
    Case,
    Exchange,
    InitAnswer,
    Outcome,
    RunSettings,
    ToolCallScript,
    Turn,
    WireEntry,
    check_rule,
    open_runner,
    select_rules,
)
from conformance.cli import main as conformance_main
from conftest import PROCESS_TIMEOUT, StartServer, Trainer, make_config, server_process
from mutants import MUTANTS, GiveUpWhenSlow, Mutant, serve_mutant
from rollout import Agent, Message, RolloutContext, tool

#: Small but enough: each mutant's rule is exercised by most generated cases.
SETTINGS = RunSettings(
    examples=12, result_timeout=20.0, settle=0.05, slow=0.2, shrink_budget=1.0, seed=1
)
#: Against mutants a failure is expected, so a short result timeout cannot make a test
#: flaky; it only bounds the wait on a mutant that never delivers.
MUTANT_SETTINGS = attrs.evolve(SETTINGS, result_timeout=3.0)


async def _check(mutant: Mutant | None, rule_names: list[str]) -> list[Outcome]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_mutant, mutant, make_config(), stop)
        settings = SETTINGS if mutant is None else attrs.evolve(MUTANT_SETTINGS, **mutant.settings)
        outcomes = await _check_url(f"http://127.0.0.1:{port}", settings, rule_names)
        stop.set()
    return outcomes


async def _check_url(url: str, settings: RunSettings, rule_names: list[str]) -> list[Outcome]:
    async with open_runner(url, settings) as runner:
        tools = await runner.probe_tools()
        return [
            await trio.to_thread.run_sync(check_rule, runner, rule, tools)
            for rule in select_rules(rule_names)
        ]


def _assert_every_rule_passes(outcomes: list[Outcome]) -> None:
    assert [o.rule.name for o in outcomes] == [rule.name for rule in RULES]
    failed = {o.rule.name: (o.violations, o.note) for o in outcomes if o.verdict != "pass"}
    assert failed == {}
    assert all(o.examples >= 1 for o in outcomes)


async def test_our_server_passes_every_rule() -> None:
    _assert_every_rule_passes(await _check(None, ["all"]))


async def test_two_workers_sharing_redis_pass_every_rule(redis_url: str) -> None:
    """docs/PROTOCOL.md §5.3: two processes on one port and one Redis are one server."""
    async with server_process("--workers", "2", store=redis_url) as (_, port):
        outcomes = await _check_url(f"http://127.0.0.1:{port}", SETTINGS, ["all"])
    _assert_every_rule_passes(outcomes)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name.replace(" ", "-"))
async def test_each_mutant_is_caught_by_its_rule(mutant: Mutant) -> None:
    (outcome,) = await _check(mutant, [mutant.rule])

    assert outcome.verdict == "fail", f"{mutant.name} was not caught by {mutant.rule}"
    assert any(mutant.symptom in violation for violation in outcome.violations), outcome.violations
    assert outcome.exchange is not None  # the minimal failing case, replayable


async def test_swapped_tool_results_pass_the_core_tool_rules() -> None:
    """Why tool-results-in-order exists: every id answered once, in order, history intact."""
    (mutant,) = [m for m in MUTANTS if m.rule == "tool-results-in-order"]
    outcomes = await _check(mutant, ["tool-messages", "append-only"])

    assert {o.rule.name: o.verdict for o in outcomes} == {
        "tool-messages": "pass",
        "append-only": "pass",
    }


@pytest.mark.parametrize("index", [1, 3], ids=["wrong-tool_call_id", "idempotency-ignored"])
async def test_interleaved_rollouts_catch_mutants_too(index: int) -> None:
    (outcome,) = await _check(MUTANTS[index], ["interleaved-rollouts"])

    assert outcome.verdict == "fail"
    assert any(v.startswith(f"{MUTANTS[index].rule}: ") for v in outcome.violations)


async def test_the_command_line_checks_a_server_started_by_hand(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_mutant, MUTANTS[5], make_config(), stop)  # no auth
        args = [
            "--target",
            f"http://127.0.0.1:{port}",
            "--rules",
            "callback-auth,init-response",
            "--examples",
            "5",
            "--seed",
            "3",
            "--shrink-budget",
            "3",
            "--report",
            str(report),
        ]
        result = await trio.to_thread.run_sync(
            lambda: CliRunner().invoke(conformance_main, args, catch_exceptions=False)
        )
        stop.set()

    assert result.exit_code == 1, result.output
    assert "callback-auth" in result.output
    data = json.loads(report.read_text())
    verdicts = {rule["rule"]: rule["verdict"] for rule in data["rules"]}
    assert verdicts == {"init-response": "pass", "callback-auth": "fail"}
    failing = next(rule for rule in data["rules"] if rule["rule"] == "callback-auth")
    assert failing["failing_case"]["case"]["api_key"] is not None
    assert failing["failing_case"]["wire"], "the wire log of the failing case is in the report"


async def test_a_server_with_other_tools_and_another_loop_is_checked_the_same_way(
    start_server: StartServer,
) -> None:
    """Nothing in the suite assumes the calculator: a note-taking agent with string, list
    and enum arguments and a loop that adds its own user messages passes every core rule."""
    notes: list[str] = []

    @tool
    def remember(text: str, tags: list[str] | None = None) -> str:
        """Store a note.

        Args:
            text: The note.
            tags: Labels for it.
        """
        notes.append(text)
        return f"stored note {len(notes)}"

    @tool
    async def recall(order: Literal["oldest", "newest"] = "newest") -> list[str]:
        """The stored notes."""
        return notes if order == "oldest" else notes[::-1]

    async def nudging_loop(ctx: RolloutContext) -> None:
        while True:
            message = await ctx.chat()
            if message.tool_calls:
                await ctx.call_tools(message)
            elif ctx.turns < 3:
                ctx.append(Message.user("Anything else?"))
            else:
                return

    server = await start_server(agent=Agent("notes", tools=[remember, recall], loop=nudging_loop))
    settings = attrs.evolve(SETTINGS, examples=6)
    async with open_runner(server.url, settings) as runner:
        tools = await runner.probe_tools()
        assert {t["function"]["name"] for t in tools} == {"remember", "recall"}
        outcomes = [
            await trio.to_thread.run_sync(check_rule, runner, rule, tools)
            for rule in select_rules(["core"])
        ]

    assert {o.rule.name: o.verdict for o in outcomes} == {
        rule.name: "pass" for rule in select_rules(["core"])
    }


async def test_python_m_conformance_checks_a_real_server_process(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    async with server_process() as (_, port):
        command = [
            sys.executable,
            "-m",
            "conformance",
            "--target",
            f"http://127.0.0.1:{port}",
            "--rules",
            "init-response,callback-auth,invalid-init-4xx",
            "--examples",
            "3",
            "--seed",
            "5",
            "--report",
            str(report),
        ]
        with trio.fail_after(PROCESS_TIMEOUT * 3):
            done = await trio.run_process(command, capture_stdout=True, check=False)

    output = done.stdout.decode()
    assert done.returncode == 0, output
    assert "rollout protocol conformance" in output
    assert json.loads(report.read_text())["passed"] is True


async def test_a_target_that_cannot_be_checked_is_a_clear_error(trainer: Trainer) -> None:
    """Unreachable, or not a rollout server (the mock trainer answers init with 404):
    exit 1 with one line saying why, no traceback."""
    for target in ("http://127.0.0.1:1", trainer.url):
        args = ["--target", target, "--examples", "1"]
        result = await trio.to_thread.run_sync(CliRunner().invoke, conformance_main, args)
        assert result.exit_code == 1, result.output
        assert "Error: " in result.output
        assert "Traceback" not in result.output
    assert "404" in result.output


def test_rule_selection() -> None:
    assert {r.level for r in select_rules(["core"])} == {"core"}
    assert {r.level for r in select_rules(["strict"])} == {"strict"}
    assert select_rules(["max-turns"]) == tuple(r for r in RULES if r.name == "max-turns")
    with pytest.raises(ValueError, match="no-such-rule"):
        select_rules(["no-such-rule"])
    assert attrs.has(type(RULES[0]))


def _final(*turns: tuple[list[tuple[str, str]], list[tuple[str, str]]]) -> Exchange:
    """An exchange whose COMPLETED result holds ``turns``: each a list of (name, arguments)
    calls and the (tool_call_id, content) tool messages after them."""
    messages: list[dict[str, object]] = [{"role": "user", "content": "hi"}]
    for number, (calls, replies) in enumerate(turns):
        tool_calls = [
            {"id": f"c{number}_{k}", "type": "function", "function": {"name": n, "arguments": a}}
            for k, (n, a) in enumerate(calls)
        ]
        messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
        messages += [{"role": "tool", "tool_call_id": i, "content": c} for i, c in replies]
    body = {"rollout_id": "r", "status": "COMPLETED", "final_messages": messages}
    result = WireEntry(0.0, "result", "/c/0/v1/rollout/completed", {}, body, 200, {})
    case = Case(rollout_id="r", messages=({"role": "user", "content": "hi"},))
    return Exchange(case, "", (InitAnswer("first", 202, {}),), (result,), True, 1.0)


def test_tool_results_in_order_is_sound_without_knowing_the_tools() -> None:
    (rule,) = select_rules(["tool-results-in-order"])
    a, b = ("add", '{"a": 1, "b": 2}'), ("add", '{"b": 5, "a": 1}')

    def script(together: list[tuple[str, str]], later_a: str = "3") -> Exchange:
        return _final(
            ([a], [("c0_0", "3")]),
            ([b], [("c1_0", "6")]),
            ([a, b], together),
            ([a], [("c3_0", later_a)]),
            ([b], [("c4_0", "6")]),
        )

    assert rule.check(script([("c2_0", "3"), ("c2_1", "6")])) == []
    (order,) = rule.check(script([("c2_1", "6"), ("c2_0", "3")]))
    assert "in the order ['c2_1', 'c2_0']" in order
    swapped = rule.check(script([("c2_0", "6"), ("c2_1", "3")]))
    assert len(swapped) == 2
    assert all("carries the result of call" in v for v in swapped)
    # A call whose result changed between its solo runs (a stateful tool): no verdict.
    assert rule.check(script([("c2_0", "6"), ("c2_1", "3")], later_a="4")) == []


async def test_a_client_that_times_out_on_a_slow_answer_and_retries_loses_nothing() -> None:
    """The trainer logs the abandoned request (499, no turn) where it arrived and answers
    the retry at once: a server with a short client timeout that retries keeps every rule."""
    short_timeout = Mutant("", "", "", transport=GiveUpWhenSlow(read_timeout=0.5, swallow=False))
    call = ToolCallScript("add", '{"a": 1, "b": 2}')
    case = Case(
        rollout_id="",
        messages=({"role": "user", "content": "1 + 2?"},),
        turns=(Turn(tool_calls=(call,), faults=("slow",)), Turn(content="3", faults=("slow",))),
        max_turns=2,
        slow=1.0,
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_mutant, short_timeout, make_config(), stop)
        async with open_runner(f"http://127.0.0.1:{port}", SETTINGS) as runner:
            exchange = await runner.run_case(case)
        stop.set()

    assert [(e.status, e.turn) for e in exchange.chat] == [
        (499, None),
        (200, 0),
        (499, None),
        (200, 1),
    ]
    assert exchange.result_timeout == SETTINGS.result_timeout + 2.0
    for rule in RULES:
        if rule.focus not in ("invalid_init", "stateful"):
            assert rule.check(exchange) == [], rule.name


def test_the_hypothesis_internal_behind_shrink_budget_is_still_there() -> None:
    """--shrink-budget sets a Hypothesis module constant; a release that drops it must be
    noticed here (the suite then warns and ignores the option)."""
    from hypothesis.internal.conjecture import engine

    from conformance.search import SHRINK_LIMIT_NAME, ShrinkBudgetIgnored, _shrink_budget

    assert isinstance(getattr(engine, SHRINK_LIMIT_NAME), int | float)
    before = getattr(engine, SHRINK_LIMIT_NAME)
    with _shrink_budget(7.0):
        assert getattr(engine, SHRINK_LIMIT_NAME) == 7.0
    assert getattr(engine, SHRINK_LIMIT_NAME) == before

    saved = getattr(engine, SHRINK_LIMIT_NAME)
    delattr(engine, SHRINK_LIMIT_NAME)
    try:
        with pytest.warns(ShrinkBudgetIgnored), _shrink_budget(7.0):
            pass
    finally:
        setattr(engine, SHRINK_LIMIT_NAME, saved)
