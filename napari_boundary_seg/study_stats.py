"""Paired statistics of the loss study: arm B minus arm A, per test case and seed.

The loss study trains every arm with the same seeds on the same split, so each
(seed, test case) gives one *pair*: the same case segmented by two models
trained from the same initialisation with two objectives. For each metric this
module computes the paired differences ``B - A``, a Wilcoxon signed-rank test of
"the differences are symmetric about 0" (:func:`scipy.stats.wilcoxon`, two
sided) and a seeded percentile-bootstrap 95 % confidence interval of their mean
(:func:`scipy.stats.bootstrap`), and words the direction from the numbers
(better / worse for B, or no significant difference), never from a template.

Pairs over seeds are not independent (the same case appears once per seed), so
the p-values are optimistic; the module says so in the text it writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "COMPARED_METRICS",
    "PairedComparison",
    "bootstrap_mean_ci",
    "compare_arms",
    "comparisons_markdown",
    "paired_differences",
    "wilcoxon_p",
]

COMPARED_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("dice", "DSC", True),
    ("hd95", "HD95 (mm)", False),
    ("lesion_f1", "lesion F1", True),
    ("lesion_recall_small", "small-lesion recall", True),
)
"""``(key, title, higher_is_better)`` of the metrics compared pairwise."""


@dataclass(frozen=True)
class PairedComparison:
    """One metric, arm ``b`` minus arm ``a`` over the paired (seed, case) rows.

    Attributes
    ----------
    metric, title, higher_is_better
        The metric compared.
    a, b
        Arm keys (the difference is ``b - a``).
    n
        Number of pairs with both values finite.
    mean_a, mean_b, mean_diff
        Means over the pairs.
    ci_low, ci_high
        Bootstrap confidence interval of ``mean_diff`` (NaN with fewer than 2 pairs).
    p_value
        Two-sided Wilcoxon signed-rank p-value (NaN with fewer than 2 pairs or
        when every difference is 0).
    n_b_better, n_a_better
        Pairs where ``b`` (``a``) is strictly better.
    """

    metric: str
    title: str
    higher_is_better: bool
    a: str
    b: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_b_better: int
    n_a_better: int

    def verdict(self, alpha: float = 0.05) -> str:
        """The direction in words, from the numbers: better / worse for ``b`` or no difference."""
        if self.n == 0:
            return "no pairs"
        if math.isnan(self.p_value) or self.p_value >= alpha:
            return "no significant difference"
        improves = (self.mean_diff > 0) == self.higher_is_better
        if self.mean_diff == 0:
            return "no significant difference"
        return "better with B" if improves else "worse with B"


def paired_differences(
    rows: Sequence[Mapping[str, Any]],
    a: str,
    b: str,
    metric: str,
    *,
    key: Sequence[str] = ("seed", "case"),
) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``metric`` for arms ``a`` and ``b`` on the rows they share.

    Parameters
    ----------
    rows
        Per-case rows with an ``arm`` column, the ``key`` columns and ``metric``.
    a, b
        Arm keys.
    metric
        Column to compare; rows whose value is NaN in either arm are dropped.
    key
        Columns that identify a pair.

    Returns
    -------
    (values_a, values_b)
        Float arrays of equal length, in the sorted order of the pair keys.
    """
    by_arm: dict[str, dict[tuple[Any, ...], float]] = {a: {}, b: {}}
    for row in rows:
        arm = row.get("arm")
        if arm in by_arm:
            pair = tuple(str(row[k]) for k in key)
            if pair in by_arm[arm]:
                raise ValueError(
                    f"arm {arm!r} has two rows for {dict(zip(key, pair, strict=True))}"
                )
            by_arm[arm][pair] = float(row[metric])
    common = sorted(set(by_arm[a]) & set(by_arm[b]))
    va = np.array([by_arm[a][p] for p in common], dtype=np.float64)
    vb = np.array([by_arm[b][p] for p in common], dtype=np.float64)
    keep = np.isfinite(va) & np.isfinite(vb)
    return va[keep], vb[keep]


def wilcoxon_p(diffs: Sequence[float] | np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``diffs`` (zeros dropped, as Wilcoxon's
    original test; NaN with fewer than 2 non-zero differences)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if np.count_nonzero(d) < 2:
        return math.nan
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def bootstrap_mean_ci(
    diffs: Sequence[float] | np.ndarray,
    level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``diffs``, reproducible from ``seed``.

    Uses :func:`scipy.stats.bootstrap` (``method="percentile"``) with
    ``numpy.random.default_rng(seed)``. Returns ``(nan, nan)`` with fewer than 2
    values, ``(x, x)`` when every value is ``x``.
    """
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    result = stats.bootstrap(
        (d,),
        np.mean,
        confidence_level=level,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare_arms(
    rows: Sequence[Mapping[str, Any]],
    a: str,
    b: str,
    metrics: Sequence[tuple[str, str, bool]] = COMPARED_METRICS,
    *,
    seed: int = 0,
    n_resamples: int = 9999,
) -> list[PairedComparison]:
    """:class:`PairedComparison` of ``b - a`` for each metric (see the module docstring)."""
    out = []
    for metric, title, higher in metrics:
        va, vb = paired_differences(rows, a, b, metric)
        d = vb - va
        low, high = bootstrap_mean_ci(d, seed=seed, n_resamples=n_resamples)
        sign = 1.0 if higher else -1.0
        out.append(
            PairedComparison(
                metric=metric,
                title=title,
                higher_is_better=higher,
                a=a,
                b=b,
                n=int(d.size),
                mean_a=float(va.mean()) if va.size else math.nan,
                mean_b=float(vb.mean()) if vb.size else math.nan,
                mean_diff=float(d.mean()) if d.size else math.nan,
                ci_low=low,
                ci_high=high,
                p_value=wilcoxon_p(d),
                n_b_better=int(np.sum(sign * d > 0)),
                n_a_better=int(np.sum(sign * d < 0)),
            )
        )
    return out


def _num(x: float, digits: int) -> str:
    return "–" if math.isnan(x) else f"{x:+.{digits}f}"


def comparisons_markdown(
    comparisons: Sequence[PairedComparison],
    labels: Mapping[str, str],
    heading: str,
    alpha: float = 0.05,
) -> str:
    """A markdown section: one table row per metric and one sentence per metric
    naming the direction found (from the numbers)."""
    if not comparisons:
        return ""
    a, b = comparisons[0].a, comparisons[0].b
    la, lb = labels.get(a, a), labels.get(b, b)
    lines = [
        f"### {heading}: {lb} − {la}",
        "",
        f"Paired over test cases × seeds (B = {lb}, A = {la}); Wilcoxon signed-rank "
        "(two-sided) and a percentile-bootstrap 95 % CI of the mean difference "
        "(9999 resamples, seed 0). The same case appears once per seed, so the pairs "
        "are not independent and the p-values are optimistic.",
        "",
        "| metric | pairs | A mean | B mean | B − A (mean) | 95 % CI | Wilcoxon p | "
        "B better / A better | direction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        digits = 1 if c.metric.startswith("hd") else 3
        ci = (
            "–"
            if math.isnan(c.ci_low)
            else f"[{_num(c.ci_low, digits)}, {_num(c.ci_high, digits)}]"
        )
        p = "–" if math.isnan(c.p_value) else f"{c.p_value:.3g}"
        mean_a = "–" if math.isnan(c.mean_a) else f"{c.mean_a:.{digits}f}"
        mean_b = "–" if math.isnan(c.mean_b) else f"{c.mean_b:.{digits}f}"
        lines.append(
            f"| {c.title} | {c.n} | {mean_a} | {mean_b} | {_num(c.mean_diff, digits)} | {ci} | "
            f"{p} | {c.n_b_better} / {c.n_a_better} | {c.verdict(alpha)} |"
        )
    lines.append("")
    for c in comparisons:
        verdict = c.verdict(alpha)
        if verdict == "no pairs":
            lines.append(f"- {c.title}: no pairs with both values.")
            continue
        better = "higher" if c.higher_is_better else "lower"
        if verdict == "no significant difference":
            text = (
                f"- {c.title}: no significant difference between {lb} and {la} "
                f"(mean B − A {_num(c.mean_diff, 3)}, p = "
                f"{'–' if math.isnan(c.p_value) else f'{c.p_value:.3g}'}, {c.n} pairs)."
            )
        else:
            word = "better" if verdict == "better with B" else "worse"
            text = (
                f"- {c.title}: {lb} is {word} than {la} ({better} is better; mean B − A "
                f"{_num(c.mean_diff, 3)}, 95 % CI [{_num(c.ci_low, 3)}, {_num(c.ci_high, 3)}], "
                f"p = {c.p_value:.3g}, {c.n} pairs)."
            )
        lines.append(text)
    return "\n".join(lines) + "\n"
