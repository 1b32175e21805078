"""The sharded connection pool (rollout._trainer.pool): small httpcore pools made as the calls
outstanding need them, the first with room taken first, places given back when a response
is closed, and a limit on connections in all."""

from __future__ import annotations

import httpcore
import pytest
import trio
import trio.lowlevel

from rollout._trainer.pool import ShardedPool


class _FakePool:
    """Stands in for an httpcore pool: records its size and the requests it carries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.requests = 0
        self.closed = False

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        self.requests += 1
        await trio.lowlevel.checkpoint()
        return httpcore.Response(200, content=b"ok")

    async def aclose(self) -> None:
        self.closed = True


def _sharded(max_connections: int | None = None) -> tuple[ShardedPool, list[_FakePool]]:
    made: list[_FakePool] = []

    def make(size: int) -> httpcore.AsyncConnectionPool:
        made.append(_FakePool(size))
        return made[-1]  # type: ignore[return-value]

    return ShardedPool(make, shard_size=4, max_connections=max_connections), made


REQUEST = httpcore.Request("POST", "http://trainer/v1/chat/completions")


async def test_pools_are_made_as_calls_are_outstanding_and_reused_first() -> None:
    sharded, made = _sharded()
    open_responses = [await sharded.handle_async_request(REQUEST) for _ in range(10)]
    assert [pool.requests for pool in made] == [4, 4, 2]  # 3 pools of at most 4
    for response in open_responses[:6]:
        await response.aclose()
        await response.aclose()  # closing twice gives the place back once
    for _ in range(3):
        await (await sharded.handle_async_request(REQUEST)).aclose()
    assert [pool.requests for pool in made] == [7, 4, 2]  # the first pool with room
    assert sharded.pools == 3
    await sharded.aclose()
    assert all(pool.closed for pool in made)


async def test_past_the_limit_requests_queue_in_the_least_busy_pool() -> None:
    sharded, made = _sharded(max_connections=6)
    responses = [await sharded.handle_async_request(REQUEST) for _ in range(9)]
    assert [pool.size for pool in made] == [4, 4]  # no third pool: 8 >= 6 connections
    assert sum(pool.requests for pool in made) == 9
    for response in responses:
        await response.aclose()


async def test_a_failed_request_gives_its_place_back() -> None:
    sharded, made = _sharded()

    async def refuse(request: httpcore.Request) -> httpcore.Response:
        raise httpcore.ConnectError("refused")

    await sharded.handle_async_request(REQUEST)  # makes the first pool
    made[0].handle_async_request = refuse  # type: ignore[method-assign]
    for _ in range(10):
        with pytest.raises(httpcore.ConnectError):
            await sharded.handle_async_request(REQUEST)
    assert sharded.pools == 1  # the failures did not fill it


async def test_each_origin_has_its_own_pools() -> None:
    sharded, made = _sharded()
    other = httpcore.Request("POST", "https://other-trainer:8443/v1/chat/completions")
    held = [await sharded.handle_async_request(r) for r in (REQUEST, other, REQUEST, other)]
    assert [pool.requests for pool in made] == [2, 2]  # room in the first, but not its origin
    for response in held:
        await response.aclose()


async def test_pools_idle_past_the_keep_alive_are_closed(autojump_clock: trio.abc.Clock) -> None:
    made: list[_FakePool] = []

    def make(size: int) -> httpcore.AsyncConnectionPool:
        made.append(_FakePool(size))
        return made[-1]  # type: ignore[return-value]

    sharded = ShardedPool(make, shard_size=1, idle_seconds=30.0)
    peak = [await sharded.handle_async_request(REQUEST) for _ in range(5)]
    for response in peak[1:]:
        await response.aclose()
    await trio.sleep(31)
    await (await sharded.handle_async_request(REQUEST)).aclose()  # prunes, then is sent
    assert [pool.closed for pool in made] == [False, True, True, True, True, False]
    assert sharded.pools == 2  # the one still in use, and the one just made
    await peak[0].aclose()
    await sharded.aclose()
    assert all(pool.closed for pool in made)
