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
the p-values of :func:`compare_arms` are optimistic; the module says so in the
text it writes. :func:`compare_cases` pairs test cases only (each arm's metric
averaged over its seeds), with a case-and-seed hierarchical bootstrap beside
the case bootstrap, Cohen's d_z with a CI, and a note where Wilcoxon and the
bootstrap CI disagree; the study's reports use it
(:func:`case_comparisons_markdown`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "COMPARED_METRICS",
    "CasePairedComparison",
    "PairedComparison",
    "bootstrap_mean_ci",
    "case_comparisons_markdown",
    "case_pairs",
    "compare_arms",
    "compare_cases",
    "comparisons_markdown",
    "effect_size_dz",
    "hierarchical_bootstrap_ci",
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


def _p(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.3g}"


def _direction_sentence(
    c: PairedComparison | CasePairedComparison, verdict: str, la: str, lb: str, count: str
) -> str:
    """ "- DSC: B is better than A (...)." for a better / worse verdict, else
    "- DSC: no significant difference between B and A (...)."; ``count`` says
    how many pairs ("12 pairs", "8 cases")."""
    if verdict in ("better with B", "worse with B"):
        word = "better" if verdict == "better with B" else "worse"
        better = "higher" if c.higher_is_better else "lower"
        return (
            f"- {c.title}: {lb} is {word} than {la} ({better} is better; mean B − A "
            f"{_num(c.mean_diff, 3)}, 95 % CI [{_num(c.ci_low, 3)}, {_num(c.ci_high, 3)}], "
            f"p = {_p(c.p_value)}, {count})."
        )
    return (
        f"- {c.title}: no significant difference between {lb} and {la} "
        f"(mean B − A {_num(c.mean_diff, 3)}, p = {_p(c.p_value)}, {count})."
    )


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
        mean_a = "–" if math.isnan(c.mean_a) else f"{c.mean_a:.{digits}f}"
        mean_b = "–" if math.isnan(c.mean_b) else f"{c.mean_b:.{digits}f}"
        lines.append(
            f"| {c.title} | {c.n} | {mean_a} | {mean_b} | {_num(c.mean_diff, digits)} | {ci} | "
            f"{_p(c.p_value)} | {c.n_b_better} / {c.n_a_better} | {c.verdict(alpha)} |"
        )
    lines.append("")
    for c in comparisons:
        verdict = c.verdict(alpha)
        if verdict == "no pairs":
            lines.append(f"- {c.title}: no pairs with both values.")
        else:
            lines.append(_direction_sentence(c, verdict, la, lb, f"{c.n} pairs"))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# independent pairs: test cases, each arm averaged over its seeds


def case_pairs(
    rows: Sequence[Mapping[str, Any]], a: str, b: str, metric: str
) -> tuple[list[str], np.ndarray]:
    """Per test case, the ``b - a`` differences of ``metric`` of each seed both arms
    ran on it: ``(cases, diffs)`` with ``diffs`` of shape ``(n_cases, n_seeds)``
    (NaN where a seed is missing or a value is not finite).

    The mean over a row is the case's pair: the case's metric averaged over the
    seeds in each arm. A case is one independent pair, never one per seed.
    """
    values: dict[str, dict[tuple[str, str], float]] = {a: {}, b: {}}
    for row in rows:
        arm = row.get("arm")
        if arm in values:
            key = (str(row["case"]), str(row["seed"]))
            if key in values[arm]:
                raise ValueError(f"arm {arm!r} has two rows for case {key[0]}, seed {key[1]}")
            values[arm][key] = float(row[metric])
    common = set(values[a]) & set(values[b])
    cases = sorted({c for c, _ in common})
    seeds = sorted({s for _, s in common}, key=lambda s: (len(s), s))
    diffs = np.full((len(cases), len(seeds)), np.nan)
    for i, case in enumerate(cases):
        for j, seed in enumerate(seeds):
            if (case, seed) in common:
                d = values[b][(case, seed)] - values[a][(case, seed)]
                diffs[i, j] = d if math.isfinite(d) else np.nan
    keep = np.isfinite(diffs).any(axis=1)
    return [c for c, k in zip(cases, keep, strict=True) if k], diffs[keep]


def _row_means(diffs: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.array([np.nanmean(r) for r in diffs]) if diffs.size else np.zeros(0)


def hierarchical_bootstrap_ci(
    diffs: np.ndarray, level: float = 0.95, n_resamples: int = 4999, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of the mean difference from a two-level bootstrap: test cases
    drawn with replacement, then each drawn case's seeds with replacement
    (``diffs``: ``(n_cases, n_seeds)`` as :func:`case_pairs` returns, NaN skipped)."""
    rows = [r[np.isfinite(r)] for r in np.asarray(diffs, dtype=np.float64)]
    rows = [r for r in rows if r.size]
    if len(rows) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    n, m = len(rows), max(r.size for r in rows)
    values = np.zeros((n, m))
    counts = np.array([r.size for r in rows])
    for i, r in enumerate(rows):
        values[i, : r.size] = r
    picked = rng.integers(0, n, size=(n_resamples, n))  # cases
    c = counts[picked][..., None]  # (R, n, 1)
    seeds = np.floor(rng.random((n_resamples, n, m)) * c).astype(np.int64)  # within each case
    drawn = values[picked[..., None], seeds] * (np.arange(m) < c)
    means = (drawn.sum(axis=2) / c[..., 0]).mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def effect_size_dz(d: np.ndarray) -> float:
    """Cohen's d_z of paired differences: mean / standard deviation (NaN when the
    deviation is 0 or there are fewer than 2)."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    return float(d.mean() / sd) if sd > 0 else math.nan


@dataclass(frozen=True)
class CasePairedComparison:
    """``b - a`` of one metric over independent pairs: test cases, each arm's metric
    averaged over seeds (:func:`case_pairs`).

    Attributes
    ----------
    metric, title, higher_is_better, a, b
        As in :class:`PairedComparison`.
    n_cases, n_seeds
        Pairs (cases) and the most seeds a case has.
    mean_diff
        Mean over cases of the seed-averaged differences.
    ci_low, ci_high
        Percentile-bootstrap 95 % CI of ``mean_diff`` over cases.
    hier_low, hier_high
        The case-and-seed (hierarchical) bootstrap's 95 % CI.
    p_value
        Two-sided Wilcoxon signed-rank p of the seed-averaged differences.
    dz, dz_low, dz_high
        Cohen's d_z of the seed-averaged differences with its bootstrap 95 % CI.
    n_b_better, n_a_better
        Cases where ``b`` (``a``) is better on average over seeds.
    """

    metric: str
    title: str
    higher_is_better: bool
    a: str
    b: str
    n_cases: int
    n_seeds: int
    mean_diff: float
    ci_low: float
    ci_high: float
    hier_low: float
    hier_high: float
    p_value: float
    dz: float
    dz_low: float
    dz_high: float
    n_b_better: int
    n_a_better: int

    def ci_excludes_zero(self) -> bool:
        """True when the case bootstrap CI lies on one side of 0."""
        return not math.isnan(self.ci_low) and (self.ci_low > 0 or self.ci_high < 0)

    def disagreement(self, alpha: float = 0.05) -> str:
        """A sentence when Wilcoxon and the bootstrap CI disagree, else ``""``."""
        if self.n_cases < 2 or math.isnan(self.ci_low):
            return ""
        significant = not math.isnan(self.p_value) and self.p_value < alpha
        if significant == self.ci_excludes_zero():
            return ""
        if not significant and self.n_cases < 6:
            return (
                f"the bootstrap CI excludes 0 but {self.n_cases} cases are too few for "
                "Wilcoxon to reach p < 0.05 (it needs at least 6)"
            )
        if significant:
            return (
                f"Wilcoxon p = {self.p_value:.3g} but the bootstrap CI of the mean includes 0: "
                "the cases shift one way while a few large ones pull the mean back"
            )
        return (
            f"the bootstrap CI excludes 0 but Wilcoxon p = "
            f"{'–' if math.isnan(self.p_value) else f'{self.p_value:.3g}'}: the mean is "
            "carried by a few large differences, most cases differ little"
        )

    def verdict(self, alpha: float = 0.05) -> str:
        """``better with B``, ``worse with B`` (both tests agree on it),
        ``no significant difference`` or ``unclear`` (they disagree)."""
        if self.n_cases < 2:
            return "too few cases"
        if self.disagreement(alpha):
            return "unclear"
        if not self.ci_excludes_zero():
            return "no significant difference"
        improves = (self.mean_diff > 0) == self.higher_is_better
        return "better with B" if improves else "worse with B"


def compare_cases(
    rows: Sequence[Mapping[str, Any]],
    a: str,
    b: str,
    metrics: Sequence[tuple[str, str, bool]] = COMPARED_METRICS,
    *,
    seed: int = 0,
    n_resamples: int = 4999,
) -> list[CasePairedComparison]:
    """:class:`CasePairedComparison` of ``b - a`` for each metric."""
    out = []
    for metric, title, higher in metrics:
        _, diffs = case_pairs(rows, a, b, metric)
        d = _row_means(diffs)
        low, high = bootstrap_mean_ci(d, seed=seed, n_resamples=n_resamples)
        hlow, hhigh = hierarchical_bootstrap_ci(diffs, seed=seed, n_resamples=n_resamples)
        dz = effect_size_dz(d)
        dz_low = dz_high = math.nan
        if d.size >= 3 and math.isfinite(dz):  # percentile bootstrap over cases
            drawn = d[np.random.default_rng(seed).integers(0, d.size, (n_resamples, d.size))]
            sd = drawn.std(axis=1, ddof=1)
            with np.errstate(all="ignore"):
                values = np.where(sd > 0, drawn.mean(axis=1) / sd, np.nan)
            values = values[np.isfinite(values)]
            if values.size:
                dz_low, dz_high = (float(v) for v in np.percentile(values, [2.5, 97.5]))
        sign = 1.0 if higher else -1.0
        out.append(
            CasePairedComparison(
                metric=metric,
                title=title,
                higher_is_better=higher,
                a=a,
                b=b,
                n_cases=int(d.size),
                n_seeds=int(np.isfinite(diffs).sum(axis=1).max()) if d.size else 0,
                mean_diff=float(d.mean()) if d.size else math.nan,
                ci_low=low,
                ci_high=high,
                hier_low=hlow,
                hier_high=hhigh,
                p_value=wilcoxon_p(d),
                dz=dz,
                dz_low=dz_low,
                dz_high=dz_high,
                n_b_better=int(np.sum(sign * d > 0)),
                n_a_better=int(np.sum(sign * d < 0)),
            )
        )
    return out


def case_comparisons_markdown(
    comparisons: Sequence[CasePairedComparison],
    labels: Mapping[str, str],
    heading: str,
    alpha: float = 0.05,
) -> str:
    """A markdown section on independent pairs (:func:`compare_cases`): one table
    row per metric, then one sentence per metric naming the direction found (from
    the numbers) and, where Wilcoxon and the bootstrap CI disagree, why."""
    if not comparisons:
        return ""
    a, b = comparisons[0].a, comparisons[0].b
    la, lb = labels.get(a, a), labels.get(b, b)
    lines = [
        f"### {heading}: {lb} − {la}",
        "",
        f"Independent pairs (B = {lb}, A = {la}): test cases, each arm's metric averaged "
        "over its seeds first, so a case counts once. Wilcoxon signed-rank (two-sided), a "
        "percentile-bootstrap 95 % CI of the mean difference over cases and a case-and-seed "
        "(hierarchical) one (4999 resamples, seed 0), Cohen's d_z with its CI.",
        "",
        "| metric | cases × seeds | B − A (mean) | 95 % CI (cases) | 95 % CI (hierarchical) "
        "| Wilcoxon p | d_z [CI] | B better / A better | direction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        digits = 1 if c.metric.startswith("hd") else 3
        lines.append(
            f"| {c.title} | {c.n_cases} × {c.n_seeds} | {_num(c.mean_diff, digits)} | "
            f"[{_num(c.ci_low, digits)}, {_num(c.ci_high, digits)}] | "
            f"[{_num(c.hier_low, digits)}, {_num(c.hier_high, digits)}] | {_p(c.p_value)} | "
            f"{_num(c.dz, 2)} [{_num(c.dz_low, 2)}, {_num(c.dz_high, 2)}] | "
            f"{c.n_b_better} / {c.n_a_better} | {c.verdict(alpha)} |"
        )
    lines.append("")
    for c in comparisons:
        verdict = c.verdict(alpha)
        if verdict == "too few cases":
            lines.append(f"- {c.title}: {c.n_cases} case(s) with both values, too few to compare.")
        elif verdict == "unclear":
            lines.append(f"- {c.title}: unclear between {lb} and {la}: {c.disagreement(alpha)}.")
        else:
            lines.append(_direction_sentence(c, verdict, la, lb, f"{c.n_cases} cases"))
    return "\n".join(lines) + "\n"
