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
import functools
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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
CREATE TABLE IF NOT EXISTS leases (owner TEXT PRIMARY KEY, until REAL NOT NULL);
"""

_UNFINISHED = ("queued", "running")


class SQLiteStore(Store):
    """The records in the SQLite database at ``path`` (created on :meth:`open`)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._limiter = trio.CapacityLimiter(1)
        self._db: sqlite3.Connection | None = None

    @property
    def description(self) -> str:
        return f"sqlite:{self.path}"

    # ------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        self._db = await self._run(self._connect)
        try:
            yield
        finally:
            db, self._db = self._db, None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.close, limiter=self._limiter)

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

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in a worker thread; sqlite and OS errors become StoreError."""
        try:
            return await trio.to_thread.run_sync(
                functools.partial(work, *args), limiter=self._limiter
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"store {self.path}: {exc}") from exc

    async def _tx(self, work: Callable[..., T], *args: Any) -> T:
        """``work(db, now, *args)`` in one ``BEGIN IMMEDIATE`` transaction."""
        return await self._run(self._in_transaction, work, *args)

    def _in_transaction(self, work: Callable[..., T], *args: Any) -> T:
        if self._db is None:
            raise StoreError(f"store {self.path} is not open")
        with self._transaction(self._db):
            return work(self._db, self._clock(), *args)

    @staticmethod
    @contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

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
