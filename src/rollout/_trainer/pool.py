"""Connections to trainers: one small httpcore pool per connection, per trainer origin, as
many as the calls outstanding need.

A trainer's inference engine batches whatever calls are outstanding, so every rollout's
call should be at the trainer at once, each on its own HTTP/1.1 connection. One httpcore
pool does work quadratic in its connections on every request and every response closed;
with hundreds of connections that work dominates the server's CPU (docs/PERFORMANCE.md).
:class:`ShardedPool` keeps each pool small instead (:data:`SHARD_SIZE` connections): a
request goes to the oldest pool of its origin with a free place (so idle kept-alive
connections are reused first), and a new pool is made when all are busy. Pools keep their
connections alive, so a steady load reuses connections instead of opening one per call;
a pool left idle for ``idle_seconds`` (after a peak) is closed, so its socket does not
linger.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Callable

import attrs
import httpcore
import trio

__all__ = ["SHARD_SIZE", "ShardedPool"]

#: Connections per pool. httpcore 1.0's pool counts its idle connections once per
#: connection, and checks each for expiry, on every request and every response closed, so
#: the smallest pools are cheapest: measured per request, 1.1 ms of CPU with pools of 16,
#: 0.95 with 8, 0.83 with 4 through httpx's client; 0.59 with 4 and 0.46 with 1 through
#: its transport alone (docs/PERFORMANCE.md).
SHARD_SIZE = 1

#: An origin: scheme, host and port, as httpcore's request URL has them.
Origin = tuple[bytes, bytes, int | None]


@attrs.define(eq=False)
class _Shard:
    origin: Origin
    index: int
    pool: httpcore.AsyncConnectionPool
    #: Requests sent through this pool whose response is not closed yet.
    active: int = 0
    #: Whether it is in its origin's heap of pools with room.
    listed: bool = False
    #: When its last response was closed (Trio clock, seconds).
    idle_since: float = 0.0
    closed: bool = False


@attrs.define(eq=False)
class _Origin:
    shards: list[_Shard] = attrs.Factory(list)
    #: Pools with room, a heap by index (oldest first); closed ones are skipped lazily.
    with_room: list[tuple[int, _Shard]] = attrs.Factory(list)
    made: int = 0


class ShardedPool:
    """Pools made by ``make_pool(size)`` as needed, ``shard_size`` connections each
    (default :data:`SHARD_SIZE`), separately for each origin, at most ``max_connections``
    in all (None: no limit; past it, requests queue in the origin's least busy pool).
    A pool with nothing in flight for ``idle_seconds`` is closed (checked at most every
    ``idle_seconds / 2``, on a request). Has the interface httpx's transport uses of its
    pool. Finding a pool costs O(log pools): those with room are kept in a heap by age."""

    def __init__(
        self,
        make_pool: Callable[[int], httpcore.AsyncConnectionPool],
        *,
        shard_size: int | None = None,
        max_connections: int | None = None,
        idle_seconds: float = 30.0,
    ) -> None:
        self._make_pool = make_pool
        self._shard_size = shard_size or SHARD_SIZE
        self._max_connections = max_connections
        self._idle_seconds = idle_seconds
        self._origins: dict[Origin, _Origin] = {}
        self._count = 0
        self._next_prune: float | None = None

    @property
    def pools(self) -> int:
        """How many pools exist now."""
        return self._count

    def _pick(self, key: Origin) -> _Shard:
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        while origin.with_room:
            shard = origin.with_room[0][1]
            if not shard.closed:
                return shard
            heapq.heappop(origin.with_room)
        room = self._max_connections
        if origin.shards and room is not None and self._count * self._shard_size >= room:
            return min(origin.shards, key=lambda shard: shard.active)
        size = self._shard_size if room is None else max(1, min(self._shard_size, room))
        shard = _Shard(key, origin.made, self._make_pool(size))
        origin.made += 1
        origin.shards.append(shard)
        self._count += 1
        self._list(origin, shard)
        return shard

    def _list(self, origin: _Origin, shard: _Shard) -> None:
        if not shard.listed and not shard.closed:
            shard.listed = True
            heapq.heappush(origin.with_room, (shard.index, shard))

    def _take(self, shard: _Shard) -> None:
        shard.active += 1
        if shard.active >= self._shard_size and shard.listed:
            heapq.heappop(self._origins[shard.origin].with_room)  # _pick gives the top
            shard.listed = False

    def _give_back(self, shard: _Shard) -> None:
        shard.active -= 1
        if shard.active == 0:
            shard.idle_since = trio.current_time()
        origin = self._origins.get(shard.origin)
        if origin is not None and shard.active < self._shard_size:
            self._list(origin, shard)

    async def _prune(self) -> None:
        """Close the pools idle for ``idle_seconds``, at most every ``idle_seconds / 2``."""
        now = trio.current_time()
        if self._next_prune is None:
            self._next_prune = now + self._idle_seconds / 2
        if now < self._next_prune:
            return
        self._next_prune = now + self._idle_seconds / 2
        idle: list[_Shard] = []
        for key, origin in list(self._origins.items()):
            keep = []
            for shard in origin.shards:
                if shard.active == 0 and now - shard.idle_since >= self._idle_seconds:
                    shard.closed = True
                    idle.append(shard)
                else:
                    keep.append(shard)
            origin.shards = keep
            if not keep:
                del self._origins[key]
        self._count -= len(idle)
        for shard in idle:
            await shard.pool.aclose()

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        await self._prune()
        url = request.url
        shard = self._pick((url.scheme, url.host, url.port))
        self._take(shard)
        try:
            response = await shard.pool.handle_async_request(request)
        except BaseException:
            self._give_back(shard)
            raise
        response.stream = _Counted(response.stream, self, shard)
        return response

    async def aclose(self) -> None:
        origins, self._origins, self._count = self._origins, {}, 0
        for origin in origins.values():
            for shard in origin.shards:
                shard.closed = True
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
