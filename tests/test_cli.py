"""The command line end to end on tiny data, its errors, and its help texts."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest

from napari_boundary_seg.cli import build_parser, main
from napari_boundary_seg.core.distance import signed_distance_map
from napari_boundary_seg.core.io import read_nifti, write_nifti
from napari_boundary_seg.core.metrics import CASE_METRIC_COLUMNS

TINY_TRAIN = [
    "--slice-size", "32", "--depth", "2", "--base-channels", "4", "--batch-size", "8",
    "--val-fraction", "0.34", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    args = ["synth", "--out", str(data), "--cases", "3", "--shape", "24", "28", "8"]
    assert main([*args, "--spacing", "2", "2", "3", "--anatomy", "phantom"]) == 0
    return root


def test_synth_train_predict_evaluate(bench_dir, capsys):
    data, run, pred = bench_dir / "data", bench_dir / "run", bench_dir / "pred"
    assert len(list((data / "imagesTr").glob("*.nii.gz"))) == 6  # 3 cases x 2 modalities
    code = main(["train", "--data", str(data), "--out", str(run), "--epochs", "2", *TINY_TRAIN])
    assert code == 0
    out = capsys.readouterr().out
    assert "completed" in out and "best checkpoint" in out
    with open(run / "metrics.csv") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["0", "1"]

    # resume: continue the finished run for one more epoch
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "3"]) == 0
    with open(run / "metrics.csv") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["0", "1", "2"]

    code = main(["predict", str(data / "imagesTr"), "--checkpoint", str(run / "best.pt"),
                 "--out", str(pred), "--probabilities"])  # fmt: skip
    assert code == 0
    image = read_nifti(data / "imagesTr" / "case_000_0000.nii.gz")
    labels = read_nifti(pred / "case_000.nii.gz")
    assert labels.data.shape == image.data.shape and labels.is_labels
    np.testing.assert_allclose(labels.affine, image.affine)
    probs = read_nifti(pred / "case_000_probs.nii.gz")
    assert probs.data.shape == (*image.data.shape, 2)

    table = bench_dir / "eval.csv"
    code = main(["evaluate", "--pred", str(pred), "--labels", str(data / "labelsTr"),
                 "--out", str(table)])  # fmt: skip
    assert code == 0
    with open(table) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["case_000", "case_001", "case_002", "mean", "std"]
    assert tuple(rows[0])[1:] == CASE_METRIC_COLUMNS
    dice = [float(r["dice"]) for r in rows[:3]]
    assert float(rows[3]["dice"]) == pytest.approx(np.mean(dice))
    printed = capsys.readouterr().out
    assert "hd95" in printed and "mean" in printed


def test_evaluate_by_hand(tmp_path, capsys):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir(), ref_dir.mkdir()
    ref = np.zeros((6, 6, 3), np.uint8)
    ref[1:3, 1:3, 1] = 1  # 4 voxels
    pred = np.zeros_like(ref)
    pred[1:3, 1:2, 1] = 1  # 2 voxels inside: DSC = 2*2 / (2 + 4)
    write_nifti(ref_dir / "a.nii.gz", ref, spacing=(1.0, 1.0, 2.0))
    write_nifti(pred_dir / "a.nii.gz", pred, spacing=(1.0, 1.0, 2.0))
    assert main(["evaluate", "--pred", str(pred_dir), "--labels", str(ref_dir),
                 "--out", str(tmp_path / "e.csv")]) == 0  # fmt: skip
    with open(tmp_path / "e.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["dice"]) == pytest.approx(4 / 6)
    assert float(row["hd"]) == pytest.approx(1.0)  # voxel (1, 2) is 1 mm from the prediction


@pytest.mark.parametrize("ndim", [2, 3])
def test_distmap_keeps_affine_and_matches_core(tmp_path, ndim):
    shape = (10, 12) if ndim == 2 else (10, 12, 5)
    labels = np.zeros(shape, np.uint8)
    labels[(slice(3, 7), slice(4, 9), *(slice(1, 4),) * (ndim - 2))] = 1
    spacing = (0.5, 2.0) if ndim == 2 else (0.5, 2.0, 3.0)
    affine = np.diag([*spacing, *(1.0,) * (3 - ndim), 1.0])
    affine[:3, 3] = (10.0, -4.0, 7.0)
    write_nifti(tmp_path / "lab.nii.gz", labels, affine=affine)
    out = tmp_path / "dist.nii.gz"
    assert main(["distmap", str(tmp_path / "lab.nii.gz"), str(out), "--class", "1"]) == 0
    result = read_nifti(out)
    np.testing.assert_allclose(result.affine, affine)
    np.testing.assert_allclose(result.data, signed_distance_map(labels == 1, spacing), atol=1e-5)
    # every class: the class axis last; the file exists now, so --overwrite is needed
    assert main(["distmap", str(tmp_path / "lab.nii.gz"), str(out)]) == 2
    assert main(["distmap", str(tmp_path / "lab.nii.gz"), str(out), "--overwrite"]) == 0
    both = read_nifti(out).data
    assert both.shape == (*shape, 2)
    np.testing.assert_allclose(both[..., 0], signed_distance_map(labels == 0, spacing), atol=1e-5)


def test_errors_exit_2_with_the_file_name(tmp_path, capsys, bench_dir):
    missing = tmp_path / "nope.pt"
    image = bench_dir / "data" / "imagesTr" / "case_000_0000.nii.gz"
    assert main(["predict", str(image), "--checkpoint", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-boundary-seg predict: error:") and "nope.pt" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1

    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    assert main(["predict", str(image), "--checkpoint", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.pt" in capsys.readouterr().err

    synth = ["synth", "--out", str(bench_dir / "data"), "--cases", "3", "--shape", "24", "28", "8"]
    assert main(synth) == 2
    assert "exists" in capsys.readouterr().err

    assert main(["distmap", str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz")]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["evaluate", "--pred", str(empty), "--labels", str(bench_dir / "data" / "labelsTr"),
                 "--out", str(tmp_path / "e.csv")])  # fmt: skip
    assert code == 2 and "empty" in capsys.readouterr().err

    run = ["train", "--data", str(bench_dir / "data"), "--out", str(tmp_path / "r"), "--lr", "-1"]
    assert main(run) == 2 and "lr" in capsys.readouterr().err


def test_bench_train_prints_its_ratio(capsys):
    args = ["bench", "train", "--size", "32", "--depth", "2", "--base-channels", "4",
            "--repeats", "1", "--warmup", "0", "--batch-size", "2"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "step_ratio=" in out and "boundary_loss_share=" in out and "benchmark: train" in out


def _actions(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield parser.prog, action


def test_every_option_has_a_help_text():
    parser = build_parser()
    missing = [f"{prog} {a.dest}" for prog, a in _actions(parser) if not a.help]
    assert missing == []
    commands = {"synth", "distmap", "train", "predict", "evaluate", "bench"}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert commands <= set(sub.choices)


def test_train_3d_options_reach_the_config_and_run(bench_dir, capsys):
    import json

    out = bench_dir / "run3d"
    args = ["train", "--data", str(bench_dir / "data"), "--out", str(out), "--epochs", "1"]
    args += ["--dims", "3", "--patch-size", "16", "16", "8", "--oversample", "0.5"]
    args += ["--no-augment", "--num-workers", "0", "--depth", "2", "--base-channels", "4"]
    args += ["--batch-size", "2", "--max-steps-per-epoch", "2", "--device", "cpu"]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dims"] == 3 and config["patch_size"] == [16, 16, 8]
    assert config["oversample"] == 0.5 and config["augment"] is False
    assert (out / "last.pt").is_file() and any((out / "cache").iterdir())
