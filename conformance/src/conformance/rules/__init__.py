"""The protocol rules, each a pure check of what the trainer saw.

Every rule has a name, a level and the section of docs/PROTOCOL.md it comes from, and is
registered next to its check with :func:`~conformance.rules._registry.rule`:

- **core** (:mod:`conformance.rules.core`): what the reference protocol itself requires; a
  fair bar for any server;
- **strict** (:mod:`conformance.rules.strict`): this project's stronger guarantees (marked
  [ours] in docs/PROTOCOL.md).

A check returns the list of violations (human-readable, one per problem); empty means the
exchange kept the rule. ``focus`` tells the strategies which situations exercise the rule
(see :func:`conformance.strategies.cases_for`).
"""

from __future__ import annotations

from . import core, strict
from ._registry import Focus, Level, Rule, all_rules, select_rules

__all__ = ["RULES", "Focus", "Level", "Rule", "select_rules"]

del core, strict  # imported for their registrations

#: Every rule, core first.
RULES: tuple[Rule, ...] = all_rules()
