"""What a trainer saw of one case: the init answers and the callbacks, in order.

Exchanges are plain data; the rules (:mod:`conformance.rules`) are pure functions of them.
"""

from __future__ import annotations

from typing import Any

import attrs

from .case import Case, InvalidInit
from .trainer import FINAL_TURN, WireEntry, assistant_message

__all__ = ["Exchange", "InitAnswer", "InvalidExchange"]


@attrs.frozen
class InitAnswer:
    """The server's answer to one ``POST /v1/rollout/init``.

    ``sent`` is "first", "duplicate" (the identical body again) or "changed" (another
    body, same idempotency key); ``body`` is parsed JSON or the raw text.
    """

    sent: str
    status: int
    body: Any


@attrs.frozen
class Exchange:
    """One rollout case run against the server under test.

    ``wire`` holds every callback under the case's ``server_url``; ``acknowledged`` says
    whether a result was answered 2xx within the result timeout.
    """

    case: Case
    server_url: str
    inits: tuple[InitAnswer, ...]
    wire: tuple[WireEntry, ...]
    acknowledged: bool
    result_timeout: float

    @property
    def accepted(self) -> bool:
        """Whether the first init got its ``202`` (only then is a result owed)."""
        return bool(self.inits) and self.inits[0].status == 202

    @property
    def chat(self) -> list[WireEntry]:
        return [entry for entry in self.wire if entry.kind == "chat"]

    @property
    def results(self) -> list[WireEntry]:
        return [entry for entry in self.wire if entry.kind == "result"]

    def answered_message(self, entry: WireEntry) -> dict[str, Any] | None:
        """The assistant message the trainer answered ``entry`` with (None for a fault)."""
        if entry.turn is None:
            return None
        turns = self.case.turns
        return assistant_message(
            entry.turn, turns[entry.turn] if entry.turn < len(turns) else FINAL_TURN
        )

    def completion_tokens(self, entry: WireEntry) -> int:
        """``usage.completion_tokens`` answered to ``entry`` (0 for a fault)."""
        if entry.turn is None:
            return 0
        turns = self.case.turns
        return (turns[entry.turn] if entry.turn < len(turns) else FINAL_TURN).completion_tokens


@attrs.frozen
class InvalidExchange:
    """An invalid init sent to the server: its answer, and any callbacks it caused."""

    case: InvalidInit
    server_url: str
    status: int
    body: Any
    wire: tuple[WireEntry, ...]
