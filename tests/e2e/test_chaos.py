"""The chaos run of benchmarks/chaos.py, short: ~150 rollouts over three server processes
sharing one store (or the three workers of one ``rollout serve --workers 3``), with trainer
faults, connection resets, a 503 window on results, one SIGKILL and one SIGTERM. Every
accepted rollout gets exactly one result and runs once.

The full run: ``nox -s chaos`` (2000 rollouts: Redis, SQLite, then SQLite with --workers)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

CHAOS_SCRIPT = Path(__file__).parents[2] / "benchmarks" / "chaos.py"


def _load_chaos() -> ModuleType:
    """benchmarks/chaos.py as a module (benchmarks/ is not a package)."""
    if (loaded := sys.modules.get("rollout_chaos")) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("rollout_chaos", CHAOS_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rollout_chaos"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("store", "layout"),
    [("redis", "processes"), ("sqlite", "processes"), ("sqlite", "workers")],
    ids=["redis", "sqlite", "sqlite-workers"],
)
async def test_every_accepted_rollout_gets_exactly_one_result(
    store: str, layout: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    chaos = _load_chaos()
    # The Redis fixture skips without redis-server, except on CI (CI set), where it fails.
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
    options = chaos.Options(
        store=store,
        layout=layout,
        rollouts=150,
        concurrency=48,
        seed=7,
        report=tmp_path / "chaos-report.json",
        workdir=tmp_path / "work",
        redis_url=redis_url,
        outage=(2.0, 5.0),  # seconds after the first init: every result answered 503
        settle=60.0,
        quiet=3.0,
    )
    report = await chaos.run(options)
    summary = chaos.summary(report)
    assert report["accepted"] == 150, summary
    assert report["lost"] == 0, summary
    assert report["duplicates"] == 0, summary
    assert report["max_runs_per_id"] == 1, summary
    assert report["orphan_results"] > 0, summary  # the SIGKILL cut rollouts off
    assert [w["fate"] for w in report["workers"]].count("SIGTERM") == 1, summary
    sigterm = next(w for w in report["workers"] if w["fate"] == "SIGTERM")
    assert sigterm["exit_status"] == 0, summary
    if layout == "workers":  # the parent replaced both, then drained every worker and exited 0
        parent = report["workers"][0]
        assert (parent["name"], parent["exit_status"]) == ("parent", 0), summary
        assert report["worker_processes_started"] == 3 + 2, summary
        assert report["worker_processes_left_running"] == [], summary
