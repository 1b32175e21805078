"""Check any Remote Rollout Protocol server against the protocol rules, with Hypothesis.

It plays the trainer: a scripted, recording trainer on loopback answers the server's
callbacks from cases Hypothesis generates, and each rule of :data:`RULES` is a pure check
of what that trainer saw. Command line: ``python -m conformance --target URL``; see
docs/CONFORMANCE.md.
"""

from .case import Case, InvalidInit, ToolCallScript, Turn, case_from_json, case_to_json
from .exchange import Exchange, InitAnswer, InvalidExchange
from .rules import RULES, Rule, select_rules
from .runner import Outcome, Runner, RunSettings, TargetError, open_runner
from .search import check_rule, check_rules
from .trainer import ScriptedTrainer, WireEntry, serve_trainer

__all__ = [
    "RULES",
    "Case",
    "Exchange",
    "InitAnswer",
    "InvalidExchange",
    "InvalidInit",
    "Outcome",
    "Rule",
    "RunSettings",
    "Runner",
    "ScriptedTrainer",
    "TargetError",
    "ToolCallScript",
    "Turn",
    "WireEntry",
    "case_from_json",
    "case_to_json",
    "check_rule",
    "check_rules",
    "open_runner",
    "select_rules",
    "serve_trainer",
]
