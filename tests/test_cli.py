"""The command line end to end on tiny data, its errors, and its help texts."""

from __future__ import annotations

import argparse
import csv
import math

import numpy as np
import pytest

from napari_boundary_seg.cli import build_parser, main
from napari_boundary_seg.core.cache import cache_info, default_cache_dir
from napari_boundary_seg.core.distance import signed_distance_map
from napari_boundary_seg.core.io import read_nifti, write_nifti
from napari_boundary_seg.core.metrics import CASE_METRIC_COLUMNS
from napari_boundary_seg.core.train import read_metrics_csv

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
    captured = capsys.readouterr()
    out = captured.out
    assert "completed" in out and "best checkpoint" in out
    lines = out.splitlines()
    # the preset first (no GPU in CI: the CPU-sized one), then the thread count
    assert lines[0].startswith("train: preset quick (no CUDA GPU found")
    assert lines[1].startswith("train: torch uses ")
    # epochs counted from 1 in the log lines, the bars and metrics.csv
    assert "epoch 1/2: loss" in out and "epoch 2/2: loss" in out and "epoch 0" not in out
    assert "epoch 1/2" in captured.err and "epoch 0" not in captured.err
    with open(run / "metrics.csv") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2"]
    # the prepared cases are in the per-user cache, and the run says how big it is
    info = cache_info(default_cache_dir())
    assert info.entries >= 3 and not (run / "cache").exists()
    assert f"cache: {default_cache_dir()}:" in out

    # resume: continue the finished run for one more epoch (from the same cache entries)
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "3"]) == 0
    assert capsys.readouterr().out.startswith("train: resuming ")
    assert cache_info(default_cache_dir()) == info  # shared, nothing prepared again
    with open(run / "metrics.csv") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2", "3"]
    assert [int(r["epoch"]) for r in read_metrics_csv(run / "metrics.csv")] == [1, 2, 3]

    code = main(["predict", str(data / "imagesTr"), "--checkpoint", str(run / "best.pt"),
                 "--out", str(pred), "--probabilities"])  # fmt: skip
    assert code == 0
    image = read_nifti(data / "imagesTr" / "case_000_0000.nii.gz")
    labels = read_nifti(pred / "case_000.nii.gz")
    assert labels.data.shape == image.data.shape and labels.is_labels
    np.testing.assert_allclose(labels.affine, image.affine)
    probs = read_nifti(pred / "case_000_probs.nii.gz")
    assert probs.data.shape == (*image.data.shape, 2)

    # two checkpoints: an ensemble, the mean of both models' probabilities
    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.predict import predict_volume

    both = bench_dir / "pred_ensemble"
    case = [str(data / "imagesTr" / f"case_000_000{m}.nii.gz") for m in (0, 1)]
    code = main(["predict", *case, "--checkpoint", str(run / "best.pt"), "--checkpoint", str(run / "last.pt"),
                 "--out", str(both), "--probabilities", "--flips"])  # fmt: skip
    assert code == 0
    volume = np.stack([read_nifti(p).data for p in case])
    expected = [
        predict_volume(load_checkpoint(run / name), volume, image.spacing, affine=image.affine,
                       flips=True)[0]
        for name in ("best.pt", "last.pt")
    ]  # fmt: skip
    mean = (expected[0] + expected[1]) / 2
    written = read_nifti(both / "case_000_probs.nii.gz").data
    np.testing.assert_allclose(np.moveaxis(written, -1, 0), mean, atol=1e-5)
    np.testing.assert_array_equal(read_nifti(both / "case_000.nii.gz").data, mean.argmax(0))
    capsys.readouterr()
    code = main(["predict", *case, "--checkpoint", str(run / "best.pt"), "--checkpoint", str(run / "best.pt"),
                 "--out", str(both), "--overwrite"])  # fmt: skip
    assert code != 0 and "same file twice" in capsys.readouterr().err

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
    commands = {"synth", "distmap", "train", "predict", "evaluate", "bench", "cache", "demo"}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert commands <= set(sub.choices)


def test_train_3d_options_reach_the_config_and_run(bench_dir, capsys):
    import json

    out = bench_dir / "run3d"
    args = ["train", "--data", str(bench_dir / "data"), "--out", str(out), "--epochs", "1"]
    args += ["--dims", "3", "--patch-size", "16", "16", "8", "--oversample", "0.5"]
    args += ["--no-augment", "--num-workers", "0", "--depth", "2", "--base-channels", "4"]
    args += ["--batch-size", "2", "--max-steps-per-epoch", "2", "--device", "cpu"]
    assert main([*args, "--steps-per-epoch", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dims"] == 3 and config["patch_size"] == [16, 16, 8]
    assert config["steps_per_epoch"] == 3 and config["max_steps_per_epoch"] == 2
    assert config["oversample"] == 0.5 and config["augment"] is False
    assert (out / "last.pt").is_file() and cache_info().entries > 0


def test_metrics_csv_of_an_earlier_version_is_read_from_epoch_1(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,is_best\n0,0.5,True\n1,0.4,False\n")
    rows = read_metrics_csv(path)
    assert [r["epoch"] for r in rows] == [1.0, 2.0] and rows[0]["is_best"] == 1.0


def test_presets_reach_the_config(bench_dir, capsys):
    import json

    tiny = ["--epochs", "1", "--depth", "2", "--base-channels", "4", "--slice-size", "32",
            "--max-steps-per-epoch", "1", "--device", "cpu", "--threads", "1"]  # fmt: skip
    for preset, lr, patience in (("paper", 1e-3, 20), ("quick", 2e-3, 10)):
        out = bench_dir / f"preset-{preset}"
        args = ["train", "--data", str(bench_dir / "data"), "--out", str(out), "--preset", preset]
        assert main([*args, *tiny]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"train: preset {preset} (--preset)")
        assert lines[1].startswith("train: torch uses 1 CPU thread (--threads")
        config = json.loads((out / "config.json").read_text())
        assert config["lr"] == lr and config["lr_patience"] == patience
        assert config["base_channels"] == 4 and config["epochs"] == 1  # options win


def test_cache_info_and_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NAPARI_BOUNDARY_SEG_CACHE", str(tmp_path / "user"))
    entry = default_cache_dir() / "vol-abc"
    entry.mkdir(parents=True)
    (entry / "image.npy").write_bytes(b"x" * 2000)
    keep = default_cache_dir() / "notes.txt"
    keep.write_text("not an entry")
    assert main(["cache"]) == 0
    assert (
        capsys.readouterr().out.strip() == f"cache: {default_cache_dir()}: 1 prepared case(s), 2 kB"
    )
    assert main(["cache", "--clear"]) == 0
    assert "removed 1 prepared case(s), 2 kB" in capsys.readouterr().out
    assert not entry.exists() and keep.exists()  # only cache entries are removed
    assert main(["cache", "--info"]) == 0
    assert "0 prepared case(s), 0 B" in capsys.readouterr().out
    assert main(["cache", "--info", "--cache-dir", str(tmp_path / "none")]) == 2


def test_a_config_from_another_machine_uses_this_users_cache(tmp_path, monkeypatch):
    from napari_boundary_seg.core.cache import is_user_cache_dir

    monkeypatch.setenv("NAPARI_BOUNDARY_SEG_CACHE", str(tmp_path / "mine"))
    assert is_user_cache_dir(default_cache_dir())
    assert is_user_cache_dir("/home/alice/.cache/napari-boundary-seg/cases")
    assert not is_user_cache_dir(tmp_path / "elsewhere")


def test_evaluate_names_every_missing_case_and_scores_a_subset(tmp_path, capsys):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir(), ref_dir.mkdir()
    ref = np.zeros((6, 6, 3), np.uint8)
    ref[1:3, 1:3, 1] = 1
    for i in range(7):
        write_nifti(ref_dir / f"c{i}.nii.gz", ref)
    write_nifti(pred_dir / "c3.nii.gz", ref)
    args = ["evaluate", "--pred", str(pred_dir), "--labels", str(ref_dir)]
    assert main([*args, "--out", str(tmp_path / "e.csv")]) == 2
    err = capsys.readouterr().err
    assert "6 of 7 labelled cases have no prediction" in err and "--subset" in err
    assert all(f"c{i}" in err for i in (0, 1, 2, 4, 5, 6))
    assert main([*args, "--out", str(tmp_path / "e.csv"), "--subset"]) == 0
    out = capsys.readouterr().out
    assert "scoring 1 predicted case(s) of 7 labelled; 6 without a prediction" in out
    with open(tmp_path / "e.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["c3", "mean", "std"] and float(rows[0]["dice"]) == 1.0


def test_invalid_choice_is_one_short_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", "d", "--out", "o", "--loss", "nope"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-boundary-seg train: error: argument --loss")
    assert "see napari-boundary-seg train --help" in err[0]


def test_help_texts_say_what_is_required_and_what_runs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "required (unless --resume or --config gives them)" in text
    assert text.startswith("usage: napari-boundary-seg train (--data DIR --out DIR | --resume")
    assert "--data DIR" in text and "--preset {paper,quick}" in text and "--threads" in text
    assert "15 with --preset quick, 100 with paper" in " ".join(text.split())
    assert "--steps-per-epoch" in text and "0 with --preset quick, 250 with paper" in " ".join(
        text.split()
    )
    from napari_boundary_seg.cli import build_parser, config_from_args

    for typed, steps in (("7", 7), ("0", None)):  # 0: one tiling
        args = build_parser().parse_args(["train", "--dims", "3", "--steps-per-epoch", typed])
        assert config_from_args(args, {"data": "d"}).steps_per_epoch == steps
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one short training epoch" not in text and "15 epochs" in text


def test_refusals_leave_no_folder(bench_dir, tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        out = tmp_path / "new" / "run"
        args = ["train", "--data", str(bench_dir / "data"), "--out", str(out), "--device", "cuda"]
        assert main(args) == 2
        assert "--device" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()
    # refused during the data preparation (a 3D patch larger than the volumes): named as typed
    out = tmp_path / "r3d"
    args = ["train", "--data", str(bench_dir / "data"), "--out", str(out), "--dims", "3",
            "--patch-size", "64", "64", "64", "--depth", "2", "--base-channels", "4",
            "--device", "cpu", "--threads", "1"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--patch-size" in err and "patch_size" not in err, err
    assert not out.exists() or not any(out.iterdir())


def test_synth_bar_counts_cases(tmp_path, capsys):
    args = ["synth", "--out", str(tmp_path / "d"), "--cases", "2", "--shape", "16", "16", "8"]
    assert main([*args, "--anatomy", "phantom"]) == 0
    err = capsys.readouterr().err
    assert "2/2" in err and "3/3" not in err


def test_threads_choice():
    from napari_boundary_seg.core.threads import choose_threads

    quiet = {"cpu_count": 2, "default": 2, "environ": {}}
    assert choose_threads(load=0.1, **quiet).threads == 2  # idle: both cores
    assert choose_threads(load=1.0, **quiet).threads == 1  # one core busy: no spinning
    assert choose_threads(load=5.0, **quiet).threads == 1
    assert choose_threads(3, **quiet) == (3, "--threads")
    assert choose_threads(cpu_count=2, default=2, load=0, environ={"OMP_NUM_THREADS": "1"}) == (
        1,
        "OMP_NUM_THREADS",
    )
    with pytest.raises(ValueError, match="--threads"):
        choose_threads(0)


def test_finetune_warns_when_the_corrected_slices_get_worse():
    from napari_boundary_seg.core.finetune import worse_on_corrected

    better = {"corrected": {"dice_old": 0.6, "dice_new": 0.7}}
    worse = {"corrected": {"dice_old": 0.7, "dice_new": 0.6}}
    assert worse_on_corrected(better) is None
    assert "worse than its parent on the corrected slices (DSC 0.700 -> 0.600)" in (
        worse_on_corrected(worse)
    )
    assert worse_on_corrected({"corrected": {"dice_old": float("nan"), "dice_new": 0.1}}) is None


def test_every_command_is_a_module_and_the_overview_is_the_full_help(capsys):
    import importlib

    from napari_boundary_seg.cli import COMMANDS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(sub.choices) == COMMANDS
    for name in COMMANDS:
        module = importlib.import_module(f"napari_boundary_seg.cli.{name}")
        assert module.HELP and callable(module.add_parser), name
    full = build_parser().format_help()
    with pytest.raises(SystemExit) as stop:
        main(["--help"])  # built from the summary lines only
    assert stop.value.code == 0 and capsys.readouterr().out == full


def test_help_of_the_commands_that_do_not_train_needs_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_boundary_seg.cli import build_parser, main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for name in ('distmap', 'predict', 'evaluate', 'cache', 'bench', 'demo', 'finetune'):\n"
        "    build_parser(only=name)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False"


def test_train_says_when_a_run_ended_badly(capsys):
    """The widgets' rule (core.verdict) at the end of ``train``: a warning on stderr
    naming the problem and what to change for the run's loss."""
    from types import SimpleNamespace

    from napari_boundary_seg.cli.train import _verdict
    from napari_boundary_seg.core.config import TrainConfig

    done = SimpleNamespace(history=[{"val_dice": 0.05}, {"val_dice": 0.12}, {"val_dice": math.nan}])
    verdict = _verdict(done, TrainConfig(loss="gdl+bl"))
    assert verdict.bad and "best validation DSC is 0.120" in verdict.text()
    assert "keep α at 1 longer" in verdict.text()
    assert "α" not in _verdict(done, TrainConfig(loss="gdl")).text()
    assert not _verdict(SimpleNamespace(history=[{"val_dice": 0.7}]), TrainConfig()).bad
    assert not _verdict(SimpleNamespace(history=[]), TrainConfig()).bad  # no validation
