"""The lease loop's snapshots (rollout._server.leases): only rollouts that made turns, each
with its trajectory, and at most a bounded number per round (the rest in the next)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rollout import Message
from rollout._server import leases
from rollout._server.phases import Phase
from rollout._store.memory import MemoryStore


def _running(turns: int) -> Any:
    context = SimpleNamespace(
        turns=turns,
        prompt_tokens=10 * turns,
        completion_tokens=turns,
        messages=(Message(role="user", content="hi"),),
    )
    return SimpleNamespace(phase=Phase.RUNNING, context=context)


def _leases(local: dict[str, Any]) -> leases.Leases:
    return leases.Leases(
        MemoryStore(), "me", 10.0, local, adopt=lambda o: None, room=lambda: 0, draining=bool
    )


def test_snapshots_only_of_new_turns_and_bounded_per_round(monkeypatch: Any) -> None:
    monkeypatch.setattr(leases, "_ENCODE_PER_ROUND", 3)
    local = {f"r-{i}": _running(1) for i in range(5)} | {"idle": _running(0)}
    keeper = _leases(local)
    for rollout_id in ("r-0", "r-1", "r-2", "r-3", "gone", "r-4"):  # each made a turn
        keeper.turned(rollout_id)

    first = keeper._snapshots()
    assert [s.rollout_id for s in first] == ["r-0", "r-1", "r-2"]  # the bound
    assert all(s.messages == b'[{"role":"user","content":"hi"}]' for s in first)
    second = keeper._snapshots()
    assert [s.rollout_id for s in second] == ["r-3", "r-4"]  # the rest, next round
    assert keeper._snapshots() == []  # nothing new: nothing written

    local["r-1"].context.turns, local["r-1"].context.prompt_tokens = 2, 20
    keeper.turned("r-1")
    (again,) = keeper._snapshots()
    assert (again.rollout_id, again.turns, again.prompt_tokens) == ("r-1", 2, 20)
