"""Tests of the loss study: schedules, split, figures, and a smoke run of every arm."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from napari_boundary_seg.core.schedule import schedule_from_dict
from napari_boundary_seg.study import (
    ARMS,
    MAIN_ARMS,
    TABLE_METRICS,
    StudyConfig,
    _run_figures,
    arm_schedule,
    run_study,
    split_study_cases,
)


@pytest.mark.parametrize("epochs", [2, 15, 100])
def test_paper_schedule_reaches_floor_at_last_epoch(epochs: int) -> None:
    arm = next(a for a in ARMS if a.key == "gdl-bl-paper")
    schedule = schedule_from_dict(arm_schedule(arm, epochs, floor=0.01))
    alphas = [w[0] for w in schedule.curve(epochs)]
    assert alphas[0] == pytest.approx(1.0)
    assert alphas[-1] == pytest.approx(0.01)
    if epochs > 2:
        assert alphas[-2] > 0.01 + 1e-9  # not before the last epoch
    if epochs == 100:  # the paper's own numbers: 0.01 per epoch
        assert schedule.to_dict()["step"] == pytest.approx(0.01)


def test_reference_code_schedule_uses_the_same_step() -> None:
    arm = next(a for a in ARMS if a.key == "gdl-bl-refcode")
    schedule = schedule_from_dict(arm_schedule(arm, 12, floor=0.01))
    step = 0.99 / 11
    assert schedule(0) == pytest.approx((1.0, 0.01))
    assert schedule(5) == pytest.approx((1.0 - 5 * step, 0.01 + 5 * step))
    assert schedule(11)[0] == pytest.approx(0.1)  # the reference code's region floor
    assert schedule(11)[1] == pytest.approx(1.0)


class _C:
    def __init__(self, case_id: str) -> None:
        self.case_id = case_id


def test_split_is_patient_wise_disjoint_and_order_independent() -> None:
    cases = [_C(f"case_{i:03d}") for i in range(20)]
    train, val, test = split_study_cases(cases, 0.25, 0.1, seed=0)
    assert (len(train), len(val), len(test)) == (13, 2, 5)
    ids = [c.case_id for c in train + val + test]
    assert sorted(ids) == sorted(c.case_id for c in cases)
    again = split_study_cases(list(reversed(cases)), 0.25, 0.1, seed=0)
    assert sorted(c.case_id for c in again[2]) == sorted(c.case_id for c in test)
    assert sorted(c.case_id for c in again[1]) == sorted(c.case_id for c in val)
    with pytest.raises(ValueError, match="at least 3 cases"):
        split_study_cases(cases[:2], 0.25, 0.1, seed=0)


def test_run_figures_by_hand() -> None:
    class Case:
        def __init__(self, case_id: str) -> None:
            self.case_id = case_id
            self.labels = np.zeros((3, 4), dtype=np.int64)
            self.spacing = (1.0, 1.0)

    rows = [
        {"case": "a", "dice": 0.5, "hd": 2.0, "hd95": 1.0, "assd": 0.5, "avd": 10.0,
         "lesion_recall": 1.0, "lesion_f1": 0.5, "n_target_small": 3, "n_detected_small": 1},
        {"case": "b", "dice": 0.0, "hd": math.inf, "hd95": math.inf, "assd": math.inf,
         "avd": 100.0, "lesion_recall": 0.0, "lesion_f1": 0.0, "n_target_small": 1,
         "n_detected_small": 1},
    ]  # fmt: skip
    figures = _run_figures(rows, [Case("a"), Case("b")])
    assert figures["dice"] == pytest.approx(0.25)
    assert figures["hd"] == pytest.approx((2.0 + 5.0) / 2)  # inf -> diagonal sqrt(3²+4²)
    assert figures["assd"] == pytest.approx((0.5 + 5.0) / 2)
    assert figures["lesion_recall_small"] == pytest.approx(2 / 4)  # pooled over cases
    assert figures["n_inf_hd"] == 1


def test_config_rejects_bad_values(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown study arms"):
        StudyConfig(data=tmp_path, out=tmp_path, arms=("gdl", "dice-bl"))
    with pytest.raises(ValueError, match="seeds"):
        StudyConfig(data=tmp_path, out=tmp_path, seeds=())
    with pytest.raises(ValueError, match="test_fraction \\+ val_fraction"):
        StudyConfig(data=tmp_path, out=tmp_path, test_fraction=0.6, val_fraction=0.4)
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        StudyConfig(data=tmp_path, out=tmp_path, dims=4)
    with pytest.raises(ValueError, match="patch_size"):
        StudyConfig(data=tmp_path, out=tmp_path, patch_size=(16, 16, 8))  # 2D study
    with pytest.raises(ValueError, match="per 2D slice"):
        StudyConfig(data=tmp_path, out=tmp_path, dims=3, arms=("gdl", "gdl-bl-paper-2d"))


def _toy_config(tmp_path, **changes) -> StudyConfig:
    """A study of 4 tiny synthetic cases, one seed, one epoch of one step."""
    settings = {
        "data": tmp_path / "data",
        "out": tmp_path / "results",
        "seeds": (0,),
        "epochs": 1,
        "max_steps_per_epoch": 1,
        "batch_size": 4,
        "depth": 2,
        "base_channels": 2,
        "test_fraction": 0.25,
        "val_fraction": 0.25,
        "device": "cpu",
        "synth_cases": 4,
        "synth_shape": (16, 20, 12),
        "synth_spacing": (10.0, 10.0, 10.0),
    }
    return StudyConfig(**{**settings, **changes})


def test_smoke_study_3d_patches(tmp_path) -> None:
    """--dims 3: the runs train 3D patches from one shared cache and are
    evaluated by sliding window (the GPU row of the wmh study, at toy size)."""
    from napari_boundary_seg.core.checkpoint import read_checkpoint

    config = _toy_config(
        tmp_path,
        arms=("gdl", "gdl-bl-paper"),
        max_steps_per_epoch=2,
        batch_size=2,
        dims=3,
        patch_size=(16, 16, 8),
    )
    result = run_study(config)
    assert result.complete and [row["n_runs"] for row in result.summary] == [1, 1]
    for arm in ("gdl", "gdl-bl-paper"):
        saved = read_checkpoint(tmp_path / "results" / "runs" / f"{arm}-seed0" / "best.pt")
        assert saved["model"]["spatial_dims"] == 3
        assert tuple(saved["config"]["patch_size"]) == (16, 16, 8)
    assert (tmp_path / "results" / "runs" / "cache").is_dir()  # shared by the runs
    for row in result.per_case:
        assert 0.0 <= row["dice"] <= 1.0
    record = json.loads((tmp_path / "results" / "study.json").read_text())
    assert record["config"]["dims"] == 3


def test_missing_data_without_synth_names_the_folder(tmp_path) -> None:
    config = StudyConfig(data=tmp_path / "nowhere", out=tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_study(config)


def test_smoke_study_every_arm_then_rerun_skips(tmp_path) -> None:
    config = _toy_config(tmp_path, slice_size=16, eval_batch_size=16)
    result = run_study(config)
    assert result.complete
    assert [row["arm"] for row in result.summary] == list(MAIN_ARMS)
    assert all(row["n_runs"] == 1 for row in result.summary)
    # one test case (round(0.25 * 4)), every arm
    assert len(result.per_case) == len(MAIN_ARMS)
    for row in result.per_case:
        assert 0.0 <= row["dice"] <= 1.0
        assert row["hd"] >= row["hd95"] >= 0.0
    table = (tmp_path / "results" / "results.md").read_text()
    assert "PARTIAL" not in table
    for title in [t for _, t in TABLE_METRICS] + [a.label for a in ARMS if a.key in MAIN_ARMS]:
        assert title in table
    with open(tmp_path / "results" / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(MAIN_ARMS)
    assert {"lesion_recall_small", "n_target_small", "avd", "assd"} <= set(rows[0])
    record = json.loads((tmp_path / "results" / "study.json").read_text())
    assert record["complete"] is True
    assert set(record["split"]) == {"train", "validation", "test", "held_out_site"}
    assert record["split"]["held_out_site"] == [] and record["held_out_site"] is None
    assert not set(record["split"]["test"]) & set(record["split"]["validation"])
    assert "torch" in record["versions"]
    png = (tmp_path / "results" / "validation_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # rerun: every run is finished, nothing is trained again, same figures
    best = tmp_path / "results" / "runs" / "gdl-seed0" / "best.pt"
    mtime = best.stat().st_mtime_ns
    again = run_study(config)
    assert best.stat().st_mtime_ns == mtime
    assert len(again.per_case) == len(result.per_case)
    for new, old in zip(again.per_case, result.per_case, strict=True):  # read back from CSV
        assert new.keys() == old.keys()
        for key, value in old.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(new[key]), key
            else:
                assert new[key] == value, key
    record = json.loads((tmp_path / "results" / "study.json").read_text())
    assert record["train_seconds_this_invocation"] == {}


def test_cli_writes_benchmark_and_reports_partial(tmp_path, capsys) -> None:
    from napari_boundary_seg.cli import main

    data, out = tmp_path / "data", tmp_path / "r"
    argv = ["study", "--data", str(data), "--out", str(out), "--arms", "gdl", "bl"]
    assert main(argv) == 2  # no data and no --synth: a one-line error naming the folder
    assert str(data) in capsys.readouterr().err
    tiny = ["--synth", "4", "--synth-shape", "16", "20", "12", "--synth-spacing", "10", "10", "10"]
    assert main([*argv, *tiny, "--report-only"]) == 0
    printed = capsys.readouterr().out
    assert "PARTIAL" in printed
    assert (data / "labelsTr" / "case_003.nii.gz").exists()
    assert "PARTIAL" in (out / "results.md").read_text()
    record = json.loads((out / "study.json").read_text())
    assert record["complete"] is False
    assert record["runs_missing"] == ["gdl-seed0", "bl-seed0", "gdl-seed1", "bl-seed1"]
    assert record["config"]["synth_shape"] == [16, 20, 12]


def test_wmh_smoke_study_held_out_site_stats_and_figures(tmp_path) -> None:
    """A tiny wmh-preset study: held-out site, the 2D-φ ablation, paired statistics,
    calibration figures and both PNG figures (seconds: tiny grid, tiny net)."""
    from napari_boundary_seg.core.synthetic import SiteConfig, WMHConfig, write_benchmark

    wmh = WMHConfig(
        sites=(SiteConfig("a", (12.0, 12.0, 12.0)), SiteConfig("b", (12.0, 12.0, 16.0))),
        load_ml=(20.0, 80.0),
        punctate=(2, 4),
    )
    write_benchmark(tmp_path / "data", n_cases=8, seed=1, anatomy="phantom", preset="wmh", wmh=wmh)
    config = StudyConfig(
        data=tmp_path / "data",
        out=tmp_path / "results",
        arms=("gdl", "gdl-bl-paper", "bl", "gdl-bl-paper-2d"),
        seeds=(0, 1),
        epochs=1,
        max_steps_per_epoch=1,
        batch_size=4,
        slice_size=16,
        depth=2,
        base_channels=2,
        test_fraction=0.3,
        val_fraction=0.25,
        device="cpu",
        held_out_site="b",
        small_voxels=10,
    )
    result = run_study(config)
    assert result.complete
    record = json.loads((tmp_path / "results" / "study.json").read_text())
    held = record["split"]["held_out_site"]
    assert held == ["case_001", "case_003", "case_005", "case_007"]  # every site-b case
    others = record["split"]["train"] + record["split"]["validation"] + record["split"]["test"]
    assert not set(held) & set(others) and len(others) == 4
    assert record["distance"]["gdl-bl-paper-2d"] == "2d"
    assert (tmp_path / "results" / "runs" / "gdl-bl-paper-2d-seed1" / "best.pt").exists()
    assert [r["arm"] for r in result.summary_held] == list(config.arms)
    sets = {r["set"] for r in result.per_case}
    assert sets == {"test", "held-out site"}
    assert set(result.calibration) >= {"dice", "lesion_recall_small", "dice_meets_bar"}
    table = (tmp_path / "results" / "results.md").read_text()
    assert "Held-out site `b`" in table and "Calibration (GDL" in table
    assert "GDL+BL (paper α) − GDL" in table
    assert "GDL+BL (paper α, 2D φ) − GDL+BL (paper α)" in table
    assert "Wilcoxon" in table and "95 % CI" in table
    with open(tmp_path / "results" / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 2 * (1 + 4)  # arms x seeds x (test + held-out cases)
    for name in ("validation_curves.png", "test_slice.png"):
        png = (tmp_path / "results" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
    assert result.files["test_slice_figure"].endswith("test_slice.png")
