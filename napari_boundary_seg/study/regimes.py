"""The regimes map: GDL + boundary loss against GDL along the lesion-load axis.

``study --loads L1 L2 ...`` (:attr:`StudyConfig.loads`) writes the generated
``wmh`` preset once per load (each case's lesions ``L`` % of its brain,
:func:`~napari_boundary_seg.core.synthetic_wmh.wmh_load_config`) into
``DATA/load_<L>``, runs the study on each (``OUT/load_<L>``, ``RUNS/load_<L>``;
each run resumable as in every study) and writes the map across the loads to
``OUT``:

- ``regimes.md``: per load and arm, ``B - GDL`` in DSC and HD95 over
  independent pairs (test cases, each arm averaged over its seeds;
  :func:`~napari_boundary_seg.study_stats.compare_cases`): mean, case bootstrap
  CI, case-and-seed hierarchical CI, Wilcoxon p, Cohen's d_z with its CI, a
  note where Wilcoxon and the CI disagree, and the answer in sentences computed
  from those numbers;
- ``regimes.csv``: the same, one row per (load, arm, metric);
- ``regimes_delta.png``: ΔDSC and ΔHD95 (95 % CI) against the load, one line per arm;
- ``basin_curves.png``: per load, the share of each arm's runs whose validation
  DSC is below :data:`~napari_boundary_seg.study.config.BASIN_DSC` (in the
  empty-prediction basin), per epoch.

Every figure states its budget (epochs × steps, slice size, width) and the
training wall time. See ``docs/DESIGN.md``, "The loss study".
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg.core.progress import Progress
from napari_boundary_seg.study.config import ARMS, BASIN_DSC, StudyConfig
from napari_boundary_seg.study_stats import CasePairedComparison, compare_cases

__all__ = [
    "REGIME_METRICS",
    "basin_shares",
    "dsc_means",
    "iter_load_map",
    "load_config",
    "load_folder",
    "plot_basin",
    "plot_load_deltas",
    "regime_rows",
    "regimes_markdown",
    "write_map",
]

REGIME_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("dice", "DSC", True),
    ("hd95_capped", "HD95 (mm)", False),
)
"""The map's metrics: DSC and HD95 (an empty prediction's counted as the image diagonal)."""

_BASELINE = "gdl"


def load_folder(load: float) -> str:
    """The folder name of a load: ``load_3``, ``load_0.3``, ``load_0.03``."""
    return f"load_{float(load):g}"


def load_config(config: StudyConfig, load: float) -> StudyConfig:
    """The single-load study of ``config`` at ``load`` (percent of the brain)."""
    values = config.to_dict()
    values.pop("loads", None)
    name = load_folder(load)
    values.update(
        data=str(Path(config.data) / name),
        out=str(Path(config.out) / name),
        runs_dir=str(config.runs_path / name),
        synth_load=float(load),
    )
    return StudyConfig.from_dict(values)


def iter_load_map(
    config: StudyConfig, *, report_only: bool = False, command: str | None = None
) -> Generator[Progress, None, Any]:
    """The study at every load of ``config.loads``, then the map (``write_map``).

    Returns the :class:`~napari_boundary_seg.study.run.StudyResult` of the map:
    ``per_case`` carries a ``load`` column, ``files`` the map's files and each
    load's table (``table_md_<L>``); ``complete`` when every load's runs finished.
    """
    from napari_boundary_seg.study.run import StudyResult, iter_study

    started = time.time()
    per_case: list[dict[str, Any]] = []
    histories: dict[float, dict[str, list[list[dict[str, float]]]]] = {}
    facts: dict[float, dict[str, Any]] = {}
    files: dict[str, str] = {}
    complete = True
    for load in config.loads or ():
        sub = load_config(config, load)
        result = yield from iter_study(sub, report_only=report_only, command=command)
        complete = complete and result.complete
        files[f"table_md_{load:g}"] = result.files["table_md"]
        per_case += [{"load": load, **r} for r in result.per_case if r.get("set") == "test"]
        histories[load] = _histories(sub)
        facts[load] = _load_facts(sub, result.per_case)
    out = Path(config.out)
    arms = [a for a in config.arms if a != _BASELINE]
    files.update(
        write_map(
            out,
            per_case,
            histories,
            facts,
            arms,
            budget=_budget_text(config),
            complete=complete,
            extra={
                "command": command,
                "config": config.to_dict(),
                "wall_seconds_this_invocation": time.time() - started,
            },
        )
    )
    files["table_md"] = files["regimes_md"]  # the table the command prints
    yield Progress(1, 1, "map written")
    return StudyResult([], per_case, files, complete)


def _histories(sub: StudyConfig) -> dict[str, list[list[dict[str, float]]]]:
    from napari_boundary_seg.core.train import read_metrics_csv
    from napari_boundary_seg.study.config import run_name

    out: dict[str, list[list[dict[str, float]]]] = {}
    for arm in sub.arms:
        for seed in sub.seeds:
            path = sub.runs_path / run_name(arm, seed) / "metrics.csv"
            if path.exists():
                out.setdefault(arm, []).append(read_metrics_csv(path))
    return out


def _load_facts(sub: StudyConfig, per_case: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The generated load (mean share of the brain, from ``dataset.json``), the share
    of the test lesions that are small, and the training seconds of the runs."""
    facts: dict[str, Any] = {"brain_share": math.nan, "small_share": math.nan}
    meta = Path(sub.data) / "dataset.json"
    if meta.exists():
        shares = json.loads(meta.read_text()).get("generator", {}).get("brain_share")
        if shares:
            facts["brain_share"] = float(np.mean(shares))
    facts.update(_lesion_shares(per_case))
    record = Path(sub.out) / "study.json"
    if record.exists():
        seconds = json.loads(record.read_text()).get("train_seconds_this_invocation", {})
        facts["train_seconds_this_invocation"] = float(sum(seconds.values()))
    return facts


def _lesion_shares(per_case: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    rows = [r for r in per_case if r.get("set", "test") == "test"]
    if not rows:
        return {}
    first = (rows[0]["arm"], str(rows[0]["seed"]))
    truth = [r for r in rows if (r["arm"], str(r["seed"])) == first]
    n = sum(float(r["n_target"]) for r in truth)
    small = sum(float(r["n_target_small"]) for r in truth)
    return {"small_share": small / n if n else math.nan, "n_lesions": n}


def _budget_text(config: StudyConfig) -> str:
    t = config.train
    return (
        f"budget: {t.epochs} epochs × ≤ {t.max_steps_per_epoch} steps of {t.batch_size}, "
        f"{t.slice_size}² slices, UNet width {t.base_channels}, seeds {list(config.seeds)}"
    )


# ---------------------------------------------------------------------------
# the map from per-case rows (testable without training)


def regime_rows(
    per_case: Sequence[Mapping[str, Any]], arms: Sequence[str], *, n_resamples: int = 4999
) -> list[tuple[float, CasePairedComparison]]:
    """``(load, comparison)`` of every arm against GDL at every load and metric
    (:data:`REGIME_METRICS`); loads in decreasing order."""
    out = []
    for load in sorted({float(r["load"]) for r in per_case}, reverse=True):
        rows = [r for r in per_case if float(r["load"]) == load]
        ran = {r["arm"] for r in rows}
        for arm in arms:
            if arm in ran and _BASELINE in ran:
                for c in compare_cases(
                    rows, _BASELINE, arm, REGIME_METRICS, n_resamples=n_resamples
                ):
                    out.append((load, c))
    return out


def _label(key: str) -> str:
    return next((a.label for a in ARMS if a.key == key), key)


def _n(x: float, digits: int, sign: bool = True) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def dsc_means(per_case: Sequence[Mapping[str, Any]]) -> dict[tuple[float, str], float]:
    """The mean test DSC of each ``(load, arm)`` over its cases and seeds."""
    sums: dict[tuple[float, str], list[float]] = {}
    for r in per_case:
        value = float(r.get("dice", math.nan))
        if math.isfinite(value):
            sums.setdefault((float(r["load"]), str(r["arm"])), []).append(value)
    return {k: float(np.mean(v)) for k, v in sums.items()}


def regimes_markdown(
    table: Sequence[tuple[float, CasePairedComparison]],
    facts: Mapping[float, Mapping[str, Any]],
    budget: str,
    complete: bool = True,
    dsc: Mapping[tuple[float, str], float] | None = None,
) -> str:
    """The map as markdown: the answer in sentences (from the statistics), the loads,
    then one table per metric. ``dsc`` (:func:`dsc_means`) adds each gain's DSC."""
    lines = ["# When does the boundary loss help? The regimes map", ""]
    if not complete:
        lines += ["**PARTIAL: not every run had finished; rerun the script to continue.**", ""]
    lines += [_answer(table, dsc), "", budget + ".", ""]
    lines += [
        "Pairs are test cases: each arm's metric is averaged over its seeds first, so a case "
        "counts once (never once per seed). CI: percentile bootstrap of the mean over cases "
        "(4999 resamples, seed 0); hierarchical: cases, then seeds within a case, resampled. "
        "Wilcoxon signed-rank is two-sided. d_z: mean / SD of the case differences, with a "
        "bootstrap CI. A difference counts when the case CI excludes 0 and Wilcoxon agrees; "
        "where they disagree the table says *unclear* and the note says why.",
        "",
        "## The loads",
        "",
        "| load (% of brain) | generated share of the brain (mean) | small test lesions (≤ --small-voxels) | "
        "test lesions |",
        "|---|---|---|---|",
    ]
    for load in sorted(facts, reverse=True):
        f = facts[load]
        share = f.get("brain_share", math.nan)
        small = f.get("small_share", math.nan)
        lines.append(
            f"| {load:g} | {'–' if math.isnan(share) else f'{100 * share:.3g} %'} | "
            f"{'–' if math.isnan(small) else f'{100 * small:.0f} %'} | "
            f"{int(f.get('n_lesions', 0))} |"
        )
    for metric, title, _ in REGIME_METRICS:
        digits = 1 if metric.startswith("hd") else 3
        lines += [
            "",
            f"## {title}: arm − GDL",
            "",
            "| load | arm | cases × seeds | mean Δ | 95 % CI (cases) | 95 % CI (hierarchical) "
            "| Wilcoxon p | d_z [CI] | better / worse | direction |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        notes = []
        for load, c in table:
            if c.metric != metric:
                continue
            dz = f"{_n(c.dz, 2)} [{_n(c.dz_low, 2)}, {_n(c.dz_high, 2)}]"
            p = "–" if math.isnan(c.p_value) else f"{c.p_value:.3g}"
            lines.append(
                f"| {load:g} | {_label(c.b)} | {c.n_cases} × {c.n_seeds} | "
                f"{_n(c.mean_diff, digits)} | [{_n(c.ci_low, digits)}, {_n(c.ci_high, digits)}] | "
                f"[{_n(c.hier_low, digits)}, {_n(c.hier_high, digits)}] | {p} | {dz} | "
                f"{c.n_b_better} / {c.n_a_better} | {c.verdict()} |"
            )
            note = c.disagreement()
            if note:
                notes.append(f"- load {load:g}, {_label(c.b)}: {note}.")
        lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"


def _near_empty(load: float, c: CasePairedComparison, dsc: Mapping | None) -> bool:
    """True when both arms' mean test DSC at ``load`` is below :data:`BASIN_DSC`."""
    if not dsc:
        return False
    a, b = dsc.get((load, c.a), math.nan), dsc.get((load, c.b), math.nan)
    return not (math.isnan(a) or math.isnan(b)) and max(a, b) < BASIN_DSC


def _where_dsc(load: float, c: CasePairedComparison, dsc: Mapping | None) -> str:
    """ "; mean DSC there: GDL 0.01, the arm 0.02, both near-empty: ..." for a gain, or ""."""
    if not dsc:
        return ""
    a, b = dsc.get((load, c.a), math.nan), dsc.get((load, c.b), math.nan)
    if math.isnan(a) or math.isnan(b):
        return ""
    text = f"; mean DSC there: GDL {a:.2f}, the arm {b:.2f}"
    if max(a, b) < BASIN_DSC:  # both near-empty (:func:`_near_empty`)
        text += (
            ", both near-empty: neither finds the lesions"
            if c.metric == "dice"
            else ", both near-empty: a stray prediction's distance against an empty one's "
            "(the image diagonal), not better boundaries"
        )
    return text


def _diff(x: float) -> str:
    """A difference with 3 decimals, or 2 significant digits where those show 0."""
    return f"{x:+.1e}" if x and not math.isnan(x) and abs(x) < 5e-4 else _n(x, 3)


def _gains(cells: Sequence[tuple[float, CasePairedComparison]], dsc: Mapping | None) -> str:
    return "; ".join(
        f"{_label(c.b)} at {load:g} % ({_diff(c.mean_diff)}, CI "
        f"[{_diff(c.ci_low)}, {_diff(c.ci_high)}]{_where_dsc(load, c, dsc)})"
        for load, c in cells
    )


def _by_load(cells: Sequence[tuple[float, CasePairedComparison]]) -> str:
    """ "at 3 %: paper α, reference-code α; at 0.6 %: ..." (the arms' short names:
    the words in "GDL+BL (...)", less a leading "paper α, " of the φ variants, so
    that no name holds the list's comma)."""
    loads: dict[float, list[str]] = {}
    for load, c in cells:
        label, prefix, paper = _label(c.b), "GDL+BL (", "paper α, "
        short = label[len(prefix) : -1] if label.startswith(prefix) else label
        short = short[len(paper) :] if short.startswith(paper) else short
        loads.setdefault(load, []).append(short)
    return "; ".join(f"at {load:g} %: {', '.join(arms)}" for load, arms in loads.items())


def _answer(table: Sequence[tuple[float, CasePairedComparison]], dsc: Mapping | None = None) -> str:
    """The answer in a few sentences, each computed from the verdicts (and, for a
    gain, the DSC of both arms where it was measured: ``dsc``)."""
    if not table:
        return "No load has both GDL and a boundary-loss arm finished yet."
    loads = sorted({load for load, _ in table}, reverse=True)
    out = []
    for metric, title, _ in REGIME_METRICS:
        rows = [(load, c) for load, c in table if c.metric == metric]
        better = [(load, c) for load, c in rows if c.verdict() == "better with B"]
        worse = [(load, c) for load, c in rows if c.verdict() == "worse with B"]
        # a gain between two near-empty predictions is not the boundary term helping
        empty = [(load, c) for load, c in better if _near_empty(load, c, dsc)]
        better = [cell for cell in better if cell not in empty]
        if better:
            helped = sorted({load for load, _ in better}, reverse=True)
            out.append(
                f"- {title}: the boundary term beats GDL on independent pairs in "
                f"{len(better)} of {len(rows)} (load, arm) cells: {_gains(better, dsc)}. Loads "
                f"with a gain: {', '.join(f'{v:g} %' for v in helped)} of the {len(loads)} tested."
            )
        else:
            where = f"at any of the {len(loads)} loads" if len(loads) > 1 else "at this load"
            out.append(
                f"- {title}: no arm beats GDL {where} "
                f"({len(rows)} (load, arm) cells; {len(worse)} worse with the boundary term"
                + (f": {_by_load(worse)})." if worse else ").")
            )
        if empty:
            out.append(
                f"  Not counted as gains: {len(empty)} cell(s) where both arms are near-empty "
                f"(mean DSC < {BASIN_DSC:g}): {_gains(empty, dsc)}."
            )
        if better and worse:
            out.append(f"  It is worse than GDL in {len(worse)} cell(s): {_by_load(worse)}.")
    return "\n".join(out)


def basin_shares(
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], epochs: int
) -> dict[str, np.ndarray]:
    """Per arm, the share of its runs whose validation DSC is below :data:`BASIN_DSC`
    at each epoch (NaN where no run reached the epoch)."""
    out = {}
    for arm, runs in histories.items():
        stuck = np.full((len(runs), epochs), np.nan)
        for i, history in enumerate(runs):
            for row in history:
                e = int(row["epoch"]) - 1
                if 0 <= e < epochs and math.isfinite(float(row.get("val_dice", math.nan))):
                    stuck[i, e] = float(row["val_dice"]) < BASIN_DSC
        with np.errstate(all="ignore"):
            counts = np.sum(np.isfinite(stuck), axis=0)
            out[arm] = np.where(
                counts > 0, np.nansum(stuck, axis=0) / np.maximum(counts, 1), np.nan
            )
    return out


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def plot_load_deltas(
    path: Path, table: Sequence[tuple[float, CasePairedComparison]], title: str
) -> Path:
    """ΔDSC and ΔHD95 (arm − GDL, 95 % case-bootstrap CI) against the load, one line
    per arm (log load axis)."""
    fig = _figure(11, 4.4)
    axes = fig.subplots(1, len(REGIME_METRICS))
    arms = list(dict.fromkeys(c.b for _, c in table))
    for ax, (metric, name, higher) in zip(np.atleast_1d(axes), REGIME_METRICS, strict=True):
        for k, arm in enumerate(arms):
            rows = sorted((load, c) for load, c in table if c.b == arm and c.metric == metric)
            if not rows:
                continue
            x = np.array([load for load, _ in rows]) * (1.0 + 0.03 * (k - len(arms) / 2))
            y = np.array([c.mean_diff for _, c in rows])
            low = np.array([c.ci_low for _, c in rows])
            high = np.array([c.ci_high for _, c in rows])
            err = np.vstack([np.nan_to_num(y - low), np.nan_to_num(high - y)])
            ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=_label(arm))
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("lesion load (% of the brain)")
        better = "higher" if higher else "lower"
        ax.set_ylabel(f"Δ{name} vs GDL ({better} is better)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_basin(
    path: Path,
    histories: Mapping[float, Mapping[str, Sequence[Sequence[Mapping[str, float]]]]],
    epochs: int,
    title: str,
) -> Path:
    """Per load, the share of runs in the empty basin (validation DSC < BASIN_DSC) per
    epoch, one line per arm."""
    loads = sorted(histories, reverse=True)
    fig = _figure(3.2 * max(len(loads), 1), 3.6)
    axes = np.atleast_1d(fig.subplots(1, max(len(loads), 1)))
    for ax, load in zip(axes, loads, strict=False):
        for arm, share in basin_shares(histories[load], epochs).items():
            n = len(histories[load][arm])
            ax.plot(np.arange(1, epochs + 1), share, label=f"{_label(arm)} (n={n})")
        ax.set_title(f"load {load:g} %", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"share of runs with val DSC < {BASIN_DSC:g}")
    axes[0].legend(fontsize=6, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_map(
    out: Path,
    per_case: Sequence[Mapping[str, Any]],
    histories: Mapping[float, Mapping[str, Sequence[Sequence[Mapping[str, float]]]]],
    facts: Mapping[float, Mapping[str, Any]],
    arms: Sequence[str],
    *,
    budget: str,
    complete: bool = True,
    extra: Mapping[str, Any] | None = None,
    n_resamples: int = 4999,
) -> dict[str, str]:
    """Write ``regimes.md``, ``regimes.csv``, ``regimes_delta.png``, ``basin_curves.png``
    and ``regimes.json`` to ``out``; returns their paths by role."""
    from napari_boundary_seg.core.io import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    table = regime_rows(per_case, arms, n_resamples=n_resamples)
    # the epochs' own times in every run's metrics.csv (a report-only call trains nothing)
    seconds = sum(
        float(row.get("seconds", 0.0) or 0.0)
        for h in histories.values()
        for runs in h.values()
        for run in runs
        for row in run
    )
    files = {
        "regimes_md": out / "regimes.md",
        "regimes_csv": out / "regimes.csv",
        "regimes_figure": out / "regimes_delta.png",
        "basin_figure": out / "basin_curves.png",
        "regimes_json": out / "regimes.json",
    }
    files["regimes_md"].write_text(
        regimes_markdown(table, facts, budget, complete, dsc=dsc_means(per_case))
    )
    columns = ["load", "arm", "metric", *[k for k in CasePairedComparison.__dataclass_fields__][5:]]
    with atomic_path(files["regimes_csv"]) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for load, c in table:
            values = [getattr(c, k) for k in columns[3:]]
            writer.writerow(
                [
                    f"{load:g}",
                    c.b,
                    c.metric,
                    *(f"{v:.6g}" if isinstance(v, float) else v for v in values),
                ]
            )
    wall = f"training time of these runs {seconds / 3600:.1f} h (sum of their epochs)"
    plot_load_deltas(files["regimes_figure"], table, f"arm − GDL on test cases; {budget}; {wall}")
    epochs = max(
        (
            int(row["epoch"])
            for h in histories.values()
            for runs in h.values()
            for r in runs
            for row in r
        ),
        default=1,
    )
    plot_basin(
        files["basin_figure"], histories, epochs, f"empty-prediction basin; {budget}; {wall}"
    )
    record = {
        "complete": complete,
        "facts": {f"{k:g}": v for k, v in facts.items()},
        **(extra or {}),
    }
    files["regimes_json"].write_text(json.dumps(record, indent=2, default=str) + "\n")
    return {k: str(v) for k, v in files.items()}
