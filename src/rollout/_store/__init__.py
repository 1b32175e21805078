"""The store: idempotency records, rollout state, leases and undelivered results, shared by
every worker that uses it (docs/PROTOCOL.md §2.4 and §5.3; the model in :mod:`.base`).

:func:`open_store` picks the backend from a URL: ``memory``, ``sqlite:PATH`` or
``redis://…`` / ``rediss://…``.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    SHIELDED_CALL_SECONDS,
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

__all__ = [
    "SHIELDED_CALL_SECONDS",
    "Claimed",
    "NewRollout",
    "Orphan",
    "Outcome",
    "Progress",
    "Store",
    "StoreError",
    "StoredPhase",
    "StoredRollout",
    "open_store",
]


def open_store(url: str) -> Store:
    """The store named by ``url`` (not connected yet: use ``async with store.connected()``).
    Raises :class:`StoreError` for a URL of no known kind."""
    if url == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:").removeprefix("//")
        if not path:
            raise StoreError("sqlite: needs a path, e.g. sqlite:rollout-store.db")
        return _sqlite(Path(path))
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from .redis import RedisStore
        except ImportError:
            raise StoreError(
                "a redis:// store needs coredis: pip install 'rollout[redis]'"
            ) from None
        return RedisStore(url)
    raise StoreError(
        f"unknown store {url.split(':', 1)[0]!r}: expected memory, sqlite:PATH or redis://HOST"
    )


def _sqlite(path: Path) -> Store:
    from .sqlite import SQLiteStore

    return SQLiteStore(path)
