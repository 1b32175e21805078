"""``rollout eval``: how well a model does with an agent, over K samples per row.

Samples are ordinary rollouts (:mod:`rollout._local`: the server's own lifecycle); this
module only scores them. A sample *passes* when its reward is at least the threshold;
pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
Trained on Code", §2.1): for a row with ``n`` samples of which ``c`` pass,
``1 - C(n - c, k) / C(n, k)``, averaged over rows. An ``ERROR`` sample has no reward: it
fails, and it is counted apart (an infrastructure failure is not the model's).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import attrs

from ._local import RowResult

__all__ = ["EvalReport", "pass_at_k", "report", "sample_id"]

#: How a sample's rollout id is made from its row's id and its index.
SAMPLE_SEPARATOR = "#"


def sample_id(row_id: str, index: int) -> str:
    return f"{row_id}{SAMPLE_SEPARATOR}{index}"


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one row: ``n`` samples, ``c`` of them passed, ``k <= n``.

    Raises :class:`ValueError` unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@attrs.frozen
class EvalReport:
    """The scores of one model: rewards in the agent's units, pass@k for k = 1..n."""

    label: str
    n: int
    rows: int
    samples: int
    errored: int
    mean_reward: float | None
    std_reward: float | None
    pass_at: dict[int, float]
    per_row: list[dict[str, Any]]
    #: Share of rows whose samples all scored the same: as a GRPO group, no learning signal.
    flat_rows: float | None = None

    def to_json(self) -> dict[str, Any]:
        body = attrs.asdict(self)
        body["pass_at"] = {str(k): v for k, v in self.pass_at.items()}
        return body


def report(
    label: str, results: Sequence[RowResult], *, n: int, threshold: float = 1.0
) -> EvalReport:
    """Score ``results`` (``n`` samples per row, ids made by :func:`sample_id`)."""
    by_row: dict[str, list[RowResult]] = {}
    for result in results:
        row, _, _ = result.id.rpartition(SAMPLE_SEPARATOR)
        by_row.setdefault(row, []).append(result)
    rewards = [r.reward for r in results if r.reward is not None]
    per_row: list[dict[str, Any]] = []
    passed_by_row: dict[str, int] = {}
    for row, samples in by_row.items():
        passed = sum(1 for s in samples if s.reward is not None and s.reward >= threshold)
        passed_by_row[row] = passed
        per_row.append(
            {
                "id": row,
                "rewards": [s.reward for s in samples],
                "passed": passed,
                "errored": sum(1 for s in samples if s.status != "COMPLETED"),
            }
        )
    pass_at = {
        k: statistics.fmean(
            pass_at_k(len(samples), passed_by_row[row], k) for row, samples in by_row.items()
        )
        for k in range(1, n + 1)
        if by_row and all(len(samples) >= k for samples in by_row.values())
    }
    scored = [[s.reward or 0.0 for s in samples] for samples in by_row.values()]
    flat = sum(1 for scores in scored if len(set(scores)) == 1) / len(scored) if scored else None
    return EvalReport(
        label=label,
        n=n,
        rows=len(by_row),
        samples=len(results),
        errored=sum(1 for r in results if r.status != "COMPLETED"),
        mean_reward=statistics.fmean(rewards) if rewards else None,
        std_reward=statistics.pstdev(rewards) if len(rewards) > 1 else None,
        pass_at=pass_at,
        per_row=per_row,
        flat_rows=flat if n > 1 else None,
    )
