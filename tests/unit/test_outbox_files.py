"""The outbox's files: durable, private, read back oldest first, damaged ones set aside;
delivered rollouts leave a record without secrets, dropped after the TTL."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from rollout._server.outbox import Delivered, Outbox, OutboxError, PendingResult


def _pending(rollout_id: str, **result: object) -> PendingResult:
    body = json.dumps({"rollout_id": rollout_id, **result}, separators=(",", ":")).encode()
    return PendingResult(rollout_id, "http://trainer", body, "sk-1", "ab" * 32, f"key-{rollout_id}")


def _load(outbox: Outbox, now: float = 2e9) -> tuple[list[PendingResult], list[Delivered]]:
    return outbox.load(keep_delivered_for=3600.0, now=now)


def test_a_result_is_written_privately_and_read_back(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    path = outbox.put(_pending("r-1", status="COMPLETED"))

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the rollout's api_key
    assert stat.S_IMODE(os.stat(tmp_path / "outbox").st_mode) == 0o700
    assert _load(outbox) == ([_pending("r-1", status="COMPLETED")], [])
    assert "sk-1" not in repr(_load(outbox)[0][0])


def test_results_come_back_oldest_first_and_go_once_removed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    for index, key in enumerate(["b", "a", "c"]):
        path = outbox.put(_pending(key))
        os.utime(path, (1000 + index, 1000 + index))

    assert [p.rollout_id for p in _load(outbox)[0]] == ["b", "a", "c"]
    outbox.remove("a")
    outbox.remove("never-there")
    assert [p.rollout_id for p in _load(outbox)[0]] == ["b", "c"]


def test_writing_the_same_rollout_again_replaces_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(_pending("r", reward=0.0))
    outbox.put(_pending("r", reward=1.0))
    assert [json.loads(p.result)["reward"] for p in _load(outbox)[0]] == [1.0]


def test_a_delivered_result_leaves_a_record_without_its_key_until_the_ttl(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(_pending("r"))
    outbox.mark_delivered(Delivered("r", "ab" * 32, "key-r", delivered_at=1000.0))

    assert b"sk-1" not in outbox.path_for("r").read_bytes()
    assert _load(outbox, now=1000.0 + 3599) == ([], [Delivered("r", "ab" * 32, "key-r", 1000.0)])
    assert _load(outbox, now=1000.0 + 3601) == ([], [])
    assert not outbox.path_for("r").exists()  # expired records are removed


def test_a_damaged_file_is_set_aside_and_does_not_block_the_others(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(_pending("good"))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text('{"key": "k"}')
    (tmp_path / "nan.json").write_text('{"server_url": "x", "result": {"reward": NaN}}')

    assert [p.rollout_id for p in _load(outbox)[0]] == ["good"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".bad") == [
        "broken.bad",
        "nan.bad",
        "wrong.bad",
    ]


def test_a_file_of_an_earlier_version_is_read_and_renamed(tmp_path: Path) -> None:
    legacy = {
        "key": "idem-1",
        "server_url": "http://trainer",
        "result": {"rollout_id": "r-9", "status": "COMPLETED"},
        "api_key": None,
        "digest": "cd" * 32,
    }
    (tmp_path / "0123.json").write_text(json.dumps(legacy))
    outbox = Outbox(tmp_path)

    (pending,) = _load(outbox)[0]
    assert (pending.rollout_id, pending.idempotency_key) == ("r-9", "idem-1")
    assert outbox.path_for("r-9").exists()
    assert not (tmp_path / "0123.json").exists()


def test_a_missing_directory_is_an_empty_outbox(tmp_path: Path) -> None:
    assert _load(Outbox(tmp_path / "not-yet")) == ([], [])


def test_a_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with pytest.raises(OutboxError, match="chmod 700"):
        Outbox(directory).check_private()
    directory.chmod(0o700)
    Outbox(directory).check_private()
    Outbox(tmp_path / "absent").check_private()  # created private on first use


def test_a_poisoned_file_is_set_aside_not_delivered_at_every_start(tmp_path: Path) -> None:
    """A file an init could not have produced (written by an older version, or by hand)
    must not fail every start on that directory."""
    good = {"rollout_id": "r", "server_url": "http://t", "result": {"rollout_id": "r"}}
    poisons = {
        "url.json": {**good, "server_url": "http://127.0.0.1:80:80"},
        "key.json": {**good, "api_key": "cl\u00e9"},
        "crlf.json": {**good, "api_key": "k\r\nX: 1"},
        "type.json": {**good, "server_url": 9000},
    }
    for name, data in poisons.items():
        (tmp_path / name).write_text(json.dumps(data))

    assert _load(Outbox(tmp_path)) == ([], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        name.replace(".json", ".bad") for name in poisons
    )
