"""A short run of the hostile-body fuzzer (tests/fuzzing/hostile.py; ``nox -s fuzz`` runs
10,000): a few hundred hostile bodies and headers against real server processes."""

from __future__ import annotations

import json
from pathlib import Path

from fuzzing.hostile import KINDS, failed, format_report, run_fuzz

BODIES = 300


async def test_hostile_bodies_get_no_5xx_no_silence_no_traceback(tmp_path: Path) -> None:
    report = await run_fuzz(bodies=BODIES, seed=0, concurrency=8, workdir=tmp_path)
    summary = format_report(report)
    print(summary)
    (tmp_path / "fuzz-report.json").write_text(json.dumps(report, indent=2))

    assert report["bodies_tried"] == BODIES, summary
    assert set(report["by_class"]) == set(KINDS), summary  # every hostile class was sent
    assert report["5xx"] == 0, summary
    assert report["no_answer"] == 0, summary
    assert report["tracebacks_in_log"] == 0, summary
    assert report["normal_rollout_completed"], summary
    assert not failed(report), summary
