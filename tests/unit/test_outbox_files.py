"""The outbox's files: durable, private, read back oldest first, damaged ones set aside."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rollout.outbox import Outbox, PendingResult


def _pending(key: str, **result: object) -> PendingResult:
    return PendingResult(key, "http://trainer", {"rollout_id": key, **result}, "sk-1", "ab" * 32)


def test_a_result_is_written_privately_and_read_back(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    path = outbox.put(_pending("r-1", status="COMPLETED"))

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the rollout's api_key
    assert outbox.pending() == [_pending("r-1", status="COMPLETED")]
    assert "sk-1" not in repr(outbox.pending()[0])


def test_results_come_back_oldest_first_and_go_once_removed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    for index, key in enumerate(["b", "a", "c"]):
        path = outbox.put(_pending(key))
        os.utime(path, (1000 + index, 1000 + index))

    assert [p.key for p in outbox.pending()] == ["b", "a", "c"]
    outbox.remove("a")
    outbox.remove("never-there")
    assert [p.key for p in outbox.pending()] == ["b", "c"]


def test_writing_the_same_key_again_replaces_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(_pending("r", reward=0.0))
    outbox.put(_pending("r", reward=1.0))
    assert [p.result["reward"] for p in outbox.pending()] == [1.0]


def test_a_damaged_file_is_set_aside_and_does_not_block_the_others(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.put(_pending("good"))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text('{"key": "k"}')

    assert [p.key for p in outbox.pending()] == ["good"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".bad") == [
        "broken.bad",
        "wrong.bad",
    ]


def test_a_missing_directory_is_an_empty_outbox(tmp_path: Path) -> None:
    assert Outbox(tmp_path / "not-yet").pending() == []
