"""The loss study with cross-validation folds by patient (``study --folds``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_boundary_seg.cli import main
from napari_boundary_seg.core.io import write_nifti
from napari_boundary_seg.study import StudyConfig, fold_study_cases

PATIENTS = ["p1", "p2", "p3"]
# an affine that is neither diagonal nor at the origin: predictions must keep it
AFFINE = np.array(
    [[0.0, -1.0, 0.0, 40.0], [1.2, 0.0, 0.0, -12.0], [0.0, 0.0, 2.5, 7.0], [0, 0, 0, 1.0]]
)
TINY = ["--seeds", "0", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4",
        "--size", "16", "--depth", "2", "--base-channels", "2", "--device", "cpu"]  # fmt: skip


def _data(root: Path, names: list[str] = PATIENTS, shape=(20, 22, 10)) -> Path:
    """Tiny cases, one bright cube of lesion each, in the nnU-Net layout."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in names:
        image = np.zeros(shape, np.float32)
        image[2:-2, 2:-2, 1:-1] = 100.0
        image += rng.normal(0, 3, shape).astype(np.float32)
        labels = np.zeros(shape, np.uint8)
        x, y = rng.integers(5, 12, 2)
        labels[x : x + 4, y : y + 4, 3:6] = 1
        image[labels > 0] += 60.0
        write_nifti(root / "imagesTr" / f"{name}_0000.nii.gz", image, affine=AFFINE,
                    as_labels=False)  # fmt: skip
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", labels, affine=AFFINE)
    return root


class _C:
    def __init__(self, case_id: str) -> None:
        self.case_id = case_id


def test_fold_study_cases_validate_on_the_other_patients() -> None:
    cases = [_C(f"p{i}") for i in range(10)]
    splits = fold_study_cases(cases, 5, 0.25, seed=0)
    tested = sorted(c.case_id for _, _, test in splits for c in test)
    assert tested == sorted(c.case_id for c in cases)  # everyone once
    for train, val, test in splits:
        ids = [{c.case_id for c in part} for part in (train, val, test)]
        assert len(ids[2]) == 2 and len(ids[1]) == 2 and len(ids[0]) == 6  # round(0.25 * 8)
        assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert all(not val for _, val, _ in fold_study_cases(cases, "loo", 0.0, seed=0))
    with pytest.raises(ValueError, match="fold 1: 1 training case"):
        fold_study_cases(cases[:2], "loo", 0.1, seed=0)
    with pytest.raises(ValueError, match="3 folds need at least 3 patients"):
        fold_study_cases(cases[:2], 3, 0.0, seed=0)


def test_config_checks_folds(tmp_path) -> None:
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        StudyConfig(data=tmp_path, out=tmp_path, folds=1)
    with pytest.raises(ValueError, match="val_fraction must be in \\(0, 1\\)"):
        StudyConfig(data=tmp_path, out=tmp_path, val_fraction=0)  # without folds: as before
    assert StudyConfig(data=tmp_path, out=tmp_path, folds="loo", val_fraction=0).folds == "loo"
    with pytest.raises(ValueError, match="held-out site and folds"):
        StudyConfig(data=tmp_path, out=tmp_path, folds=2, held_out_site="a")
    assert "folds" not in StudyConfig(data=tmp_path, out=tmp_path).to_dict()


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("1", "--folds must be at least 2, got 1"),
        ("x", "--folds takes an integer >= 2 or loo, got 'x'"),
        ("4", "--folds 4 needs at least 4 patients"),
    ],
)
def test_cli_refuses_bad_folds_and_writes_nothing(tmp_path, capsys, value, said) -> None:
    data = _data(tmp_path / "data")
    out = tmp_path / "study"
    assert main(["study", "--data", str(data), "--out", str(out), "--folds", value, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1
    if value == "4":
        assert "has 3" in err
    assert not out.exists()
    # more folds than the cases --synth would write: refused before writing them
    synth = tmp_path / "synth"
    argv = ["study", "--data", str(synth), "--out", str(out), "--folds", "5", "--synth", "4"]
    assert main([*argv, *TINY]) == 2
    assert "--folds 5 needs at least 5 patients" in capsys.readouterr().err
    assert not synth.exists() and not out.exists()


def test_leave_one_out_study_tests_everyone_once_writes_predictions_and_resumes(
    tmp_path, capsys
) -> None:
    data = _data(tmp_path / "data")
    out = tmp_path / "study"
    argv = ["study", "--data", str(data), "--out", str(out), "--folds", "loo",
            "--val-fraction", "0", "--arms", "gdl", "gdl-bl-paper", *TINY]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "study.json").read_text())
    assert record["complete"] is True and record["config"]["folds"] == "loo"
    assert record["tested_checkpoint"] == "last.pt"
    folds = record["split"]["folds"]
    assert [f["test"] for f in folds] == [["p1"], ["p2"], ["p3"]]
    for f in folds:
        assert f["validation"] == [] and sorted(f["train"] + f["test"]) == PATIENTS
    with open(out / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # every patient tested exactly once per arm x seed, by the fold that held it out
    tested = sorted((r["arm"], r["seed"], r["case"]) for r in rows)
    assert tested == sorted((a, "0", p) for a in ("gdl", "gdl-bl-paper") for p in PATIENTS)
    assert all(r["fold"] == str(PATIENTS.index(r["case"]) + 1) for r in rows)
    with open(out / "per_run.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2  # one pooled row per arm x seed
    with open(out / "per_fold.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 2
    table = (out / "results.md").read_text()
    assert "PARTIAL" not in table and "GDL+BL (paper α) − GDL" in table  # pooled statistics
    assert (out / "test_slice.png").is_file()  # drawn by the fold that tested its case
    src = nib.load(data / "labelsTr" / "p1.nii.gz")
    for k, patient in enumerate(PATIENTS, start=1):
        for arm in ("gdl", "gdl-bl-paper"):
            run = out / "runs" / f"fold_{k}" / f"{arm}-seed0"
            assert (run / "last.pt").is_file()
            pred = nib.load(run / "test" / f"{patient}.nii.gz")
            assert pred.shape == src.shape
            np.testing.assert_allclose(pred.affine, AFFINE, atol=1e-5)
            assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
            assert not (run / "test" / f"{PATIENTS[k % 3]}.nii.gz").exists()  # trained on it

    # a rerun trains nothing and reads every fold's figures back
    last = out / "runs" / "fold_2" / "gdl-seed0" / "last.pt"
    stamp = last.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert last.stat().st_mtime_ns == stamp
    again = json.loads((out / "study.json").read_text())
    assert again["train_seconds_this_invocation"] == {}
    with open(out / "per_case.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == rows


def test_two_fold_study_validates_on_the_other_patients_and_tests_best(tmp_path) -> None:
    from napari_boundary_seg.study import run_study

    config = StudyConfig(
        data=tmp_path / "data",
        out=tmp_path / "results",
        arms=("gdl",),
        seeds=(0,),
        epochs=1,
        max_steps_per_epoch=1,
        batch_size=4,
        slice_size=16,
        depth=2,
        base_channels=2,
        val_fraction=0.5,
        device="cpu",
        synth_cases=4,
        synth_shape=(16, 20, 12),
        synth_spacing=(10.0, 10.0, 10.0),
        folds=2,
    )
    result = run_study(config)
    assert result.complete and result.summary[0]["n_runs"] == 1
    assert sorted(r["case"] for r in result.per_case) == [f"case_{i:03d}" for i in range(4)]
    record = json.loads((tmp_path / "results" / "study.json").read_text())
    assert record["tested_checkpoint"] == "best.pt"
    for fold in record["split"]["folds"]:
        assert len(fold["test"]) == 2 and len(fold["validation"]) == 1
        assert len(fold["train"]) == 1
        run = tmp_path / "results" / "runs" / f"fold_{fold['fold']}" / "gdl-seed0"
        assert (run / "best.pt").is_file()
        for case in fold["test"]:
            assert (run / "test" / f"{case}.nii.gz").is_file()
