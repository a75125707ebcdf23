"""The command line under faults and bad input, run as a user runs it.

Every case goes through the real ``napari-boundary-seg`` in a subprocess (umask
022, tiny data, a time limit) and checks what a careful user would: the exit
status (2 for an error, 130 for Ctrl-C), one line on stderr naming the path or
the option, no traceback, no temporary file left, the inputs byte-identical
afterwards and the outputs' modes. A read-only file system and a full disk are
made with a read-only bind mount and a tiny tmpfs when the tests run as root
(CI does); they are skipped, with the reason, where mounting is not allowed.

The refusals (which fail fast) run concurrently in one module fixture, so the
module stays within seconds on two cores; each test then checks its own case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_boundary_seg.cli import main
from napari_boundary_seg.core.io import read_nifti, write_nifti

TIMEOUT = 120
TINY = ["--slice-size", "16", "--depth", "2", "--base-channels", "4", "--batch-size", "4",
        "--val-fraction", "0", "--device", "cpu"]  # fmt: skip


def _command() -> list[str]:
    script = Path(sys.executable).parent / "napari-boundary-seg"
    if script.exists():
        return [str(script)]
    found = shutil.which("napari-boundary-seg")
    return [found] if found else [sys.executable, "-m", "napari_boundary_seg.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)  # PYTHONPATH inherited: the worktree under test
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", NO_COLOR="1")
    return env


def _umask() -> None:
    os.umask(0o022)


def run_cli(*args: str | Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_command(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        preexec_fn=_umask,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def temp_files(*folders: Path) -> list[Path]:
    """Hidden files (the temporary files of atomic writes) under ``folders``."""
    found = []
    for folder in folders:
        if Path(folder).is_dir():
            found += [p for p in Path(folder).rglob(".*") if p.is_file()]
    return found


def error_line(result: subprocess.CompletedProcess) -> str:
    """The error message, checked to be one line without a traceback."""
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# ---------------------------------------------------------------------------
# tiny data, once per module


def _image(rng: np.random.Generator, shape=(16, 16, 4)) -> np.ndarray:
    return rng.normal(100, 10, shape).astype(np.float32)


def _labels(shape=(16, 16, 4)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[5:10, 6:11, 1:3] = 1
    return labels


SPACING = (1.0, 1.0, 2.0)


@dataclass
class World:
    root: Path
    data: Path  # generic layout, 2 cases, 1 modality
    run: Path  # a finished 1-epoch run (best.pt, last.pt, metrics.csv, config.json)
    image: Path  # one image file, case_0000.nii.gz
    labels: Path
    mounts: list[Path] = field(default_factory=list)
    mount_error: str | None = None

    @property
    def checkpoint(self) -> Path:
        return self.run / "best.pt"


def _try_mount(*args: str) -> str | None:
    try:
        result = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else (result.stderr.strip() or "mount failed")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    data = root / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for i in range(2):
        write_nifti(data / "imagesTr" / f"case_00{i}_0000.nii.gz", _image(rng), spacing=SPACING)
        write_nifti(data / "labelsTr" / f"case_00{i}.nii.gz", _labels(), spacing=SPACING)
    run = root / "run"
    torch.manual_seed(0)
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY]) == 0
    single = root / "single"
    single.mkdir()
    image = write_nifti(single / "case_0000.nii.gz", _image(rng), spacing=SPACING)
    labels = write_nifti(root / "lab.nii.gz", _labels(), spacing=SPACING)
    w = World(root, data, run, image, labels)
    yield w
    for mount in reversed(w.mounts):
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _mount_ro(w: World, name: str) -> Path:
    """A read-only bind mount of a fresh folder (root only)."""
    source = w.root / f"{name}_src"
    source.mkdir()
    target = w.root / name
    target.mkdir()
    error = _try_mount("--bind", str(source), str(target))
    if error is None:
        w.mounts.append(target)
        error = _try_mount("-o", "remount,ro,bind", str(target))
    if error is not None:
        pytest.skip(f"read-only bind mount not permitted here: {error}")
    return target


def _mount_full(w: World, name: str, free_kib: int = 8) -> Path:
    """A 256 KiB tmpfs filled up to ``free_kib`` KiB free (root only)."""
    target = w.root / name
    target.mkdir()
    error = _try_mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(target))
    if error is not None:
        pytest.skip(f"tmpfs mount not permitted here: {error}")
    w.mounts.append(target)
    with open(target / "filler.bin", "wb") as handle:
        handle.write(b"\0" * ((256 - free_kib) * 1024))
    return target


def _can_mount() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root to mount a read-only bind mount or a tmpfs"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


# ---------------------------------------------------------------------------
# refusals: each builds its case, runs concurrently, then is checked


@dataclass
class Refusal:
    argv: list[str]
    names: list[str]  # each must appear in the one error line
    keep: list[Path] = field(default_factory=list)  # inputs that must stay byte-identical
    absent: list[Path] = field(default_factory=list)  # outputs that must not exist
    watch: list[Path] = field(default_factory=list)  # folders that must hold no temp file
    digests: dict[Path, str] = field(default_factory=dict)


def _shifted(path: Path, out: Path, mm: float = 5.0) -> Path:
    vol = read_nifti(path)
    affine = vol.affine.copy()
    affine[0, 3] += mm
    return write_nifti(out, vol.data, affine=affine)


def _case_dir(w: World, name: str) -> Path:
    folder = w.root / name
    folder.mkdir()
    return folder


def _r_predict_over_input(w: World) -> Refusal:
    folder = _case_dir(w, "own_input")
    image = folder / "scan.nii.gz"  # its prediction would be scan.nii.gz in the same folder
    shutil.copy(w.image, image)
    return Refusal(
        [
            "predict",
            str(image),
            "--checkpoint",
            str(w.checkpoint),
            "--out",
            str(folder),
            "--overwrite",
        ],  # fmt: skip
        [str(image), "inputs"],
        keep=[image],
        watch=[folder],
    )


def _r_distmap_over_input(w: World) -> Refusal:
    labels = _case_dir(w, "dm_own") / "labels.nii.gz"
    shutil.copy(w.labels, labels)
    return Refusal(
        ["distmap", str(labels), str(labels), "--overwrite"], [str(labels)], keep=[labels]
    )


def _r_distmap_through_link(w: World) -> Refusal:
    folder = _case_dir(w, "dm_link")
    labels = folder / "labels.nii.gz"
    shutil.copy(w.labels, labels)
    os.link(labels, folder / "other.nii.gz")  # the same inode under another name
    return Refusal(
        ["distmap", str(labels), str(folder / "other.nii.gz"), "--overwrite"],
        ["other.nii.gz"],
        keep=[labels],
    )


def _r_evaluate_over_input(w: World) -> Refusal:
    target = w.data / "labelsTr" / "case_000.nii.gz"
    return Refusal(
        [
            "evaluate",
            "--pred",
            str(w.data / "labelsTr"),
            "--labels",
            str(w.data / "labelsTr"),
            "--out",
            str(target),
            "--overwrite",
        ],  # fmt: skip
        ["case_000.nii.gz"],
        keep=[target],
    )


def _r_train_over_init_checkpoint(w: World) -> Refusal:
    run = _case_dir(w, "init_run")
    init = run / "best.pt"
    shutil.copy(w.checkpoint, init)
    return Refusal(
        [
            "train",
            "--data",
            str(w.data),
            "--out",
            str(run),
            "--init-checkpoint",
            str(init),
            "--overwrite",
            "--epochs",
            "1",
            *TINY,
        ],  # fmt: skip
        ["best.pt"],
        keep=[init],
    )


def _r_finetune_over_checkpoint(w: World) -> Refusal:
    run = _case_dir(w, "ft_parent")
    parent = run / "last.pt"
    shutil.copy(w.checkpoint, parent)
    return Refusal(
        ["finetune", "--checkpoint", str(parent), "--image", str(w.image), "--labels",
         str(w.labels), "--out", str(run), "--overwrite", "--slices", "1", "--epochs", "1"],
        ["last.pt"],
        keep=[parent],
    )  # fmt: skip


def _r_synth_foreign_folder(w: World) -> Refusal:
    folder = _case_dir(w, "someones_data")
    (folder / "notes.txt").write_text("my data set\n")
    return Refusal(
        [
            "synth",
            "--out",
            str(folder),
            "--cases",
            "1",
            "--shape",
            "16",
            "16",
            "8",
            "--anatomy",
            "phantom",
        ],  # fmt: skip
        ["--out", str(folder), "--force"],
        keep=[folder / "notes.txt"],
        absent=[folder / "imagesTr", folder / "dataset.json"],
    )


def _r_predict_affine(w: World) -> Refusal:
    folder = _case_dir(w, "affine_pred")
    shutil.copy(w.image, folder / "c_0000.nii.gz")
    _shifted(w.image, folder / "c_0001.nii.gz")
    out = w.root / "affine_pred_out"
    return Refusal(
        ["predict", str(folder), "--checkpoint", str(w.checkpoint), "--out", str(out)],
        ["c_0001.nii.gz", "affine", "--allow-affine-mismatch"],
        absent=[out],
    )


def _r_evaluate_affine(w: World) -> Refusal:
    pred, ref = _case_dir(w, "aff_pred"), _case_dir(w, "aff_ref")
    shutil.copy(w.labels, ref / "a.nii.gz")
    _shifted(w.labels, pred / "a.nii.gz")
    out = w.root / "aff_eval.csv"
    return Refusal(
        ["evaluate", "--pred", str(pred), "--labels", str(ref), "--out", str(out)],
        ["a.nii.gz", "affine"],
        absent=[out],
    )


def _r_finetune_affine(w: World) -> Refusal:
    labels = _shifted(w.labels, _case_dir(w, "ft_aff") / "lab.nii.gz")
    out = w.root / "ft_aff_out"
    return Refusal(
        ["finetune", "--checkpoint", str(w.checkpoint), "--image", str(w.image), "--labels",
         str(labels), "--out", str(out), "--slices", "1", "--epochs", "1"],
        ["lab.nii.gz", "affine"],
        absent=[out],
    )  # fmt: skip


def _r_evaluate_negative(w: World) -> Refusal:
    pred, ref = _case_dir(w, "neg_pred"), _case_dir(w, "neg_ref")
    shutil.copy(w.labels, ref / "a.nii.gz")
    bad = _labels().astype(np.int16)
    bad[0, 0, 0] = -1
    write_nifti(pred / "a.nii.gz", bad, spacing=SPACING)
    out = w.root / "neg.csv"
    return Refusal(
        ["evaluate", "--pred", str(pred), "--labels", str(ref), "--out", str(out)],
        ["a.nii.gz", "negative"],
        absent=[out],
    )


def _r_distmap_num_classes(w: World) -> Refusal:
    out = w.root / "nc.nii.gz"
    return Refusal(
        ["distmap", str(w.labels), str(out), "--num-classes", "-3"],
        ["--num-classes", "-3"],
        absent=[out],
    )


def _r_finetune_axis(w: World) -> Refusal:
    out = w.root / "ft_axis"
    return Refusal(
        ["finetune", "--checkpoint", str(w.checkpoint), "--image", str(w.image), "--labels",
         str(w.labels), "--out", str(out), "--axis", "5", "--epochs", "1"],
        ["--axis", "5"],
        absent=[out],
    )  # fmt: skip


def _r_finetune_epochs_0(w: World) -> Refusal:
    out = w.root / "ft_e0"
    return Refusal(
        ["finetune", "--checkpoint", str(w.checkpoint), "--image", str(w.image), "--labels",
         str(w.labels), "--out", str(out), "--slices", "1", "--epochs", "0"],
        ["--epochs"],
        absent=[out],
    )  # fmt: skip


def _r_train_epochs_0(w: World) -> Refusal:
    out = w.root / "tr_e0"
    return Refusal(
        ["train", "--data", str(w.data), "--out", str(out), "--epochs", "0", *TINY],
        ["--epochs"],
        absent=[out],
    )


def _r_train_config_string(w: World) -> Refusal:
    out = w.root / "tr_cfg"
    return Refusal(
        ["train", "--data", str(w.data), "--out", str(out), "--config", '{"epochs": "5"}', *TINY],
        ['"epochs"', "--config", "'5'"],
        absent=[out],
    )


def _r_train_depth_40(w: World) -> Refusal:
    out = w.root / "tr_d40"
    return Refusal(
        [
            "train",
            "--data",
            str(w.data),
            "--out",
            str(out),
            "--epochs",
            "1",
            *TINY,
            "--depth",
            "40",
        ],  # fmt: skip
        ["--depth", "40"],
        absent=[out],
    )


def _r_train_depth_too_deep_for_slices(w: World) -> Refusal:
    out = w.root / "tr_d8"
    return Refusal(
        [
            "train",
            "--data",
            str(w.data),
            "--out",
            str(out),
            "--epochs",
            "1",
            *TINY,
            "--depth",
            "8",
        ],  # fmt: skip
        ["--depth 8", "16"],
        absent=[out],
    )


def _r_synth_huge(w: World) -> Refusal:
    out = w.root / "huge"
    return Refusal(
        ["synth", "--out", str(out), "--shape", "4000", "4000", "4000"],
        ["--shape", "4000 4000 4000", "memory"],
        absent=[out],
    )


def _r_predict_folder_second_case_broken(w: World) -> Refusal:
    folder = _case_dir(w, "two_cases")
    shutil.copy(w.image, folder / "a_0000.nii.gz")
    write_nifti(folder / "b_0000.nii.gz", np.zeros((16, 16, 4), np.float32), spacing=SPACING)
    write_nifti(folder / "b_0001.nii.gz", np.zeros((16, 12, 4), np.float32), spacing=SPACING)
    out = w.root / "two_cases_out"
    return Refusal(
        ["predict", str(folder), "--checkpoint", str(w.checkpoint), "--out", str(out)],
        ["case b", "b_0001.nii.gz"],
        absent=[out],
    )


def _r_predict_nan(w: World) -> Refusal:
    image = _image(np.random.default_rng(1))
    image[3, 3, 1] = np.nan
    path = write_nifti(_case_dir(w, "nan") / "n_0000.nii.gz", image, spacing=SPACING)
    out = w.root / "nan_out"
    return Refusal(
        ["predict", str(path), "--checkpoint", str(w.checkpoint), "--out", str(out)],
        ["n_0000.nii.gz", "NaN"],
        absent=[out],
    )


def _r_tampered_header(w: World) -> Refusal:
    path = _case_dir(w, "tampered") / "t_0000.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    raw[40:56] = np.array([3, 1024, 1024, 512, 1, 1, 1, 1], "<i2").tobytes()  # dim[]
    path.write_bytes(bytes(raw))
    assert path.stat().st_size < 2048
    out = w.root / "tampered_out"
    return Refusal(
        ["predict", str(path), "--checkpoint", str(w.checkpoint), "--out", str(out)],
        ["t_0000.nii", "(1024, 1024, 512)"],
        absent=[out],
    )


def _edited_checkpoint(w: World, name: str, **hparams: int) -> Path:
    checkpoint = torch.load(w.checkpoint, weights_only=True)
    checkpoint["model"].update(hparams)
    path = _case_dir(w, name) / "edited.pt"
    torch.save(checkpoint, path)
    return path


def _r_checkpoint_wide(w: World) -> Refusal:
    path = _edited_checkpoint(w, "ck_wide", base_channels=2**31)
    out = w.root / "ck_wide_out"
    return Refusal(
        ["predict", str(w.image), "--checkpoint", str(path), "--out", str(out)],
        ["edited.pt", "base_channels"],
        absent=[out],
    )


def _r_checkpoint_deep(w: World) -> Refusal:
    path = _edited_checkpoint(w, "ck_deep", depth=200000)
    out = w.root / "ck_deep_out"
    return Refusal(
        ["predict", str(w.image), "--checkpoint", str(path), "--out", str(out)],
        ["edited.pt", "depth"],
        absent=[out],
    )


def _r_name_too_long(w: World) -> Refusal:
    out = w.root / ("x" * 300 + ".nii.gz")
    return Refusal(
        ["distmap", str(w.labels), str(out)],
        ["cannot write", "file name too long"],
        watch=[w.root],
    )


# read-only file system, for each command that writes


def _ro(command: str):
    def build(w: World) -> Refusal:
        ro = _mount_ro(w, f"ro_{command}")
        target = ro / "out"
        argv = {
            "distmap": ["distmap", str(w.labels), str(ro / "d.nii.gz")],
            "predict": ["predict", str(w.image), "--checkpoint", str(w.checkpoint),
                        "--out", str(target)],
            "evaluate": ["evaluate", "--pred", str(w.data / "labelsTr"), "--labels",
                         str(w.data / "labelsTr"), "--out", str(ro / "e.csv")],
            "synth": ["synth", "--out", str(target), "--cases", "1", "--shape", "16", "16", "8",
                      "--anatomy", "phantom"],
            "train": ["train", "--data", str(w.data), "--out", str(target), "--epochs", "1",
                      *TINY],
            "finetune": ["finetune", "--checkpoint", str(w.checkpoint), "--image", str(w.image),
                         "--labels", str(w.labels), "--out", str(target), "--slices", "1",
                         "--epochs", "1"],
        }[command]  # fmt: skip
        return Refusal(argv, ["cannot write", str(ro), "read-only file system"], watch=[ro])

    build.needs_root = True  # type: ignore[attr-defined]
    return build


def _r_full_disk_distmap(w: World) -> Refusal:
    full = _mount_full(w, "full_dm", free_kib=4)
    out = full / "d.nii"  # uncompressed: 16*16*4*2 float32 = 8 KiB
    return Refusal(
        ["distmap", str(w.labels), str(out)],
        ["cannot write", str(out), "no space left on device"],
        absent=[out],
        watch=[full],
    )


_r_full_disk_distmap.needs_root = True  # type: ignore[attr-defined]

REFUSALS = {
    "predict_over_its_input": _r_predict_over_input,
    "distmap_over_its_input": _r_distmap_over_input,
    "distmap_over_a_hard_link_of_its_input": _r_distmap_through_link,
    "evaluate_over_its_input": _r_evaluate_over_input,
    "train_over_its_init_checkpoint": _r_train_over_init_checkpoint,
    "finetune_over_its_checkpoint": _r_finetune_over_checkpoint,
    "synth_into_a_foreign_folder": _r_synth_foreign_folder,
    "predict_modalities_5mm_apart": _r_predict_affine,
    "evaluate_prediction_5mm_off": _r_evaluate_affine,
    "finetune_labels_5mm_off": _r_finetune_affine,
    "evaluate_negative_labels": _r_evaluate_negative,
    "distmap_num_classes_negative": _r_distmap_num_classes,
    "finetune_axis_5": _r_finetune_axis,
    "finetune_epochs_0": _r_finetune_epochs_0,
    "train_epochs_0": _r_train_epochs_0,
    "train_config_string_epochs": _r_train_config_string,
    "train_depth_40": _r_train_depth_40,
    "train_depth_beyond_the_slices": _r_train_depth_too_deep_for_slices,
    "synth_shape_4000": _r_synth_huge,
    "predict_folder_second_case_broken": _r_predict_folder_second_case_broken,
    "predict_nan_image": _r_predict_nan,
    "tampered_nifti_header": _r_tampered_header,
    "checkpoint_base_channels_2_31": _r_checkpoint_wide,
    "checkpoint_depth_200000": _r_checkpoint_deep,
    "output_name_too_long": _r_name_too_long,
    **{
        f"read_only_{c}": _ro(c)
        for c in ("distmap", "predict", "evaluate", "synth", "train", "finetune")
    },  # fmt: skip
    "full_disk_distmap": _r_full_disk_distmap,
}


@pytest.fixture(scope="module")
def refusals(world, request):
    """Build the selected refusal cases, run them concurrently, return ``{name: (case,
    result)}`` (a skip reason instead of a result where a mount is not possible)."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "callspec", None) is not None and "name" in item.callspec.params
    }
    cases: dict[str, Refusal | str] = {}
    cannot_mount = _can_mount()
    for name, build in REFUSALS.items():
        if name not in selected:
            continue
        if getattr(build, "needs_root", False) and cannot_mount:
            cases[name] = cannot_mount
            continue
        try:
            case = build(world)
        except pytest.skip.Exception as skip:
            cases[name] = str(skip)
            continue
        case.digests = {p: digest(p) for p in case.keep}
        cases[name] = case
    runnable = {n: c for n, c in cases.items() if isinstance(c, Refusal)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {n: pool.submit(run_cli, *c.argv) for n, c in runnable.items()}
        results = {n: f.result() for n, f in futures.items()}
    return {n: (c, results.get(n)) for n, c in cases.items()}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_with_one_line_and_nothing_lost(refusals, name):
    case, result = refusals[name]
    if isinstance(case, str):
        pytest.skip(case)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = error_line(result)
    assert line.startswith(f"napari-boundary-seg {case.argv[0]}: error:"), line
    for text in case.names:
        assert text in line, (text, line)
    for path, before in case.digests.items():
        assert digest(path) == before, f"{path} changed"
    for path in case.absent:
        assert not path.exists(), f"{path} was written"
    for folder in case.watch:
        assert temp_files(folder) == [], temp_files(folder)


# ---------------------------------------------------------------------------
# what works must work the same way for every command, with the right modes


def test_predict_reads_4d_singletons_skips_temp_files_and_cleans_them(world):
    folder = world.root / "good_in"
    folder.mkdir()
    long_case = "p" * 243  # <case>_0000.nii.gz fits 255 bytes, <case>_probs.nii.gz would not
    shutil.copy(world.image, folder / f"{long_case}_0000.nii.gz")
    vol = read_nifti(world.image)
    nib.save(nib.Nifti1Image(vol.data[..., None], vol.affine), str(folder / "four_0000.nii.gz"))
    # a killed atomic write of an earlier run: hidden, never a case
    (folder / ".four_0000.nii.gz.2147483646-0123abcd.tmp.nii.gz").write_bytes(b"half")
    out = world.root / "good_out"
    out.mkdir()
    stale = out / ".four.nii.gz.2147483646-0123abcd.tmp.nii.gz"  # its writer is gone
    stale.write_bytes(b"half")
    inputs = {p: digest(p) for p in folder.iterdir()}
    result = run_cli(
        "predict", folder, "--checkpoint", world.checkpoint, "--out", out, "--probabilities"
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert {p: digest(p) for p in folder.iterdir()} == inputs
    written = sorted(out.iterdir())
    assert stale not in written and temp_files(out) == []
    assert len(written) == 4, written  # labels and probabilities of two cases
    assert all(mode(p) == 0o644 for p in written), [oct(mode(p)) for p in written]
    assert all(len(p.name.encode()) <= 255 for p in written)
    four = read_nifti(out / "four.nii.gz")
    assert four.data.shape == vol.data.shape  # (X, Y, Z, 1) read as (X, Y, Z)

    # distmap reads the same (X, Y, Z, 1) file; --overwrite keeps the old file's mode
    labels4 = world.root / "labels4.nii.gz"
    lab = read_nifti(world.labels)
    nib.save(nib.Nifti1Image(lab.data[..., None], lab.affine), str(labels4))
    dist = world.root / "dist4.nii.gz"
    first = run_cli("distmap", labels4, dist, "--class", "1")
    assert first.returncode == 0, first.stderr
    assert mode(dist) == 0o644 and read_nifti(dist).data.shape == lab.data.shape
    dist.chmod(0o640)
    again = run_cli("distmap", labels4, dist, "--class", "1", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert mode(dist) == 0o640


def test_affine_mismatch_allowed_by_flag_is_reported(world):
    pred, ref = world.root / "allow_pred", world.root / "allow_ref"
    pred.mkdir(), ref.mkdir()
    shutil.copy(world.labels, ref / "a.nii.gz")
    _shifted(world.labels, pred / "a.nii.gz")
    # a killed write of another case: hidden, so neither a case nor an extra prediction
    (pred / ".b.nii.gz.2147483646-0123abcd.tmp.nii.gz").write_bytes(b"half")
    out = world.root / "allow.csv"
    result = run_cli(
        "evaluate", "--pred", pred, "--labels", ref, "--out", out, "--allow-affine-mismatch"
    )
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "--allow-affine-mismatch" in result.stderr
    assert "Traceback" not in result.stderr and ".b.nii.gz" not in result.stderr
    assert out.is_file() and mode(out) == 0o644
    rows = out.read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["case", "a", "mean", "std"]


# ---------------------------------------------------------------------------
# interrupted work


def _popen(argv: list[str]) -> subprocess.Popen:
    """The command running in the background, its output piped (text)."""
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=_umask,
    )


def test_ctrl_c_exits_130_keeps_the_checkpoint_and_says_how_to_resume(world):
    out = world.root / "interrupted"
    out.mkdir()
    # a run killed before its first checkpoint left these: they must not block the rerun
    (out / "config.json").write_text("{}\n")
    (out / "metrics.csv").write_text("epoch\n")
    argv = [*_command(), "train", "--data", str(world.data), "--out", str(out),
            "--epochs", "1000", *TINY]  # fmt: skip
    proc = _popen(argv)
    deadline = time.monotonic() + TIMEOUT
    seen = []
    try:
        for line in proc.stdout:  # one finished epoch: last.pt is on disk
            seen.append(line)
            if line.startswith("epoch ") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(line.startswith("epoch ") for line in seen), (seen, proc.stderr)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"--resume {out / 'last.pt'}" in err
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["position"]["epoch"] >= 1
    assert temp_files(out) == []


def test_ctrl_c_during_finetune_exits_130_and_keeps_parent_and_lineage(world):
    out = world.root / "ft_interrupted"
    parent = world.checkpoint
    before = hashlib.sha256(parent.read_bytes()).hexdigest()
    argv = [*_command(), "finetune", "--checkpoint", str(parent), "--image", str(world.image),
            "--labels", str(world.labels), "--out", str(out), "--slices", "1", "2",
            "--epochs", "100000", "--device", "cpu"]  # fmt: skip
    proc = _popen(argv)
    deadline = time.monotonic() + TIMEOUT
    try:
        # the run's files are written when training starts; then one epoch ends
        while not (out / "last.pt").is_file() and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert hashlib.sha256(parent.read_bytes()).hexdigest() == before
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["parent"] == str(parent.resolve()) and lineage["parent_sha256"] == before
    assert lineage["stopped"] is True and lineage["slices"] == [1, 2]
    assert lineage["checkpoint"] == str(out / "last.pt")
    torch.load(out / "last.pt", weights_only=True)
    assert temp_files(out) == []


# ---------------------------------------------------------------------------
# a full disk during a checkpoint write keeps the earlier checkpoint


def test_full_disk_during_checkpoint_keeps_the_last_good_one(world):
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    full = _mount_full(world, "full_run", free_kib=200)
    run = full / "run"
    shutil.copytree(world.run, run)
    last = run / "last.pt"
    before = digest(last)
    with open(full / "more_filler.bin", "wb") as handle:  # leave less than a checkpoint
        handle.write(b"\0" * (int(shutil.disk_usage(full).free) - 8 * 1024))
    result = run_cli("train", "--resume", last, "--epochs", "3")
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = error_line(result)
    assert "no space left on device" in line and str(run) in line, line
    assert digest(last) == before
    assert torch.load(last, weights_only=True)["position"]["epoch"] == 1
    assert temp_files(run) == []
    assert json.loads((run / "config.json").read_text())  # whole, or kept as it was


# ---------------------------------------------------------------------------
# real-scan data sets: every case checked first, any file name, a full cache disk


def _data_set(root: Path, names: list[str], rng) -> Path:
    data = root / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for name in names:
        write_nifti(data / "imagesTr" / f"{name}_0000.nii.gz", _image(rng), spacing=SPACING)
        write_nifti(data / "labelsTr" / f"{name}.nii.gz", _labels(), spacing=SPACING)
    return data


@pytest.mark.parametrize("fault", ["nan_image", "labels_3", "shape", "truncated"])
def test_train_checks_every_case_before_writing_anything(tmp_path, fault):
    rng = np.random.default_rng(1)
    data = _data_set(tmp_path, ["a1", "a2", "z9"], rng)  # the bad case comes last
    image = data / "imagesTr" / "z9_0000.nii.gz"
    label = data / "labelsTr" / "z9.nii.gz"
    if fault == "nan_image":
        bad = _image(rng)
        bad[1, 1, 1] = np.nan
        write_nifti(image, bad, spacing=SPACING, overwrite=True)
    elif fault == "labels_3":
        bad = _labels().astype(np.uint8)
        bad[0, 0, 0] = 3
        write_nifti(label, bad, spacing=SPACING, overwrite=True)
    elif fault == "shape":
        write_nifti(image, _image(rng)[:-1], spacing=SPACING, overwrite=True)
    else:
        raw = image.read_bytes()
        image.write_bytes(raw[: len(raw) // 2])
    out, cache = tmp_path / "run", tmp_path / "cache"
    result = run_cli("train", "--data", data, "--out", out, "--cache-dir", cache, "--epochs", "1",
                     *TINY)  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = error_line(result)
    assert "z9" in line, line
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    assert not cache.exists() or not any(cache.iterdir()), sorted(cache.iterdir())


def test_a_non_utf8_file_name_is_read_like_any_other(tmp_path):
    name = os.fsdecode(b"caf\xe9")
    data = _data_set(tmp_path, [name, "b1"], np.random.default_rng(2))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY]) == 0
    preds = tmp_path / "preds"
    assert main(["predict", str(data / "imagesTr"), "--checkpoint", str(run / "last.pt"),
                 "--out", str(preds), "--device", "cpu"]) == 0  # fmt: skip
    assert (preds / f"{name}.nii.gz").is_file()


def test_full_disk_while_caching_names_the_path_and_the_cause(world):
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    full = _mount_full(world, "full_cache", free_kib=4)
    out = world.root / "run_full_cache"
    result = run_cli("train", "--data", world.data, "--out", out, "--cache-dir", full,
                     "--epochs", "1", *TINY)  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = error_line(result)
    assert "no space left on device" in line and str(full) in line, line
    assert "requested" not in line, line
