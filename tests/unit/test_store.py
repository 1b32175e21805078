"""Every store backend against the same rules (rollout._store.base): one claim per id and per
key, writes fenced by ownership, leases and take-over, cancellation, expiry. The Redis
backend runs against a real redis-server of the test's own (skipped with a reason where
there is none; never skipped on CI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from conftest import running_redis
from rollout._store import (
    NewRollout,
    Outcome,
    Progress,
    Store,
    StoredPhase,
    StoreError,
    open_store,
)
from rollout._store.memory import MemoryStore

DIGEST = b"\x01" * 32
OK = Outcome("COMPLETED", "stop", 1.0)


def _new(rollout_id: str = "r-1", key: str | None = None, digest: bytes = DIGEST) -> NewRollout:
    return NewRollout(
        rollout_id, digest, key, "http://trainer", "sk-1", b'[{"role":"user","content":"hi"}]'
    )


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "redis":
        with running_redis(tmp_path) as url:
            redis = open_store(url)
            async with redis.connected():
                yield redis
        return
    made = MemoryStore() if request.param == "memory" else open_store(f"sqlite:{tmp_path}/s.db")
    async with made.connected():
        yield made


async def test_one_claim_per_rollout_id_and_per_key(store: Store) -> None:
    await store.renew("w1", 30)
    first = await store.claim(_new(key="k"), "w1")
    assert (first.rollout_id, first.new) == ("r-1", True)
    again = await store.claim(_new(key="k", digest=b"\x02" * 32), "w2")
    assert (again.rollout_id, again.digest, again.new) == ("r-1", DIGEST, False)
    by_key = await store.claim(_new("r-2", key="k"), "w2")  # the key names r-1
    assert (by_key.rollout_id, by_key.new) == ("r-1", False)
    squat = await store.claim(_new("k"), "w2")  # keys live in a namespace of their own
    assert (squat.rollout_id, squat.new) == ("k", True)
    assert await store.lookup("r-9", "k") == again
    assert await store.lookup("nope", None) is None


async def test_concurrent_claims_of_one_id_make_one_record(store: Store) -> None:
    made: list[bool] = []

    async def claim(worker: str) -> None:
        made.append((await store.claim(_new(), worker)).new)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(claim, f"w{i}")
    assert sorted(made) == [False] * 19 + [True]


async def test_only_the_owner_keeps_a_result_and_only_once(store: Store) -> None:
    await store.claim(_new(), "w1")
    progress = Progress("r-1", StoredPhase.RUNNING, 2, 30, 7, b"[]")
    await store.save_progress("w2", [progress])  # not the owner: skipped
    assert (await store.get("r-1")).turns == 0  # type: ignore[union-attr]
    await store.save_progress("w1", [progress])
    assert await store.keep_result("r-1", "w2", b"{}", OK) is False
    assert await store.keep_result("r-1", "w1", b'{"x":1}', OK, progress) is True
    assert await store.keep_result("r-1", "w1", b'{"x":2}', OK) is False  # one result
    status = await store.get("r-1")
    assert status is not None
    assert (status.phase, status.owner, status.turns, status.outcome) == (
        StoredPhase.DELIVERING,
        "w1",
        2,
        OK,
    )


async def test_a_finished_record_keeps_its_digest_until_the_ttl(store: Store) -> None:
    await store.claim(_new(key="k"), "w1")
    await store.keep_result("r-1", "w1", b"{}", OK)
    await store.finish("r-1", StoredPhase.DONE, ttl=0.3)
    status = await store.get("r-1")
    assert status is not None
    assert (status.phase, status.outcome) == (StoredPhase.DONE, OK)
    assert (await store.lookup("r-1", None)) is not None
    await trio.sleep(0.6)
    await store.sweep()
    assert await store.get("r-1") is None
    assert await store.lookup("x", "k") is None
    assert (await store.claim(_new(key="k"), "w2")).new  # the id and the key are free again


async def test_orphans_are_taken_once_and_only_after_the_lease_ends(store: Store) -> None:
    await store.renew("dead", 0.3)
    await store.renew("alive", 30)
    await store.claim(_new("running"), "dead")
    await store.save_progress(
        "dead", [Progress("running", StoredPhase.RUNNING, 1, 10, 5, b'[{"role":"user"}]')]
    )
    await store.claim(_new("delivering"), "dead")
    await store.keep_result("delivering", "dead", b'{"r":1}', OK)
    await store.claim(_new("done"), "dead")
    await store.finish("done", StoredPhase.DONE, ttl=60)
    await store.claim(_new("theirs"), "alive")

    assert await store.take_orphans("alive", 10) == []  # the lease still holds
    await trio.sleep(0.6)
    taken: list[list[str]] = []

    async def take(worker: str) -> None:
        await store.renew(worker, 30)
        taken.append(sorted(o.rollout_id for o in await store.take_orphans(worker, 10)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "alive")
        nursery.start_soon(take, "other")
    assert sorted(taken) == [[], ["delivering", "running"]]  # one taker, each once
    status = await store.get("running")
    assert status is not None
    assert status.owner in ("alive", "other")
    # The dead worker cannot write any more: its result would be a second one.
    assert await store.keep_result("running", "dead", b"{}", OK) is False


async def test_an_orphan_carries_what_the_store_knew(store: Store) -> None:
    await store.renew("dead", 0.2)
    await store.claim(_new("running"), "dead")
    snapshot = b'[{"role":"user","content":"hi"},{"role":"assistant","content":"4"}]'
    await store.save_progress(
        "dead", [Progress("running", StoredPhase.RUNNING, 1, 10, 5, snapshot)]
    )
    await store.claim(_new("delivering"), "dead")
    await store.keep_result("delivering", "dead", b'{"r":1}', OK)
    await trio.sleep(0.4)
    orphans = {o.rollout_id: o for o in await store.take_orphans("me", 10)}
    running, delivering = orphans["running"], orphans["delivering"]
    assert (running.lost_owner, running.result, running.messages) == ("dead", None, snapshot)
    assert (running.turns, running.prompt_tokens, running.completion_tokens) == (1, 10, 5)
    assert (running.server_url, running.api_key, running.digest) == (
        "http://trainer",
        "sk-1",
        DIGEST,
    )
    assert delivering.result == b'{"r":1}'


async def test_a_released_lease_or_result_is_taken_at_once(store: Store) -> None:
    await store.renew("leaving", 30)
    await store.claim(_new("left"), "leaving")
    await store.claim(_new("undelivered"), "busy")
    await store.renew("busy", 30)
    await store.keep_result("undelivered", "busy", b"{}", OK)
    await store.release_result("undelivered", "busy")
    await store.release("leaving")
    assert sorted(o.rollout_id for o in await store.take_orphans("me", 10)) == [
        "left",
        "undelivered",
    ]
    assert await store.take_orphans("me", 10) == []


async def test_cancellation_is_marked_once_and_reaches_the_owner(store: Store) -> None:
    for rollout_id in ("a/1", "a/2", "b/1"):
        await store.claim(_new(rollout_id), "w1")
    await store.claim(_new("done"), "w1")
    await store.keep_result("done", "w1", b"{}", OK)
    assert sorted(await store.request_cancel(prefix="a/")) == ["a/1", "a/2"]
    assert await store.request_cancel(rollout_ids=["a/1", "b/1", "nope", "done"]) == ["b/1"]
    assert await store.request_cancel(all=True) == []  # idempotent
    assert await store.renew("w1", 30) == {"a/1", "a/2", "b/1"}
    assert await store.renew("w2", 30) == frozenset()
    await store.keep_result("a/1", "w1", b"{}", OK)  # it ended: no longer to cancel
    assert await store.renew("w1", 30) == {"a/2", "b/1"}
    status = await store.get("a/2")
    assert status is not None
    assert status.cancel_requested


async def test_unknown_store_urls_are_refused_without_echoing_secrets() -> None:
    with pytest.raises(StoreError, match="unknown store 'postgres'"):
        open_store("postgres://user:hunter2@db/x")
    with pytest.raises(StoreError, match="needs a path"):
        open_store("sqlite:")
    assert "hunter2" not in open_store("redis://user:hunter2@db:6379/0").description


async def test_a_sqlite_file_open_to_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        async with open_store(f"sqlite:{path}").connected():
            pass


async def test_an_unreachable_redis_is_a_store_error(tmp_path: Path) -> None:
    pytest.importorskip("coredis")
    with pytest.raises(StoreError, match=r"store redis://127\.0\.0\.1:9/0"):
        async with open_store("redis://127.0.0.1:9/0").connected():
            pass


async def test_sqlite_commits_a_group_and_a_failing_operation_fails_alone(tmp_path: Path) -> None:
    from rollout._store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db")
    outcomes: dict[str, object] = {}

    def broken(db: object, now: float) -> None:
        db.execute("INSERT INTO no_such_table VALUES (1)")  # type: ignore[attr-defined]

    async def claim(rollout_id: str) -> None:
        outcomes[rollout_id] = (await store.claim(_new(rollout_id), "w")).new

    async def fail() -> None:
        try:
            await store._tx(broken)
        except StoreError as exc:
            outcomes["broken"] = str(exc)

    async with store.connected():
        async with trio.open_nursery() as nursery:  # all queued before the writer runs
            for i in range(40):
                nursery.start_soon(claim, f"r-{i}")
            nursery.start_soon(fail)
        found = [await store.lookup(f"r-{i}", None) for i in range(40)]
        assert None not in found
    assert [outcomes[f"r-{i}"] for i in range(40)] == [True] * 40
    assert "no such table" in str(outcomes["broken"])
