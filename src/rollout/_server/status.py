"""Status and cancel of any rollout, on whichever worker sharing the store runs it
(docs/PROTOCOL.md §3 and §3.1).

A rollout this worker runs is described from its live handle; any other from the store's
record (its last snapshot: turns and tokens as of the owner's last lease renewal).
Cancelling stops a local rollout at once and marks the others in the store, where their
owner learns it at its next renewal (:mod:`rollout._server.leases`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from .._store import StoredPhase
from .phases import UNFINISHED

if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = ["cancel", "describe"]

log = logging.getLogger("rollout.status")


async def describe(supervisor: Supervisor, rollout_id: str) -> dict[str, object] | None:
    """What is known of ``rollout_id`` (``GET /v1/rollout/{id}``), or None when no worker
    sharing the store knows it (docs/PROTOCOL.md §3). Raises StoreError."""
    control = supervisor.local.get(rollout_id)
    if control is not None and control.phase in UNFINISHED:
        ctx = control.context
        return {
            "rollout_id": rollout_id,
            "phase": control.phase.value,
            "owner": supervisor.owner,
            "turns": 0 if ctx is None else ctx.turns,
            "prompt_tokens": 0 if ctx is None else ctx.prompt_tokens,
            "completion_tokens": 0 if ctx is None else ctx.completion_tokens,
            "created_at": round(time.time() - (trio.current_time() - control.started_at), 3),
            "seconds": round(trio.current_time() - control.started_at, 3),
            "cancelled": control.cancelled,
            "result": None,
        }
    record = await supervisor.store.get(rollout_id)
    if record is None:
        return None
    outcome = record.outcome
    finished = record.phase in (StoredPhase.DONE, StoredPhase.LOST)
    return {
        "rollout_id": rollout_id,
        "phase": record.phase.value,
        "owner": record.owner,
        "turns": record.turns,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "created_at": round(record.created_at, 3),
        "seconds": round((record.updated_at if finished else time.time()) - record.created_at, 3),
        "cancelled": record.cancel_requested
        or (outcome is not None and outcome.finish_reason == "cancelled"),
        "result": None if outcome is None else attrs.asdict(outcome),
    }


async def cancel(
    supervisor: Supervisor,
    *,
    rollout_ids: Sequence[str] = (),
    prefix: str | None = None,
    all: bool = False,
) -> list[str]:
    """Cancel the rollouts named (by ids, an id prefix, or all) that are still queued or
    running, on whichever worker sharing the store runs them; returns the ids that
    were. Each ends with one ``ERROR`` result, ``finish_reason`` "cancelled".
    Idempotent. Here at once; elsewhere at the owner's next lease renewal (within
    ``lease_ttl / 3`` seconds). Raises StoreError."""
    if all or prefix is not None:
        named = [i for i in supervisor.local if all or i.startswith(prefix or "")]
    else:
        named = [i for i in dict.fromkeys(rollout_ids) if i in supervisor.local]
    cancelled = [i for i in named if supervisor.local[i].cancel()]
    marked = await supervisor.store.request_cancel(rollout_ids=rollout_ids, prefix=prefix, all=all)
    cancelled += [i for i in marked if i not in supervisor.local]
    if cancelled:
        log.info("cancelled on request: %s", ", ".join(cancelled))
    return cancelled
