"""Connections to trainers: httpcore pools of at most :data:`SHARD_SIZE` connections each,
as many as the calls outstanding need.

A trainer's inference engine batches whatever calls are outstanding, so every rollout's
call should be at the trainer at once, each on its own HTTP/1.1 connection. One httpcore
pool does work quadratic in its connections on every request and every response closed;
with hundreds of connections that work dominates the server's CPU (docs/PERFORMANCE.md).
:class:`ShardedPool` keeps each pool small instead: a request goes to the first pool with a
free place (so idle kept-alive connections are reused first), and a new pool is made when
all are busy. Each pool keeps all its connections alive, so a steady load reuses
connections instead of opening one per call.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Callable

import attrs
import httpcore

__all__ = ["SHARD_SIZE", "ShardedPool"]

#: Connections per pool. httpcore 1.0's pool counts its idle connections once per
#: connection on every request and every response closed (quadratic in its size), so small
#: pools are cheapest: measured per request, 1.1 ms of CPU with pools of 16, 0.95 with 8,
#: 0.83 with 4 (docs/PERFORMANCE.md).
SHARD_SIZE = 4


@attrs.define(eq=False)
class _Shard:
    index: int
    pool: httpcore.AsyncConnectionPool
    #: Requests sent through this pool whose response is not closed yet.
    active: int = 0
    #: Whether it is in the heap of pools with room.
    listed: bool = False


class ShardedPool:
    """Pools made by ``make_pool(size)`` as needed, ``shard_size`` connections each
    (default :data:`SHARD_SIZE`), at most
    ``max_connections`` in all (None: no limit; past the limit, requests queue in the least
    busy pool). Has the interface httpx's transport uses of its pool. Finding a pool costs
    O(log pools): those with room are kept in a heap by age, oldest first."""

    def __init__(
        self,
        make_pool: Callable[[int], httpcore.AsyncConnectionPool],
        *,
        shard_size: int | None = None,
        max_connections: int | None = None,
    ) -> None:
        self._make_pool = make_pool
        self._shard_size = shard_size or SHARD_SIZE
        self._max_connections = max_connections
        self._shards: list[_Shard] = []
        self._with_room: list[tuple[int, _Shard]] = []  # a heap by index

    @property
    def pools(self) -> int:
        """How many pools exist now."""
        return len(self._shards)

    def _pick(self) -> _Shard:
        if self._with_room:
            return self._with_room[0][1]
        room = self._max_connections
        if room is None or len(self._shards) * self._shard_size < room:
            size = self._shard_size if room is None else min(self._shard_size, room)
            shard = _Shard(len(self._shards), self._make_pool(size))
            self._shards.append(shard)
            self._list(shard)
            return shard
        return min(self._shards, key=lambda shard: shard.active)

    def _list(self, shard: _Shard) -> None:
        if not shard.listed:
            shard.listed = True
            heapq.heappush(self._with_room, (shard.index, shard))

    def _take(self, shard: _Shard) -> None:
        shard.active += 1
        if shard.active >= self._shard_size and shard.listed:
            heapq.heappop(self._with_room)  # it was the top: _pick gives the top
            shard.listed = False

    def _give_back(self, shard: _Shard) -> None:
        shard.active -= 1
        if shard.active < self._shard_size:
            self._list(shard)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        shard = self._pick()
        self._take(shard)
        try:
            response = await shard.pool.handle_async_request(request)
        except BaseException:
            self._give_back(shard)
            raise
        response.stream = _Counted(response.stream, self, shard)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.pool.aclose()

    async def __aenter__(self) -> ShardedPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Counted:
    """A response stream that gives its pool's place back when closed (once)."""

    def __init__(self, stream: object, owner: ShardedPool, shard: _Shard) -> None:
        self._stream = stream
        self._owner = owner
        self._shard: _Shard | None = shard

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()  # type: ignore[attr-defined, no-any-return]

    async def aclose(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            self._owner._give_back(shard)
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()
