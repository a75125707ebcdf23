"""The loss study's paired statistics on hand-made tables with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from napari_boundary_seg.study_stats import (
    PairedComparison,
    bootstrap_mean_ci,
    case_comparisons_markdown,
    compare_arms,
    compare_cases,
    comparisons_markdown,
    paired_differences,
    wilcoxon_p,
)


def _table(a_values, b_values, metric="dice"):
    """Rows of arms 'a' and 'b' over seeds 0, 1 and cases c0..c{n/2-1}."""
    rows = []
    n = len(a_values)
    for i in range(n):
        seed, case = i % 2, f"c{i // 2}"
        rows.append({"arm": "a", "seed": seed, "case": case, metric: a_values[i]})
        rows.append({"arm": "b", "seed": seed, "case": case, metric: b_values[i]})
    return rows


def test_wilcoxon_exact_by_hand() -> None:
    # five positive differences, distinct ranks: the only as-extreme sign patterns
    # are all + and all -, so the exact two-sided p is 2 / 2**5
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    # one negative of rank 1: T- = 1; P(T- <= 1) = 2/32 each side -> p = 4/32
    assert wilcoxon_p([-0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(4 / 32)
    d = np.random.default_rng(3).normal(0.02, 0.05, size=15)
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue)
    assert math.isnan(wilcoxon_p([0.0, 0.0, 0.0]))  # no non-zero difference
    assert math.isnan(wilcoxon_p([0.3]))


def test_bootstrap_ci_matches_scipy_and_a_hand_bootstrap() -> None:
    d = np.array([0.05, -0.01, 0.02, 0.04, 0.00, 0.03, 0.06, -0.02, 0.01, 0.02])
    low, high = bootstrap_mean_ci(d, seed=7)
    ref = stats.bootstrap(
        (d,), np.mean, n_resamples=9999, method="percentile", rng=np.random.default_rng(7)
    ).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))
    assert (low, high) == bootstrap_mean_ci(d, seed=7)  # reproducible
    # an independent percentile bootstrap written out by hand agrees closely
    rng = np.random.default_rng(0)
    means = d[rng.integers(0, d.size, size=(40000, d.size))].mean(axis=1)
    hand = np.percentile(means, [2.5, 97.5])
    assert low == pytest.approx(hand[0], abs=0.003) and high == pytest.approx(hand[1], abs=0.003)
    assert low < d.mean() < high
    assert bootstrap_mean_ci([0.2, 0.2, 0.2]) == (0.2, 0.2)
    assert all(math.isnan(x) for x in bootstrap_mean_ci([0.2]))


def test_paired_differences_pairs_by_seed_and_case_and_drops_nan() -> None:
    rows = _table([0.5, 0.6, 0.7, math.nan], [0.6, 0.6, 0.9, 0.8])
    rows.append({"arm": "b", "seed": 0, "case": "extra", "dice": 1.0})  # unpaired: ignored
    rows.append({"arm": "gdl", "seed": 0, "case": "c0", "dice": 0.0})  # other arm: ignored
    va, vb = paired_differences(rows, "a", "b", "dice")
    # keys sorted as (seed, case): (0, c0), (0, c1), (1, c0); (1, c1) has a NaN
    np.testing.assert_allclose(va, [0.5, 0.7, 0.6])
    np.testing.assert_allclose(vb, [0.6, 0.9, 0.6])
    with pytest.raises(ValueError, match="two rows"):
        paired_differences(rows + [rows[0]], "a", "b", "dice")


def test_compare_arms_direction_from_the_numbers() -> None:
    a = [0.60, 0.62, 0.55, 0.70, 0.58, 0.66, 0.61, 0.64, 0.59, 0.63]
    b = [
        x + d
        for x, d in zip(a, [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1], strict=True)
    ]
    rows = _table(a, b)
    # HD95: b is larger, and lower is better -> worse with b
    for row in rows:
        row["hd95"] = 10.0 + (5.0 if row["arm"] == "b" else 0.0) + float(row["case"][1:])
    (dice, hd95) = compare_arms(
        rows, "a", "b", [("dice", "DSC", True), ("hd95", "HD95 (mm)", False)]
    )
    assert dice.n == 10 and dice.mean_diff == pytest.approx(0.055)
    assert dice.p_value == pytest.approx(2 / 2**10)  # all ten positive, distinct ranks
    assert dice.ci_low > 0 and dice.ci_high < 0.1
    assert dice.verdict() == "better with B" and (dice.n_b_better, dice.n_a_better) == (10, 0)
    assert hd95.mean_diff == pytest.approx(5.0)
    assert hd95.verdict() == "worse with B" and hd95.n_a_better == 10
    assert hd95.ci_low == hd95.ci_high == pytest.approx(5.0)  # constant difference
    assert math.isnan(hd95.p_value) is False  # all differences equal but non-zero
    text = comparisons_markdown([dice, hd95], {"a": "GDL", "b": "GDL+BL"}, "test")
    assert "GDL+BL is better than GDL" in text
    assert "HD95 (mm): GDL+BL is worse than GDL" in text


def test_no_difference_is_said_so() -> None:
    rows = _table([0.5, 0.6, 0.7, 0.8], [0.51, 0.59, 0.72, 0.79])
    (c,) = compare_arms(rows, "a", "b", [("dice", "DSC", True)])
    assert c.p_value > 0.05 and c.verdict() == "no significant difference"
    assert "no significant difference between B and A" in comparisons_markdown(
        [c], {"a": "A", "b": "B"}, "x"
    )
    empty = PairedComparison("dice", "DSC", True, "a", "b", 0, *(math.nan,) * 6, 0, 0)
    assert empty.verdict() == "no pairs"


def test_case_comparisons_count_each_case_once() -> None:
    """The study's report pairs test cases (seeds averaged first): 8 cases × 2 seeds
    are 8 pairs, not 16, and the words follow the numbers."""
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 0.7, size=16)
    rows = _table(list(a), list(a - 0.1 - rng.uniform(0, 0.02, size=16)))
    (dice,) = compare_cases(rows, "a", "b", [("dice", "DSC", True)])
    assert (dice.n_cases, dice.n_seeds) == (8, 2)
    assert dice.verdict() == "worse with B" and dice.ci_high < 0
    text = case_comparisons_markdown([dice], {"a": "GDL", "b": "GDL+BL"}, "test")
    assert "| DSC | 8 × 2 |" in text and "a case counts once" in text
    assert "- DSC: GDL+BL is worse than GDL (higher is better" in text and "8 cases)" in text
    # three cases: the CI excludes 0 but Wilcoxon cannot reach 0.05; said, not hidden
    (few,) = compare_cases(rows[:12], "a", "b", [("dice", "DSC", True)])
    assert few.n_cases == 3 and few.verdict() == "unclear"
    short = case_comparisons_markdown([few], {}, "test")
    assert "- DSC: unclear between b and a: the bootstrap CI excludes 0 but 3 cases" in short
    assert case_comparisons_markdown([], {}, "test") == ""
