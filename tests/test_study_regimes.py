"""The regimes map: the load axis, independent-pair statistics, the report and figures
(on a small fake results set: seconds, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_boundary_seg.core import synthetic
from napari_boundary_seg.study import StudyConfig
from napari_boundary_seg.study.config import ARMS, BASIN_DSC, REGIME_ARMS, arm_schedule
from napari_boundary_seg.study.regimes import (
    basin_shares,
    load_config,
    load_folder,
    regime_rows,
    regimes_markdown,
    write_map,
)
from napari_boundary_seg.study_stats import case_pairs, compare_cases, hierarchical_bootstrap_ci

# ---------------------------------------------------------------------------
# the lesion-load axis of the generator


def test_wmh_load_config_sets_the_share_of_the_brain():
    site = synthetic.SiteConfig("s", (6.0, 6.0, 8.0), noise=0.02, bias=0.05)
    base = synthetic.WMHConfig(sites=(site,))
    anatomy = synthetic.load_wmh_anatomy(site, base, "phantom")
    fine_ml = float(np.prod(base.fine_grid(site)[1])) / 1000.0
    brain_ml = float((anatomy.gm + anatomy.wm).sum()) * fine_ml
    volumes = {}
    for share in (0.03, 0.003):
        config = synthetic.wmh_load_config(share, base)
        assert config.load_share == pytest.approx((share / 1.25, share * 1.25))
        assert config.to_dict()["load_share"] == list(config.load_share)
        case = synthetic.make_wmh_case(0, site, config, anatomy)
        volumes[share] = case.labels.sum() * np.prod(case.spacing) / 1000.0
    # partial volume trims the labelled part; the loads stay an order of magnitude apart
    assert volumes[0.03] > 4 * volumes[0.003] > 0
    assert volumes[0.03] < 0.03 * 1.25 * brain_ml * 1.3
    assert "load_share" not in synthetic.WMHConfig().to_dict()  # the preset's record
    with pytest.raises(ValueError, match="share of the brain"):
        synthetic.wmh_load_config(0.6)


def test_study_config_takes_loads_and_builds_each_load_study(tmp_path):
    config = StudyConfig(
        tmp_path / "data",
        tmp_path / "out",
        synth_cases=8,
        synth_preset="wmh",
        loads=(3, 0.3),
        arms=("gdl", "gdl-bl-warm", "gdl-monai-bl"),
    )
    assert config.loads == (3.0, 0.3) and load_folder(0.3) == "load_0.3"
    sub = load_config(config, 0.3)
    assert sub.loads is None and sub.synth_load == 0.3
    assert sub.data.endswith("data/load_0.3") and sub.out.endswith("out/load_0.3")
    assert str(sub.runs_path).endswith("runs/load_0.3")
    assert StudyConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="wmh"):
        StudyConfig(tmp_path / "d", tmp_path / "o", loads=(1,))
    with pytest.raises(ValueError, match="percentages"):
        StudyConfig(tmp_path / "d", tmp_path / "o", synth_cases=8, synth_preset="wmh", loads=(50,))


def test_regime_arms_set_schedule_and_phi_of_their_runs(tmp_path):
    config = StudyConfig(tmp_path / "d", tmp_path / "o", arms=REGIME_ARMS, epochs=40)
    by_key = {a.key: a for a in ARMS}
    warm = config.run_config(by_key["gdl-bl-warm"], 0, tmp_path / "r")
    assert warm.schedule["kind"] == "warm-start" and warm.schedule["patience"] == 5
    hold = arm_schedule(by_key["gdl-bl-hold"], 40)
    assert hold["kind"] == "basin-hold" and hold["threshold"] == BASIN_DSC
    assert arm_schedule(by_key["gdl-bl-const"], 40) == {"kind": "constant", "alpha": 0.9}
    vox = config.run_config(by_key["gdl-bl-paper-vox"], 0, tmp_path / "r")
    zero = config.run_config(by_key["gdl-bl-paper-zero"], 0, tmp_path / "r")
    assert (vox.phi_units, zero.empty_slice_phi) == ("voxels", "zero")
    assert config.run_config(by_key["gdl-monai-bl"], 0, tmp_path / "r").loss == "gdl+monai-bl"
    with pytest.raises(ValueError, match="3D study"):
        StudyConfig(tmp_path / "d", tmp_path / "o", arms=("gdl", "gdl-bl-paper-clip"), dims=3)


# ---------------------------------------------------------------------------
# statistics over independent pairs


def _rows(shift, n_cases=12, seeds=(0, 1, 2), arm="gdl-bl-warm", load=1.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        base = rng.uniform(0.4, 0.8)
        for s in seeds:
            for key, delta in (("gdl", 0.0), (arm, shift)):
                dice = base + delta + rng.normal(0, 0.02)
                rows.append(
                    {
                        "load": load,
                        "set": "test",
                        "arm": key,
                        "seed": s,
                        "case": f"c{c:02d}",
                        "dice": dice,
                        "hd95_capped": 20.0 - 40.0 * delta + rng.normal(0, 1.0),
                        "n_target": 10,
                        "n_target_small": 6,
                    }
                )
    return rows


def test_a_case_counts_once_whatever_the_seeds():
    rows = _rows(0.05)
    cases, diffs = case_pairs(rows, "gdl", "gdl-bl-warm", "dice")
    assert len(cases) == 12 and diffs.shape == (12, 3)
    c = compare_cases(rows, "gdl", "gdl-bl-warm", (("dice", "DSC", True),), n_resamples=999)[0]
    assert (c.n_cases, c.n_seeds) == (12, 3)
    assert c.mean_diff == pytest.approx(np.nanmean(diffs.mean(axis=1)))
    assert c.ci_low > 0 and c.hier_low > 0 and c.dz > 0 and c.dz_low > 0
    assert c.verdict() == "better with B" and c.disagreement() == ""
    # the hierarchical interval is at least as wide as the case interval here
    assert (c.hier_high - c.hier_low) >= 0.8 * (c.ci_high - c.ci_low)
    # a seed missing for one case: that case's pair is the mean of the seeds it has
    partial = [r for r in rows if not (r["case"] == "c00" and r["seed"] == 2)]
    _, d = case_pairs(partial, "gdl", "gdl-bl-warm", "dice")
    assert np.isnan(d[0, 2]) and np.isfinite(d[1]).all()
    low, high = hierarchical_bootstrap_ci(d, n_resamples=499)
    assert low < high
    with pytest.raises(ValueError, match="two rows"):
        case_pairs(rows + rows[:1], "gdl", "gdl-bl-warm", "dice")


def test_wilcoxon_and_bootstrap_disagreeing_is_said():
    # most cases a little worse, two much better: the mean is positive, the ranks negative
    d = np.array([-0.01] * 10 + [0.5, 0.5])
    rows = []
    for i, x in enumerate(d):
        rows.append({"arm": "gdl", "seed": 0, "case": f"c{i}", "dice": 0.5})
        rows.append({"arm": "b", "seed": 0, "case": f"c{i}", "dice": 0.5 + x})
    c = compare_cases(rows, "gdl", "b", (("dice", "DSC", True),), n_resamples=1999)[0]
    assert c.ci_low > 0 or math.isnan(c.p_value) or c.p_value >= 0.05
    if c.ci_excludes_zero() != (c.p_value < 0.05):
        assert c.verdict() == "unclear" and c.disagreement()


# ---------------------------------------------------------------------------
# the report and figures on a fake results set


def _history(values):
    return [{"epoch": e + 1, "val_dice": v} for e, v in enumerate(values)]


def test_map_report_words_and_figures_follow_the_numbers(tmp_path):
    rows = _rows(0.06, load=3.0) + _rows(0.0, load=0.3, seed=1) + _rows(-0.1, load=0.03, seed=2)
    histories = {
        load: {
            "gdl": [_history([0.0, 0.2, 0.5]), _history([0.05, 0.3, 0.6])],
            "gdl-bl-warm": [_history([0.0, 0.0, 0.0]), _history([0.0, 0.3, 0.5])],
        }
        for load in (3.0, 0.3, 0.03)
    }
    facts = {
        3.0: {"brain_share": 0.03, "small_share": 0.4, "n_lesions": 40},
        0.3: {"brain_share": 0.003, "small_share": 0.7, "n_lesions": 30},
        0.03: {"brain_share": 0.0003, "small_share": 0.9, "n_lesions": 12},
    }
    files = write_map(
        tmp_path, rows, histories, facts, ["gdl-bl-warm"], budget="budget: test", n_resamples=499
    )
    text = (tmp_path / "regimes.md").read_text()
    assert "DSC: the boundary term beats GDL on independent pairs in 1 of 3" in text
    assert "GDL+BL (warm start) at 3 %" in text and "Loads with a gain: 3 %" in text
    assert "worse than GDL in 1 cell(s): at 0.03 %: warm start" in text
    assert "| 0.3 | GDL+BL (warm start) | 12 × 3 |" in text
    lines = (tmp_path / "regimes.csv").read_text().splitlines()
    assert lines[0].startswith("load,arm,metric,n_cases") and len(lines) == 1 + 3 * 2
    for key in ("regimes_figure", "basin_figure"):
        assert (tmp_path / files[key].split("/")[-1]).stat().st_size > 1000
    shares = basin_shares(histories[3.0], 3)
    np.testing.assert_allclose(shares["gdl-bl-warm"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(shares["gdl"], [1.0, 0.0, 0.0])
    # nothing better anywhere: the answer says so
    null = regimes_markdown(regime_rows(_rows(0.0), ["gdl-bl-warm"], n_resamples=199), {}, "b")
    assert "DSC: no arm beats GDL at this load (" in null


def test_a_distance_gain_where_both_arms_predict_nothing_is_named_so():
    """An HD95 gain between two near-empty predictions (DSC < BASIN_DSC) is a
    stray prediction's distance against the image diagonal: the answer says so,
    with both arms' DSC; where the models segment, the DSC is given plainly."""
    from napari_boundary_seg.study.regimes import dsc_means

    for dice, near_empty in ((0.02, True), (0.7, False)):
        rows = [{**r, "dice": dice} for r in _rows(0.3)]
        table = regime_rows(rows, ["gdl-bl-warm"], n_resamples=199)
        text = regimes_markdown(table, {}, "b", dsc=dsc_means(rows)).split("## ")[0]
        assert f"mean DSC there: GDL {dice:.2f}, the arm {dice:.2f}" in text
        assert ("both near-empty" in text) is near_empty
        assert dice < BASIN_DSC if near_empty else dice > BASIN_DSC
        # a gain between near-empty predictions is named, never counted as one
        counted = "HD95 (mm): the boundary term beats GDL on independent pairs in 1 of 1"
        assert (counted in text) is not near_empty
        assert (
            "HD95 (mm): no arm beats GDL at this load (1 (load, arm) cells" in text
        ) is near_empty
        assert (
            "Not counted as gains: 1 cell(s) where both arms are near-empty" in text
        ) is near_empty


def test_a_tiny_gain_is_printed_with_its_digits():
    from napari_boundary_seg.study.regimes import _diff

    assert _diff(0.00031) == "+3.1e-04" and _diff(-0.0123) == "-0.012" and _diff(0.0) == "+0.000"


def test_losing_cells_are_grouped_by_load_with_each_arms_short_name():
    from types import SimpleNamespace

    from napari_boundary_seg.study.regimes import _by_load

    cells = [(3.0, SimpleNamespace(b=k)) for k in ("gdl-bl-paper", "gdl-monai-bl")]
    cells.append((0.6, SimpleNamespace(b="gdl-bl-warm")))
    assert _by_load(cells) == "at 3 %: paper α, GDL+MONAI BL (paper α); at 0.6 %: warm start"
    # the φ variants (all with the paper's α): no comma inside a name of the list
    cells = [(0.6, SimpleNamespace(b=k)) for k in ("gdl-bl-paper", "gdl-bl-paper-vox")]
    assert _by_load(cells) == "at 0.6 %: paper α, φ in voxels"
