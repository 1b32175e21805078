"""pass@k (the unbiased estimator of Chen et al. 2021) and the eval report's arithmetic."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout._eval import pass_at_k, report, sample_id
from rollout._local import RowResult


def _row(id: str, reward: float | None, status: str = "COMPLETED") -> RowResult:
    return RowResult(id, status, "stop", reward, 1, 1, 1, 0.1, None, "", [])


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),
        (4, 1, 4, 1.0),
        (4, 0, 2, 0.0),
        (4, 4, 1, 1.0),
        (5, 2, 2, 0.7),
        (10, 3, 1, 0.3),
    ],
)
def test_known_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@given(
    st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n)))
)
def test_it_is_the_chance_that_k_of_the_n_samples_hold_a_pass(nck: tuple[int, int, int]) -> None:
    """Counting every k-subset of n samples, c of which passed, gives the same number."""
    n, c, k = nck
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert math.isfinite(pass_at_k(n, c, k))


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)])
def test_nonsense_is_refused(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_a_report_scores_rows_of_samples() -> None:
    rows = [
        _row(sample_id("a", 0), 1.0),
        _row(sample_id("a", 1), 0.0),
        _row(sample_id("b", 0), 0.0),
        _row(sample_id("b", 1), None, status="ERROR"),  # an infrastructure failure: fails
    ]
    scored = report("m", rows, n=2)
    assert (scored.rows, scored.samples, scored.errored) == (2, 4, 1)
    assert scored.mean_reward == pytest.approx(1 / 3)
    assert scored.pass_at == {1: pytest.approx((0.5 + 0.0) / 2), 2: pytest.approx((1.0 + 0) / 2)}
    assert scored.per_row[0] == {"id": "a", "rewards": [1.0, 0.0], "passed": 1, "errored": 0}
    assert scored.to_json()["pass_at"] == {"1": 0.25, "2": 0.5}
    assert scored.flat_rows == 0.5  # row b scored 0 and (error) 0: no signal in that group


def test_a_row_id_with_the_separator_in_it_stays_whole() -> None:
    scored = report("m", [_row(sample_id("x#y", 0), 1.0)], n=1)
    assert scored.per_row[0]["id"] == "x#y"
