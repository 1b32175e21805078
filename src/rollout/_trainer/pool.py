"""Connections to trainers: httpcore pools of at most :data:`SHARD_SIZE` connections each,
as many as the calls outstanding need.

A trainer's inference engine batches whatever calls are outstanding, so every rollout's
call should be at the trainer at once, each on its own HTTP/1.1 connection. One httpcore
pool does work proportional to its connections and queued requests on every request and
every response closed; with thousands of connections that work dominates the server's CPU
(docs/PERFORMANCE.md). :class:`ShardedPool` keeps each pool small instead: a request goes
to the first pool with a free place (so idle kept-alive connections are reused first), and
a new pool is made when all are busy. Each pool keeps all its connections alive, so a
steady load reuses connections instead of opening one per call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import attrs
import httpcore

__all__ = ["SHARD_SIZE", "ShardedPool"]

#: Connections per pool: httpcore's per-request work grows with this.
SHARD_SIZE = 128


@attrs.define(eq=False)
class _Shard:
    pool: httpcore.AsyncConnectionPool
    #: Requests sent through this pool whose response is not closed yet.
    active: int = 0


class ShardedPool:
    """Pools made by ``make_pool(size)`` as needed, ``shard_size`` connections each, at most
    ``max_connections`` in all (None: no limit; past the limit, requests queue in the least
    busy pool). Has the interface httpx's transport uses of its pool."""

    def __init__(
        self,
        make_pool: Callable[[int], httpcore.AsyncConnectionPool],
        *,
        shard_size: int = SHARD_SIZE,
        max_connections: int | None = None,
    ) -> None:
        self._make_pool = make_pool
        self._shard_size = shard_size
        self._max_connections = max_connections
        self._shards: list[_Shard] = []

    @property
    def pools(self) -> int:
        """How many pools exist now."""
        return len(self._shards)

    def _pick(self) -> _Shard:
        for shard in self._shards:
            if shard.active < self._shard_size:
                return shard
        room = self._max_connections
        if room is None or len(self._shards) * self._shard_size < room:
            size = self._shard_size if room is None else min(self._shard_size, room)
            self._shards.append(_Shard(self._make_pool(size)))
            return self._shards[-1]
        return min(self._shards, key=lambda shard: shard.active)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        shard = self._pick()
        shard.active += 1
        try:
            response = await shard.pool.handle_async_request(request)
        except BaseException:
            shard.active -= 1
            raise
        response.stream = _Counted(response.stream, shard)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.pool.aclose()


class _Counted:
    """A response stream that gives its pool's place back when closed (once)."""

    def __init__(self, stream: object, shard: _Shard) -> None:
        self._stream = stream
        self._shard: _Shard | None = shard

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()  # type: ignore[attr-defined, no-any-return]

    async def aclose(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.active -= 1
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()
