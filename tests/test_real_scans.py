"""The command line on small sets of real-scan-like data: folds by patient,
modalities matched by name, and the real MS scans when they are present."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_boundary_seg.cli import main
from napari_boundary_seg.core.folds import fold_splits
from napari_boundary_seg.core.io import write_nifti

TINY = ["--depth", "2", "--base-channels", "4", "--batch-size", "4", "--device", "cpu"]
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "lesjak2017-ms"


def _case(rng, shape=(20, 22, 10)):
    image = np.zeros(shape, np.float32)
    image[2:-2, 2:-2, 1:-1] = 100.0
    image += rng.normal(0, 3, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    x, y = rng.integers(5, 12, 2)
    labels[x : x + 4, y : y + 4, 3:6] = 1
    image[labels > 0] += 60.0
    return image, labels


def _folder(root: Path, names: list[str], channels: dict | None = None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    n = len(channels) if channels else 1
    for name in names:
        image, labels = _case(rng)
        for c in range(n):
            write_nifti(root / "imagesTr" / f"{name}_{c:04d}.nii.gz", image * (1 + c),
                        spacing=(1.0, 1.0, 2.0), as_labels=False)  # fmt: skip
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", labels, spacing=(1.0, 1.0, 2.0))
    if channels:
        (root / "dataset.json").write_text(json.dumps({"channel_names": channels}))
    return root


def test_fold_splits_are_by_patient_and_cover_everyone():
    class C:
        def __init__(self, case_id):
            self.case_id = case_id

    cases = [C(f"p{i}") for i in range(7)]
    for folds in (2, 3, "loo"):
        splits = fold_splits(cases, folds, seed=1)
        tested = [c.case_id for _, test in splits for c in test]
        assert sorted(tested) == sorted(c.case_id for c in cases)
        for train, test in splits:
            assert not {c.case_id for c in train} & {c.case_id for c in test}
    assert len(fold_splits(cases, "loo")) == 7
    with pytest.raises(ValueError, match="8 folds need at least 8 patients"):
        fold_splits(cases, 8)


def test_train_folds_writes_each_folds_predictions_and_resumes(tmp_path, capsys):
    data = _folder(tmp_path / "data", ["p1", "p2", "p3"])
    out = tmp_path / "cv"
    argv = ["train", "--data", str(data), "--out", str(out), "--folds", "loo", "--epochs", "1",
            "--val-fraction", "0", *TINY]  # fmt: skip
    assert main(argv) == 0
    for i, name in enumerate(["p1", "p2", "p3"], start=1):
        pred = out / f"fold_{i}" / "test" / f"{name}.nii.gz"
        assert pred.is_file() and (out / f"fold_{i}" / "last.pt").is_file()
        src = nib.load(data / "imagesTr" / f"{name}_0000.nii.gz")
        assert nib.load(pred).shape == src.shape
        np.testing.assert_allclose(nib.load(pred).affine, src.affine)
    with open(out / "folds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["p1", "p2", "p3"]
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    capsys.readouterr()
    assert main(argv) == 0  # run again: every fold is done and kept
    said = capsys.readouterr().out
    assert said.count("done before, kept") == 3 and "mean DSC" in said


def test_folds_refuse_more_folds_than_patients(tmp_path, capsys):
    data = _folder(tmp_path / "data", ["p1", "p2"])
    out = tmp_path / "cv"
    code = main(["train", "--data", str(data), "--out", str(out), "--folds", "3", "--epochs", "1",
                 *TINY])  # fmt: skip
    assert code == 2
    assert "3 folds need at least 3 patients" in capsys.readouterr().err
    assert not out.exists()


def test_predict_matches_modalities_by_name(tmp_path, capsys):
    data = _folder(tmp_path / "flair", ["a1", "a2"], channels={"0": "FLAIR"})
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1",
                 "--val-fraction", "0", *TINY]) == 0  # fmt: skip
    # scans with T1 first and FLAIR second: the FLAIR-only model takes the FLAIR file
    both = _folder(tmp_path / "both", ["b1"], channels={"0": "T1", "1": "FLAIR"}, seed=3)
    t1 = both / "imagesTr" / "b1_0000.nii.gz"
    flair = both / "imagesTr" / "b1_0001.nii.gz"
    assert main(["predict", str(both / "imagesTr"), "--checkpoint", str(run / "last.pt"),
                 "--out", str(tmp_path / "p1"), "--device", "cpu"]) == 0  # fmt: skip
    assert "FLAIR (file _0001)" in capsys.readouterr().out
    alone_dir = tmp_path / "alone"
    alone_dir.mkdir()
    (alone_dir / "b1_0000.nii.gz").write_bytes(flair.read_bytes())
    assert main(["predict", str(alone_dir), "--checkpoint", str(run / "last.pt"),
                 "--out", str(tmp_path / "p2"), "--device", "cpu"]) == 0  # fmt: skip
    by_name = nib.load(tmp_path / "p1" / "b1.nii.gz").get_fdata()
    alone = nib.load(tmp_path / "p2" / "b1.nii.gz").get_fdata()
    np.testing.assert_array_equal(by_name, alone)
    # names given on the command line; a name the model lacks is refused
    assert main(["predict", str(t1), str(flair), "--modalities", "T1", "FLAIR",
                 "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "p3"),
                 "--device", "cpu"]) == 0  # fmt: skip
    code = main(["predict", str(t1), "--modalities", "T1", "--checkpoint", str(run / "last.pt"),
                 "--out", str(tmp_path / "p4"), "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert "takes the modalities FLAIR" in capsys.readouterr().err


@pytest.mark.skipif(not REAL.is_dir(), reason=f"the real MS scans are not here ({REAL})")
def test_real_ms_scans_are_read_reoriented_and_z_scored():
    from napari_boundary_seg.core.data import (
        PreprocessConfig,
        find_cases,
        load_case,
        preprocess_case,
    )

    files = find_cases(REAL)
    assert [f.case_id for f in files] == ["patient07", "patient19", "patient26"]
    case = load_case(files[0])
    assert case.images.shape[0] == 2  # FLAIR + T1
    prep = preprocess_case(case, PreprocessConfig(slice_size=None, axis="auto", canonical=True,
                                                  normalize="zscore"))  # fmt: skip
    # LAS at 1 mm: axial slices of 182 x 218 (x, y), 182 of them
    assert prep.images.shape == (182, 2, 182, 218)
    head = prep.images[:, 0][prep.images[:, 0] > prep.images[:, 0].min()]
    assert abs(float(np.median(head))) < 1.0
    assert os.fspath(REAL)  # the data stay outside the repository


def test_a_checkpoint_whose_channels_do_not_fit_is_refused_before_any_work(tmp_path, capsys):
    one = _folder(tmp_path / "one", ["a1", "a2"])
    run = tmp_path / "run"
    assert main(["train", "--data", str(one), "--out", str(run), "--epochs", "1",
                 "--val-fraction", "0", *TINY]) == 0  # fmt: skip
    two = _folder(tmp_path / "two", ["b1", "b2"], channels={"0": "FLAIR", "1": "T1"})
    out, cache = tmp_path / "ft", tmp_path / "cache"
    code = main(["train", "--data", str(two), "--out", str(out), "--cache-dir", str(cache),
                 "--init-checkpoint", str(run / "last.pt"), "--epochs", "1", *TINY])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "has 2 modalities" in err and "last.pt takes 1" in err, err
    assert not cache.exists() or not any(cache.iterdir())
    assert not out.exists() or not any(out.iterdir())


def test_real_data_benchmark_trains_planes_and_scores_their_ensemble(tmp_path):
    """benchmarks/real_data.py on a tiny folder: leave one patient out with an
    axial and a coronal arm, the two as one (multi-planar) ensemble, and each
    fold's snapshot ensemble."""
    import subprocess
    import sys

    from napari_boundary_seg.core.checkpoint import read_checkpoint

    data = _folder(tmp_path / "data", ["p1", "p2", "p3"])
    out = tmp_path / "rd"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data.py"
    argv = [sys.executable, str(script), str(data), "--out", str(out), "--arms", "gdl,gdl_coronal",
            "--epochs", "2", "--steps", "1", "--width", "4", "--set", "depth=2",
            "--set", "batch_size=4", "--ensemble-arms", "gdl,gdl_coronal",
            "--snapshots", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "folds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    arms = [r["arm"] for r in rows]
    assert (
        arms
        == ["gdl"] * 3
        + ["gdl_coronal"] * 3
        + ["gdl snapshots"] * 3
        + ["gdl_coronal snapshots"] * 3
        + ["gdl+gdl_coronal ensemble"] * 3
    )
    # the snapshot ensemble: epoch 1's model kept beside the final one, and scored
    fold = out / "gdl_seed0" / "test_p1"
    assert sorted(p.name for p in fold.glob("snapshot_*.pt")) == ["snapshot_epoch1.pt"]
    assert read_checkpoint(fold / "snapshot_epoch1.pt")["position"]["epoch"] == 1
    assert json.loads((fold / "snapshots.json").read_text())["arm"] == "gdl snapshots"
    assert "gdl+gdl_coronal ensemble" in (out / "summary.md").read_text()
    axial = read_checkpoint(out / "gdl_seed0" / "test_p1" / "last.pt")
    coronal = read_checkpoint(out / "gdl_coronal_seed0" / "test_p1" / "last.pt")
    assert axial["config"]["axis"] == "auto" and coronal["config"]["axis"] == "coronal"
    pred = out / "gdl+gdl_coronal_ensemble" / "test_p1" / "p1_pred.nii.gz"
    assert nib.load(pred).shape == nib.load(data / "labelsTr" / "p1.nii.gz").shape
    # an unknown arm is refused before any work
    bad = subprocess.run([*argv[:5], "--arms", "gdl_axial"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown arm(s) ['gdl_axial']" in bad.stdout


def test_real_data_benchmark_pretrains_on_synthetic_cases_once(tmp_path):
    """``real_data.py --pretrain N``: N synthetic WMH-like cases written and a
    UNet trained on them once (OUT/pretrain), every fold started from its
    weights; a second run reuses it."""
    import subprocess
    import sys

    from napari_boundary_seg.core.checkpoint import read_checkpoint

    data = _folder(tmp_path / "data", ["p1", "p2"], channels={"0": "FLAIR", "1": "T1"})
    out = tmp_path / "rd"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data.py"
    argv = [sys.executable, str(script), str(data), "--out", str(out), "--arms", "gdl",
            "--epochs", "1", "--steps", "1", "--width", "4", "--set", "depth=2",
            "--set", "batch_size=4", "--only", "p1", "--pretrain", "2",
            "--pretrain-epochs", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pretraining on 2 synthetic WMH-like cases" in done.stdout
    pretrained = out / "pretrain" / "run" / "last.pt"
    assert len(list((out / "pretrain" / "cases" / "imagesTr").glob("*_0001.nii.gz"))) == 2
    source = read_checkpoint(pretrained)
    assert source["model"]["base_channels"] == 4 and source["model"]["depth"] == 2
    fold = read_checkpoint(out / "gdl_seed0" / "test_p1" / "last.pt")
    assert fold["config"]["init_checkpoint"] == str(pretrained)
    stamp = pretrained.stat().st_mtime_ns
    # another fold in a later run starts from the same pretrained weights
    argv[argv.index("--only") + 1] = "p2"
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretraining on" not in again.stdout
    assert pretrained.stat().st_mtime_ns == stamp
    other = read_checkpoint(out / "gdl_seed0" / "test_p2" / "last.pt")
    assert other["config"]["init_checkpoint"] == str(pretrained)
