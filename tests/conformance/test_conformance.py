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

from conformance import RULES, Outcome, RunSettings, check_rule, open_runner, select_rules
from conformance.cli import main as conformance_main
from conftest import PROCESS_TIMEOUT, StartServer, Trainer, make_config, server_process
from mutants import MUTANTS, Mutant, serve_mutant
from rollout import Agent, Message, RolloutContext, tool

#: Small but enough: each mutant's rule is exercised by most generated cases.
SETTINGS = RunSettings(examples=12, result_timeout=20.0, settle=0.05, shrink_budget=1.0, seed=1)
#: Against mutants a failure is expected, so a short result timeout cannot make a test
#: flaky; it only bounds the wait on a mutant that never delivers.
MUTANT_SETTINGS = attrs.evolve(SETTINGS, result_timeout=5.0)


async def _check(mutant: Mutant | None, rule_names: list[str]) -> list[Outcome]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_mutant, mutant, make_config(), stop)
        settings = SETTINGS if mutant is None else MUTANT_SETTINGS
        async with open_runner(f"http://127.0.0.1:{port}", settings) as runner:
            tools = await runner.probe_tools()
            outcomes = [
                await trio.to_thread.run_sync(check_rule, runner, rule, tools)
                for rule in select_rules(rule_names)
            ]
        stop.set()
    return outcomes


async def test_our_server_passes_every_rule() -> None:
    outcomes = await _check(None, ["all"])

    assert [o.rule.name for o in outcomes] == [rule.name for rule in RULES]
    failed = {o.rule.name: (o.violations, o.note) for o in outcomes if o.verdict != "pass"}
    assert failed == {}
    assert all(o.examples >= 1 for o in outcomes)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name.replace(" ", "-"))
async def test_each_mutant_is_caught_by_its_rule(mutant: Mutant) -> None:
    (outcome,) = await _check(mutant, [mutant.rule])

    assert outcome.verdict == "fail", f"{mutant.name} was not caught by {mutant.rule}"
    assert any(mutant.symptom in violation for violation in outcome.violations), outcome.violations
    assert outcome.exchange is not None  # the minimal failing case, replayable


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
