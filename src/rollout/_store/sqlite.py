"""The SQLite store (``--store sqlite:PATH``), the default of ``rollout serve``.

One database file shared by every worker process on the host: stdlib :mod:`sqlite3` in WAL
mode (readers never wait for the writer), ``synchronous=NORMAL`` (a committed write survives
the process being killed; the last commits may be lost if the *machine* loses power),
``busy_timeout`` so that processes take turns at writing. Every call runs in a worker
thread, one at a time per process (:func:`trio.to_thread.run_sync` with a limiter of one),
never on the event loop; each operation is one ``BEGIN IMMEDIATE`` transaction, which is
what makes claims and take-overs atomic across processes.

The file holds api keys of unfinished rollouts: it is created with mode 0600, and a file
that group or others may read is refused (:class:`~rollout._store.base.StoreError`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import outcome
import trio

from . import sqlite_tx as tx
from .base import (
    Claimed,
    NewRollout,
    Orphan,
    Outcome,
    Progress,
    Store,
    StoredPhase,
    StoredRollout,
    StoreError,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT PRIMARY KEY,
    digest BLOB NOT NULL,
    idempotency_key TEXT UNIQUE,
    server_url TEXT NOT NULL,
    api_key TEXT,
    owner TEXT NOT NULL,
    phase TEXT NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    messages BLOB,
    result BLOB,
    outcome TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS rollouts_active ON rollouts(owner) WHERE expires_at IS NULL;
CREATE INDEX IF NOT EXISTS rollouts_expiry ON rollouts(expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS rollouts_cancel ON rollouts(owner)
    WHERE cancel_requested = 1 AND expires_at IS NULL;
CREATE TABLE IF NOT EXISTS leases (owner TEXT PRIMARY KEY, until REAL NOT NULL);
"""

#: Operations committed together at most.
_BATCH = 256


@attrs.define(eq=False)
class _Op:
    """One operation waiting for the writer: ``work(db, now, *args)``, then its outcome."""

    work: Callable[..., Any]
    args: tuple[Any, ...]
    done: trio.Event = attrs.field(factory=trio.Event)
    outcome: outcome.Outcome[Any] | None = None


class SQLiteStore(Store):
    """The records in the SQLite database at ``path`` (created by :meth:`connected`).

    Operations are committed in groups: one writer task takes every operation waiting (up
    to ``_BATCH``), runs them in one worker-thread call and one transaction, each in a
    savepoint of its own (a failing one is rolled back alone), then wakes their callers.
    Under load this is one thread hop and one commit for many operations; alone, an
    operation costs what a single transaction costs.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._queue: trio.MemorySendChannel[_Op] | None = None

    @property
    def description(self) -> str:
        return f"sqlite:{self.path}"

    # ------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        try:
            db = await trio.to_thread.run_sync(self._connect)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"store {self.path}: {exc}") from exc
        send, receive = trio.open_memory_channel[_Op](math.inf)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, db, receive)
                self._queue = send
                try:
                    yield
                finally:
                    self._queue = None
                    send.close()  # the writer finishes what is queued, then returns
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.close)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise StoreError(
                f"store {self.path} has mode {mode:04o}: other users could read the api keys"
                f" it holds; run: chmod 600 {self.path}"
            )
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA secure_delete=ON")  # a cleared api key is overwritten in the file
        db.executescript(_SCHEMA)
        return db

    async def _tx(self, work: Callable[..., T], *args: Any) -> T:
        """``work(db, now, *args)`` in a transaction (with others, see the class docstring);
        raises StoreError. Cancelling the caller does not withdraw a queued operation."""
        if self._queue is None:
            raise StoreError(f"store {self.path} is not open")
        op = _Op(work, args)
        try:
            self._queue.send_nowait(op)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StoreError(f"store {self.path} is closed") from None
        await op.done.wait()
        assert op.outcome is not None
        return op.outcome.unwrap()  # type: ignore[no-any-return]

    async def _writer(self, db: sqlite3.Connection, queue: trio.MemoryReceiveChannel[_Op]) -> None:
        """Commit what is queued, batch after batch. However it ends (the channel closed,
        or cancelled with the store's user), no caller is left waiting: what is still
        queued fails with StoreError, and later operations are refused."""
        try:
            async for first in queue:
                batch = [first]
                while len(batch) < _BATCH:
                    try:
                        batch.append(queue.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                with trio.CancelScope(shield=True):  # a batch begun is a batch committed
                    await trio.to_thread.run_sync(self._commit, db, batch)
                for op in batch:
                    op.done.set()
        finally:
            closed = outcome.Error(StoreError(f"store {self.path} is closed"))
            while True:  # no checkpoint in here: nothing is queued meanwhile
                try:
                    op = queue.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                op.outcome = closed
                op.done.set()
            queue.close()

    def _commit(self, db: sqlite3.Connection, batch: list[_Op]) -> None:
        """Run ``batch`` in one transaction, each operation in a savepoint (worker thread)."""
        try:
            db.execute("BEGIN IMMEDIATE")
            now = self._clock()
            for op in batch:
                db.execute("SAVEPOINT op")
                try:
                    op.outcome = outcome.Value(op.work(db, now, *op.args))
                except (sqlite3.Error, OSError) as exc:
                    db.execute("ROLLBACK TO op")
                    op.outcome = outcome.Error(StoreError(f"store {self.path}: {exc}"))
                except Exception as exc:  # a bug in one operation fails that one only
                    db.execute("ROLLBACK TO op")
                    op.outcome = outcome.Error(exc)
                db.execute("RELEASE op")
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            failure = outcome.Error(StoreError(f"store {self.path}: {exc}"))
            for op in batch:
                op.outcome = failure

    # ------------------------------------------------------------------ operations

    async def claim(self, new: NewRollout, owner: str) -> Claimed:
        return await self._tx(tx.claim, new, owner)

    async def lookup(self, rollout_id: str, idempotency_key: str | None) -> Claimed | None:
        return await self._tx(tx.lookup, rollout_id, idempotency_key)

    async def get(self, rollout_id: str) -> StoredRollout | None:
        return await self._tx(tx.get, rollout_id)

    async def save_progress(self, owner: str, snapshots: Sequence[Progress]) -> None:
        if snapshots:
            await self._tx(tx.save_progress, owner, snapshots)

    async def keep_result(
        self,
        rollout_id: str,
        owner: str,
        result: bytes,
        outcome: Outcome,
        progress: Progress | None = None,
    ) -> bool:
        return await self._tx(tx.keep_result, rollout_id, owner, result, outcome, progress)

    async def finish(
        self, rollout_id: str, phase: StoredPhase, ttl: float, outcome: Outcome | None = None
    ) -> None:
        await self._tx(tx.finish, rollout_id, phase, ttl, outcome)

    async def release_result(self, rollout_id: str, owner: str) -> None:
        await self._tx(tx.release_result, rollout_id, owner)

    async def renew(self, owner: str, ttl: float) -> frozenset[str]:
        return await self._tx(tx.renew, owner, ttl)

    async def release(self, owner: str) -> None:
        await self._tx(tx.release, owner)

    async def take_orphans(self, owner: str, limit: int) -> list[Orphan]:
        return await self._tx(tx.take_orphans, owner, limit)

    async def request_cancel(
        self, *, rollout_ids: Sequence[str] = (), prefix: str | None = None, all: bool = False
    ) -> list[str]:
        return await self._tx(tx.request_cancel, list(rollout_ids), prefix, all)

    async def sweep(self) -> None:
        await self._tx(tx.sweep)
