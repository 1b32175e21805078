"""The memory store: dicts in this process, for embedding and tests (``--store memory``).

Nothing survives the process, so a result its trainer did not take before the process
stopped is lost; several servers in one process may share one instance (the tests of
take-over do). Every method runs without awaiting anything, so each is atomic on Trio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import attrs

from .base import (
    UNFINISHED_PHASES,
    Claimed,
    NewRollout,
    Orphan,
    Outcome,
    Progress,
    Store,
    StoredPhase,
    StoredRollout,
)

__all__ = ["MemoryStore"]


@attrs.define
class _Record:
    new: NewRollout
    owner: str
    created_at: float
    updated_at: float
    phase: StoredPhase = StoredPhase.QUEUED
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    messages: bytes = b"[]"
    result: bytes | None = None
    outcome: Outcome | None = None
    cancel_requested: bool = False
    expires_at: float | None = None


class MemoryStore(Store):
    """Records in dicts; ``clock`` gives the time in seconds (tests pass Trio's)."""

    durable = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._keys: dict[str, str] = {}  # idempotency_key -> rollout_id
        self._leases: dict[str, float] = {}  # owner -> lease end
        self._active: set[str] = set()  # rollout ids not finished
        self._cancels: set[str] = set()  # unfinished ids whose cancellation was requested

    @property
    def description(self) -> str:
        return "memory"

    def _live(self, rollout_id: str) -> _Record | None:
        record = self._records.get(rollout_id)
        expires_at = None if record is None else record.expires_at
        if record is not None and expires_at is not None and expires_at <= self._clock():
            self._forget(rollout_id, record)
            return None
        return record

    def _forget(self, rollout_id: str, record: _Record) -> None:
        del self._records[rollout_id]
        key = record.new.idempotency_key
        if key is not None and self._keys.get(key) == rollout_id:
            del self._keys[key]

    async def claim(self, new: NewRollout, owner: str) -> Claimed:
        found = await self.lookup(new.rollout_id, new.idempotency_key)
        if found is not None:
            return found
        now = self._clock()
        self._records[new.rollout_id] = _Record(
            attrs.evolve(new, messages=b""), owner, now, now, messages=new.messages
        )
        if new.idempotency_key is not None:
            self._keys[new.idempotency_key] = new.rollout_id
        self._active.add(new.rollout_id)
        return Claimed(new.rollout_id, new.digest, True)

    async def lookup(self, rollout_id: str, idempotency_key: str | None) -> Claimed | None:
        owner_id = None if idempotency_key is None else self._keys.get(idempotency_key)
        if owner_id is not None and (record := self._live(owner_id)) is not None:
            return Claimed(owner_id, record.new.digest, False)
        if (record := self._live(rollout_id)) is not None:
            return Claimed(rollout_id, record.new.digest, False)
        return None

    async def get(self, rollout_id: str) -> StoredRollout | None:
        record = self._live(rollout_id)
        if record is None:
            return None
        return StoredRollout(
            rollout_id,
            record.phase,
            record.owner,
            record.turns,
            record.prompt_tokens,
            record.completion_tokens,
            record.created_at,
            record.updated_at,
            record.cancel_requested,
            record.outcome,
        )

    async def save_progress(self, owner: str, snapshots: Sequence[Progress]) -> None:
        now = self._clock()
        for snapshot in snapshots:
            record = self._live(snapshot.rollout_id)
            if record is None or record.owner != owner or record.phase not in UNFINISHED_PHASES:
                continue
            record.phase = snapshot.phase
            record.turns = snapshot.turns
            record.prompt_tokens = snapshot.prompt_tokens
            record.completion_tokens = snapshot.completion_tokens
            if snapshot.messages is not None:
                record.messages = snapshot.messages
            record.updated_at = now

    async def keep_result(
        self,
        rollout_id: str,
        owner: str,
        result: bytes,
        outcome: Outcome,
        progress: Progress | None = None,
    ) -> bool:
        record = self._live(rollout_id)
        if record is None or record.owner != owner or record.phase not in UNFINISHED_PHASES:
            return False
        if progress is not None:
            record.turns = progress.turns
            record.prompt_tokens = progress.prompt_tokens
            record.completion_tokens = progress.completion_tokens
        record.phase, record.result, record.outcome = StoredPhase.DELIVERING, result, outcome
        record.updated_at = self._clock()
        self._cancels.discard(rollout_id)
        return True

    async def finish(
        self, rollout_id: str, phase: StoredPhase, ttl: float, outcome: Outcome | None = None
    ) -> None:
        record = self._live(rollout_id)
        if record is None:
            return
        now = self._clock()
        record.phase, record.result, record.messages = phase, None, b"[]"
        record.new = attrs.evolve(record.new, api_key=None)
        record.outcome = outcome or record.outcome
        record.updated_at, record.expires_at = now, now + ttl
        self._active.discard(rollout_id)
        self._cancels.discard(rollout_id)

    async def release_result(self, rollout_id: str, owner: str) -> None:
        record = self._live(rollout_id)
        if record is not None and record.owner == owner:
            record.owner = ""

    async def renew(self, owner: str, ttl: float) -> frozenset[str]:
        self._leases[owner] = self._clock() + ttl
        return frozenset(i for i in self._cancels if self._records[i].owner == owner)

    async def release(self, owner: str) -> None:
        self._leases.pop(owner, None)

    async def take_orphans(self, owner: str, limit: int) -> list[Orphan]:
        now = self._clock()
        taken: list[Orphan] = []
        for rollout_id in list(self._active):
            if len(taken) >= limit:
                break
            record = self._records[rollout_id]
            if record.owner == owner:
                continue
            if self._leases.get(record.owner, 0.0) > now:
                continue
            lost, record.owner, record.updated_at = record.owner, owner, now
            taken.append(_orphan(rollout_id, lost, record))
        return taken

    async def request_cancel(
        self, *, rollout_ids: Sequence[str] = (), prefix: str | None = None, all: bool = False
    ) -> list[str]:
        if all or prefix is not None:
            named = [i for i in self._active if all or i.startswith(prefix or "")]
        else:
            named = list(dict.fromkeys(rollout_ids))
        marked = []
        for rollout_id in named:
            record = self._live(rollout_id)
            if record is None or record.cancel_requested:
                continue
            if record.phase in UNFINISHED_PHASES:
                record.cancel_requested = True
                self._cancels.add(rollout_id)
                marked.append(rollout_id)
        return marked

    async def sweep(self) -> None:
        for rollout_id in list(self._records):
            self._live(rollout_id)


def _orphan(rollout_id: str, lost_owner: str, record: _Record) -> Orphan:
    new = record.new
    return Orphan(
        rollout_id=rollout_id,
        lost_owner=lost_owner,
        server_url=new.server_url,
        api_key=new.api_key,
        digest=new.digest,
        idempotency_key=new.idempotency_key,
        result=record.result,
        messages=record.messages,
        turns=record.turns,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        created_at=record.created_at,
    )
