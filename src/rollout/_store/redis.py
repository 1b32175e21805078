"""The Redis store (``--store redis://[user:password@]host:port/db``, or ``rediss://``), for
many hosts behind one load balancer.

The client is coredis: typed, maintained, and built on AnyIO, so it runs on Trio (the
official ``redis`` package's asyncio client does not); the choice is in docs/DEPLOYMENT.md.
Every operation that reads and then writes is one Lua script, so it is atomic in Redis
whatever the number of workers; times inside scripts are Redis's own (``TIME``), so the
clocks of the hosts never matter. Keys (all under the ``rollout:`` prefix)::

    rollout:r:<rollout_id>   hash: the record (digest, owner, phase, progress, result...)
    rollout:k:<idem. key>    string: the rollout_id that key belongs to
    rollout:active           sorted set: unfinished or undelivered rollout ids, by creation
    rollout:owned:<owner>    set: the rollout ids a worker owns
    rollout:cancels:<owner>  set: those of its rollouts whose cancellation was requested
    rollout:workers          sorted set: worker -> end of its lease (Unix ms; 0: released)

A finished record and its key expire (``PEXPIRE``) after the idempotency TTL. Scripts name
keys they compute, so a Redis *Cluster* is not supported: use one primary (with replicas or
Sentinel for failover). The records hold api keys of unfinished rollouts: protect Redis
with a password and TLS (docs/SECURITY.md).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import coredis
import coredis.exceptions

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
from .redis_lua import SOURCES

__all__ = ["RedisStore"]

PREFIX = "rollout:"
#: Snapshots written per script call.
_BATCH = 256


class RedisStore(Store):
    """The records in the Redis server at ``url``."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise StoreError(f"not a Redis URL: {redact(url)}")
        self.url = url
        self._client: coredis.Redis[bytes] | None = None
        self._scripts: dict[str, Any] = {}

    @property
    def description(self) -> str:
        return redact(self.url)

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            self.url, decode_responses=False, connect_timeout=5.0, stream_timeout=10.0
        )
        ready = False
        try:
            async with client:
                for source in SOURCES.values():  # loaded now: no NOSCRIPT retry on first use
                    await self._call(client.script_load(source))
                self._scripts = {n: client.register_script(s) for n, s in SOURCES.items()}
                self._client, ready = client, True
                try:
                    yield
                finally:
                    self._client = None
        except _FAILURES as exc:
            if ready:
                raise
            raise StoreError(f"store {self.description}: {exc}") from exc
        except BaseExceptionGroup as group:
            # Connecting failed: coredis's pool groups our error with its connection's.
            if ready or group.split(_FAILURES)[1] is not None:
                raise
            first = group.subgroup(StoreError) or group
            raise StoreError(str(_leaf(first))) from group

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (coredis.exceptions.RedisError, OSError, EOFError) as exc:
            raise StoreError(f"store {self.description}: {exc}") from exc

    async def _script(self, name: str, args: Sequence[Any]) -> Any:
        if self._client is None:
            raise StoreError(f"store {self.description} is not connected")
        return await self._call(self._scripts[name](keys=[], args=[PREFIX, *args]))

    # ------------------------------------------------------------------ operations

    async def claim(self, new: NewRollout, owner: str) -> Claimed:
        rollout_id, digest, made = await self._script(
            "claim",
            [
                new.rollout_id,
                new.digest,
                new.idempotency_key or "",
                new.server_url,
                new.api_key or "",
                "0" if new.api_key is None else "1",
                owner,
                new.messages,
            ],
        )
        return Claimed(_text(rollout_id), bytes(digest), made == 1)

    async def lookup(self, rollout_id: str, idempotency_key: str | None) -> Claimed | None:
        assert self._client is not None
        client = self._client
        if idempotency_key:
            other = await self._call(client.get(PREFIX + "k:" + idempotency_key))
            if other is not None:
                digest = await self._call(client.hget(PREFIX + "r:" + _text(other), "digest"))
                if digest is not None:
                    return Claimed(_text(other), bytes(digest), False)
        digest = await self._call(client.hget(PREFIX + "r:" + rollout_id, "digest"))
        return None if digest is None else Claimed(rollout_id, bytes(digest), False)

    async def get(self, rollout_id: str) -> StoredRollout | None:
        if self._client is None:
            raise StoreError(f"store {self.description} is not connected")
        fields = await self._call(
            self._client.hmget(
                PREFIX + "r:" + rollout_id,
                [
                    "phase",
                    "owner",
                    "turns",
                    "prompt_tokens",
                    "completion_tokens",
                    "created",
                    "updated",
                    "cancel",
                    "outcome",
                ],
            )
        )
        if fields[0] is None:
            return None
        phase, owner, turns, ptok, ctok, created, updated, cancel, outcome = fields
        return StoredRollout(
            rollout_id,
            StoredPhase(_text(phase)),
            _text(owner),
            int(turns),
            int(ptok),
            int(ctok),
            int(created) / 1000,
            int(updated) / 1000,
            cancel == b"1",
            _outcome(outcome),
        )

    async def save_progress(self, owner: str, snapshots: Sequence[Progress]) -> None:
        for start in range(0, len(snapshots), _BATCH):
            args: list[Any] = [owner]
            for s in snapshots[start : start + _BATCH]:
                args += [
                    s.rollout_id,
                    s.phase.value,
                    s.turns,
                    s.prompt_tokens,
                    s.completion_tokens,
                    "0" if s.messages is None else "1",
                    s.messages or b"",
                ]
            await self._script("save_progress", args)

    async def keep_result(
        self,
        rollout_id: str,
        owner: str,
        result: bytes,
        outcome: Outcome,
        progress: Progress | None = None,
    ) -> bool:
        counts = (
            ["0", 0, 0, 0]
            if progress is None
            else ["1", progress.turns, progress.prompt_tokens, progress.completion_tokens]
        )
        kept = await self._script(
            "keep_result", [rollout_id, owner, result, _outcome_json(outcome), *counts]
        )
        return bool(kept == 1)

    async def finish(
        self, rollout_id: str, phase: StoredPhase, ttl: float, outcome: Outcome | None = None
    ) -> None:
        ttl_ms = max(1, int(ttl * 1000))
        outcome_json = "" if outcome is None else _outcome_json(outcome)
        await self._script("finish", [rollout_id, phase.value, ttl_ms, outcome_json])

    async def release_result(self, rollout_id: str, owner: str) -> None:
        await self._script("release_result", [rollout_id, owner])

    async def renew(self, owner: str, ttl: float) -> frozenset[str]:
        ids = await self._script("renew", [owner, max(1, int(ttl * 1000))])
        return frozenset(_text(i) for i in ids)

    async def release(self, owner: str) -> None:
        if self._client is None:
            raise StoreError(f"store {self.description} is not connected")
        await self._call(self._client.zadd(PREFIX + "workers", {owner: 0}))

    async def take_orphans(self, owner: str, limit: int) -> list[Orphan]:
        flat = await self._script("take_orphans", [owner, limit])
        orphans = []
        for i in range(0, len(flat), 12):
            rollout_id, lost, url, key, digest, idem, result, messages, *numbers = flat[i : i + 12]
            turns, ptok, ctok, created = (int(n or 0) for n in numbers)
            orphans.append(
                Orphan(
                    rollout_id=_text(rollout_id),
                    lost_owner=_text(lost),
                    server_url=_text(url),
                    api_key=None if key is None else _text(key),
                    digest=bytes(digest),
                    idempotency_key=_text(idem) or None,
                    result=None if result is None else bytes(result),
                    messages=bytes(messages or b"[]"),
                    turns=turns,
                    prompt_tokens=ptok,
                    completion_tokens=ctok,
                    created_at=created / 1000,
                )
            )
        return orphans

    async def request_cancel(
        self, *, rollout_ids: Sequence[str] = (), prefix: str | None = None, all: bool = False
    ) -> list[str]:
        if all:
            args = ["all"]
        elif prefix is not None:
            args = ["prefix", prefix]
        else:
            args = ["ids", *dict.fromkeys(rollout_ids)]
        return [_text(i) for i in await self._script("request_cancel", args)]


#: What a failing Redis (or the way to it) raises.
_FAILURES = (StoreError, coredis.exceptions.RedisError, OSError, EOFError)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def redact(url: str) -> str:
    """``url`` without its password (and user name)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _outcome_json(outcome: Outcome) -> str:
    return json.dumps([outcome.status, outcome.finish_reason, outcome.reward])


def _outcome(value: bytes | None) -> Outcome | None:
    if not value:
        return None
    status, finish_reason, reward = json.loads(value)
    return Outcome(status, finish_reason, reward)
