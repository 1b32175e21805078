"""Cases: what the conformance trainer sends and answers, as replayable data.

A :class:`Case` is one rollout as a trainer would drive it: the init request, and the
script the scripted trainer follows when the server under test calls back (one
:class:`Turn` per successful chat answer, each optionally preceded by faults, then the
statuses answered to result posts). Hypothesis generates cases (:mod:`conformance.strategies`);
a failing one is printed as JSON and can be replayed with ``--replay`` (:func:`case_from_json`).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = [
    "FAULTS",
    "Case",
    "FaultKind",
    "InvalidInit",
    "ToolCallScript",
    "Turn",
    "case_from_json",
    "case_to_json",
]

#: Trainer faults a chat request can get instead of its answer, in the order scripted.
#: - ``http_500``: a 500 with a JSON error body (retryable);
#: - ``http_503``: a 503 with ``Retry-After: 1`` (retryable, honour the header);
#: - ``http_400``: a 400 (not retryable: the rollout should end, with a result);
#: - ``broken_body``: a 200 whose body is not JSON;
#: - ``slow``: the answer (the next fault, or the turn) comes only after ``Case.slow``
#:   seconds, longer than common client timeouts. A client that gives up first (closes the
#:   connection) is recorded as such (status 499), and its retry is answered at once.
FaultKind = Literal["http_500", "http_503", "http_400", "broken_body", "slow"]
FAULTS: tuple[FaultKind, ...] = ("http_500", "http_503", "http_400", "broken_body", "slow")
#: Seconds the trainer makes a client wait for each fault (beyond ``slow``): the
#: ``Retry-After`` of a 503.
_FAULT_WAIT: dict[FaultKind, float] = {"http_503": 1.0}


@attrs.frozen
class ToolCallScript:
    """One tool call of an assistant answer. ``arguments`` is raw text: valid JSON for the
    tool's schema, malformed JSON, or anything else the strategy chose."""

    name: str
    arguments: str


@attrs.frozen
class Turn:
    """One successful chat answer: text (``content``) and/or ``tool_calls``.

    ``faults`` are answered first, one per chat request; ``delay`` (seconds) is waited
    before the real answer; ``completion_tokens`` is reported in ``usage``.
    """

    content: str | None = None
    tool_calls: tuple[ToolCallScript, ...] = ()
    completion_tokens: int = 1
    faults: tuple[FaultKind, ...] = ()
    delay: float = 0.0


@attrs.frozen
class Case:
    """One rollout: the init fields, the trainer's script, and how the init is sent.

    - ``turns``: answers in order; once exhausted the trainer answers a plain final text;
    - ``result_statuses``: statuses answered to the first result posts (e.g. ``(500,)``:
      the first delivery fails, the retry succeeds); every later post gets 200;
    - ``duplicate_init``: send the identical init again right after the first (§7.3);
    - ``changed_init``: send a different body with the same idempotency key (strict: 409);
    - ``slow``: seconds a ``slow`` fault holds its answer back.
    """

    rollout_id: str
    messages: tuple[dict[str, Any], ...]
    completion_params: dict[str, Any] = attrs.field(factory=dict)
    max_turns: int = 10
    max_tokens_total: int = 8192
    metadata: dict[str, Any] = attrs.field(factory=dict)
    api_key: str | None = None
    idempotency_key: str | None = None
    turns: tuple[Turn, ...] = ()
    result_statuses: tuple[int, ...] = ()
    duplicate_init: bool = False
    changed_init: bool = False
    slow: float = 6.0

    @property
    def scripted_delay(self) -> float:
        """Seconds the script itself holds a patient server back: turn delays, slow
        answers and 503 ``Retry-After`` waits. The result timeout is extended by this, so
        a slow answer plus the rest of the rollout still fits in it."""
        total = 0.0
        for turn in self.turns:
            total += turn.delay
            for fault in turn.faults:
                total += self.slow if fault == "slow" else _FAULT_WAIT.get(fault, 0.0)
        return total

    def init_body(self, server_url: str) -> dict[str, Any]:
        """The ``POST /v1/rollout/init`` body (docs/PROTOCOL.md §2.1) pointing at ``server_url``."""
        body: dict[str, Any] = {
            "rollout_id": self.rollout_id,
            "server_url": server_url,
            "messages": list(self.messages),
            "completion_params": self.completion_params,
            "max_turns": self.max_turns,
            "max_tokens_total": self.max_tokens_total,
            "metadata": self.metadata,
        }
        if self.api_key is not None:
            body["api_key"] = self.api_key
        if self.idempotency_key is not None:
            body["idempotency_key"] = self.idempotency_key
        return body

    def changed_body(self, server_url: str) -> dict[str, Any]:
        """A body that differs from :meth:`init_body` but has the same idempotency key."""
        body = self.init_body(server_url)
        body["max_turns"] = self.max_turns + 1
        return body


@attrs.frozen
class InvalidInit:
    """An init request no server should accept: ``body`` is sent as raw bytes (UTF-8)."""

    rollout_id: str
    why: str
    body: str
    content_type: str = "application/json"


def case_to_json(case: Case | InvalidInit) -> dict[str, Any]:
    """A JSON-able dict for reports; :func:`case_from_json` reads it back."""
    data = attrs.asdict(case)
    data["kind"] = "invalid_init" if isinstance(case, InvalidInit) else "rollout"
    return data


def case_from_json(data: dict[str, Any]) -> Case | InvalidInit:
    """Read a case written by :func:`case_to_json` (e.g. from a report's failure).

    Raises :class:`ValueError` (with the reason) when ``data`` is not a case.
    """
    data = dict(data)
    kind = data.pop("kind", "rollout")
    try:
        if kind == "invalid_init":
            return InvalidInit(**data)
        turns = tuple(
            Turn(
                content=turn.get("content"),
                tool_calls=tuple(ToolCallScript(**call) for call in turn.get("tool_calls", ())),
                completion_tokens=turn.get("completion_tokens", 1),
                faults=tuple(turn.get("faults", ())),
                delay=turn.get("delay", 0.0),
            )
            for turn in data.pop("turns", ())
        )
        return Case(
            **{
                **data,
                "messages": tuple(data.get("messages", ())),
                "result_statuses": tuple(data.get("result_statuses", ())),
                "turns": turns,
            }
        )
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"not a conformance case: {exc}") from None
