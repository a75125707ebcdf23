"""The ``napari-boundary-seg`` command line.

Subcommands: ``synth`` (write the built-in benchmark), ``distmap`` (NIfTI labels
to signed distance maps), ``train``, ``predict``, ``evaluate``, ``finetune``,
``cache``, ``demo``, ``study`` and ``bench``.
Every one calls the same ``core`` functions as the napari widgets and shows
tqdm progress bars.

Bad input (a missing file, a file that exists, wrong shapes, a bad option
value) and file-system faults (no space left, a read-only file system...) end
the command with exit code 2 and a one-line message naming the file or the
option and the problem, no traceback; Ctrl-C ends it with exit code 130. No
command writes over one of its inputs, and every option is checked before any
work starts (see "What happens when things go wrong" in the README).

Adding a subcommand: write a function that takes the subparsers object, adds
its parser (with a help text on every option) and sets ``func`` to a handler
``(args) -> int``; decorate it with :func:`subcommand`.
"""

from __future__ import annotations

import argparse
import csv
import errno
import logging
import math
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg import __version__

logger = logging.getLogger(__name__)

PROG = "napari-boundary-seg"

Handler = Callable[[argparse.Namespace], int]
Registrar = Callable[[Any], None]

_SUBCOMMANDS: list[Registrar] = []


def subcommand(register: Registrar) -> Registrar:
    """Register a function that adds a subcommand parser (in definition order)."""
    _SUBCOMMANDS.append(register)
    return register


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``PROG CMD: error: MESSAGE`` and a pointer to
    ``--help`` instead of the whole usage (24 lines for ``train``); exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        hint = f"{self.prog} --help"
        self.exit(2, f"{self.prog}: error: {message} (see {hint})\n")


class CommandError(Exception):
    """A user-facing error: printed on one line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C stopped the work cleanly: the message says what was kept; exit code 130."""


_USER_ERRORS = (ValueError, TypeError, OSError, CommandError)


def _error_message(err: BaseException) -> str:
    """One line naming the file or option and the problem."""
    from napari_boundary_seg.core.io import OutputError

    if isinstance(err, OSError) and not isinstance(err, OutputError):
        if err.filename is not None and err.strerror:
            return f"{err.filename}: {err.strerror[:1].lower()}{err.strerror[1:]}"
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    # the library's names of its arguments, as the command line spells them
    for library, flag in (
        ("pass overwrite=True", "pass --overwrite"),
        ("or allow overwrite", "or pass --overwrite"),
        ("out_dir ", "--out "),
    ):
        line = line.replace(library, flag)
    return line


def _check(
    value: Any,
    flag: str,
    low: float | None = None,
    high: float | None = None,
    *,
    positive: bool = False,
) -> Any:
    """``value`` of option ``flag`` checked against ``[low, high]`` (``> 0`` with
    ``positive``), as an int when it is one; ValueError/TypeError naming ``flag``."""
    from napari_boundary_seg.core.validate import check_int, check_number

    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and not positive:
        low_int = None if low is None else math.ceil(low)
        return check_int(value, flag, low_int, None if high is None else math.floor(high))
    if positive:
        return check_number(value, flag, 0.0, high, low_open=True)
    return check_number(value, flag, low, high)


def _check_axis(value: int | None, flag: str, ndim: int) -> int | None:
    """An axis option in ``-ndim..ndim-1`` (numpy's rule), as given (not wrapped)."""
    if value is None:
        return None
    return _check(value, flag, -ndim, ndim - 1)


def _check_output_file(path: Path, overwrite: bool, inputs: Sequence[Path], flag: str) -> None:
    """An output file: never one of the inputs; existing only with --overwrite; its
    folder created and writable."""
    from napari_boundary_seg.core.io import OutputError, check_not_input, ensure_writable_dir

    check_not_input([path], inputs, flag)
    try:
        path.lstat()
    except FileNotFoundError:
        pass
    except OSError as exc:  # a name too long, a folder that cannot be searched...
        raise OutputError(exc.errno or errno.EIO, path, exc.strerror) from exc
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise CommandError(f"{flag} {path} is a folder; give a file name")
    ensure_writable_dir(path.parent)


def _warn_affine(message: str) -> None:
    print(f"{PROG}: warning: {message} (allowed by --allow-affine-mismatch)", file=sys.stderr)


def _check_affine(
    ref_path: Path, ref: Any, path: Path, vol: Any, allow: bool, case: str | None = None
) -> None:
    """The training loader's affine rule for two files of one case; a mismatch is an
    error, or a warning on stderr with --allow-affine-mismatch."""
    from napari_boundary_seg.core.io import check_geometry

    try:
        check_geometry(ref_path, ref.affine, path, vol.affine, case)
    except ValueError as err:
        if not allow:
            raise ValueError(f"{err}; pass --allow-affine-mismatch to accept it") from err
        _warn_affine(str(err))


def _add_affine_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--allow-affine-mismatch",
        action="store_true",
        help=f"accept {what} whose affines differ by more than 1e-3 mm (a warning says so)",
    )


def _progress(total: int | None = None, desc: str = "", unit: str = "it", leave: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)


def _drive(gen, desc: str, unit: str = "it", skip: int = 0):
    """Run a ``Progress`` generator with a tqdm bar; return its return value.
    ``skip``: leading steps that are not units of the bar (synth's anatomy step),
    so that 20 cases count to 20."""
    from napari_boundary_seg.core.progress import Progress, run_to_end

    bar = None

    def show(event: Any) -> None:
        nonlocal bar
        if isinstance(event, Progress):
            total = max(event.total - skip, 0) if event.total else None
            if bar is None:  # created on the first event, which knows the total
                bar = _progress(total or None, desc, unit)
            if total and bar.total != total:
                bar.total = total
            bar.n = max(event.done - skip, 0)
            if event.message:
                bar.set_postfix_str(event.message, refresh=False)
            bar.refresh()

    try:
        return run_to_end(gen, show)
    finally:
        if bar is not None:
            bar.close()


def _out(text: str = "") -> None:
    print(text)


def _is_writer() -> bool:
    """False in the processes other than rank 0 of a torchrun run (they print nothing)."""
    import os

    return os.environ.get("RANK", "0") in ("", "0")


def _add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: one per idle core, or OMP_NUM_THREADS; said in "
        "the first lines of output)",
    )


def _set_threads(args: argparse.Namespace, command: str) -> None:
    """Choose torch's CPU thread count (``--threads``, ``OMP_NUM_THREADS`` or the idle
    cores) and say it."""
    from napari_boundary_seg.core.threads import apply_threads, choose_threads

    choice = apply_threads(choose_threads(getattr(args, "threads", None)))
    if _is_writer():
        _out(f"{command}: {choice.describe()}")


def _check_device(name: str) -> None:
    """``--device`` names a device available here (checked before any folder is made)."""
    from napari_boundary_seg.core.device import resolve_device

    try:
        resolve_device(name)
    except ValueError as err:
        raise CommandError(f"--device: {_error_message(err)}") from err


class _NewFolders:
    """Context manager: the folders of ``path`` that do not exist yet are removed
    again, if still empty, when the block fails (a refused command leaves no
    empty folder behind)."""

    def __init__(self, *paths: Path | None) -> None:
        self.created: list[Path] = []
        for path in paths:
            if path is None:
                continue
            path = Path(path).absolute()
            missing = []
            while not path.exists() and path != path.parent:
                missing.append(path)
                path = path.parent
            self.created.extend(missing)  # deepest first

    def __enter__(self) -> _NewFolders:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            return
        for folder in self.created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass


# ---------------------------------------------------------------------------
# synth


@subcommand
def _add_synth(sub: Any) -> None:
    from napari_boundary_seg.core import synthetic

    p = sub.add_parser(
        "synth",
        help="write the built-in unbalanced lesion benchmark (generic NIfTI layout)",
        description="Write synthetic brain-like volumes with small lesions "
        "(imagesTr/, labelsTr/, dataset.json) to a folder. --preset easy (default) is the "
        "original benchmark; --preset wmh is the harder WMH-2017-like one (several simulated "
        "sites with their own grids, partial volume, punctate and confluent periventricular "
        "lesions, hyperintense mimics; each case's site is recorded in dataset.json).",
    )
    p.add_argument(
        "--preset",
        choices=synthetic.PRESETS,
        default="easy",
        help="generator preset (default easy; wmh: grids come from its sites, so --shape "
        "and --spacing do not apply)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="volume shape in voxels, easy preset "
        f"(default {' '.join(map(str, synthetic.DEFAULT_SHAPE))})",
    )
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("SX", "SY", "SZ"),
        help="voxel size in mm, easy preset "
        f"(default {' '.join(map(str, synthetic.DEFAULT_SPACING))})",
    )
    p.add_argument(
        "--anatomy",
        choices=("auto", "mni", "phantom"),
        default="auto",
        help="anatomy source: the MNI152 templates of nilearn, a procedural phantom, "
        "or auto (MNI when nilearn is installed; default)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out that does not hold a data set written by synth",
    )
    p.set_defaults(func=_cmd_synth)


def _is_synth_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a data set written by ``synth`` (its dataset.json says so)."""
    import json

    from napari_boundary_seg.core.synthetic import DATASET_NAME

    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and str(meta.get("name", "")).startswith(DATASET_NAME)  # easy and wmh presets
        and "generator" in meta
    )


def _cmd_synth(args: argparse.Namespace) -> int:
    from napari_boundary_seg.core import synthetic
    from napari_boundary_seg.core.io import ensure_writable_dir
    from napari_boundary_seg.core.validate import check_synth_size

    if args.preset != "easy" and (args.shape is not None or args.spacing is not None):
        raise CommandError(
            f"--shape/--spacing apply to the easy preset; the {args.preset} preset's grids "
            "come from its sites"
        )
    _check(args.cases, "--cases", 1)
    shape = tuple(args.shape or synthetic.DEFAULT_SHAPE)
    spacing = tuple(args.spacing or synthetic.DEFAULT_SPACING)
    for size in shape:
        _check(size, "--shape", 8)
    for size in spacing:
        _check(size, "--spacing", positive=True)
    if args.preset == "easy":
        check_synth_size(shape, "--shape")
    out = args.out
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_synth_folder(out) and not args.force:
        raise CommandError(
            f"--out {out} is not empty and holds no data set written by synth (its "
            "dataset.json); choose an empty folder, or pass --force to write into it"
        )
    with _NewFolders(out / "imagesTr", out / "labelsTr"):
        for folder in (out, out / "imagesTr", out / "labelsTr"):
            ensure_writable_dir(folder)
        written = _write_synth(args, shape, spacing)
    _out(f"wrote {args.cases} cases ({len(written)} files) to {args.out}")
    return 0


def _write_synth(args: argparse.Namespace, shape: tuple, spacing: tuple) -> list:
    from napari_boundary_seg.core import synthetic

    return _drive(
        synthetic.iter_write_benchmark(
            args.out,
            n_cases=args.cases,
            seed=args.seed,
            shape=shape,
            spacing=spacing,
            anatomy=args.anatomy,
            overwrite=args.overwrite,
            preset=args.preset,
        ),
        "synth",
        "case",
        skip=1,  # the anatomy is built first: one step that is not a case
    )


# ---------------------------------------------------------------------------
# distmap


@subcommand
def _add_distmap(sub: Any) -> None:
    p = sub.add_parser(
        "distmap",
        help="NIfTI label file -> NIfTI signed distance map (mm)",
        description="Signed distance maps of a label volume, in mm with the file's voxel "
        "spacing: negative inside, 0 on the boundary, positive outside. All classes give "
        "a 4D file with one map per class on the last axis; --class gives one map.",
    )
    p.add_argument("labels", type=Path, help="input label file (.nii or .nii.gz)")
    p.add_argument("output", type=Path, help="output file (.nii or .nii.gz)")
    p.add_argument(
        "--class",
        dest="class_index",
        type=int,
        default=None,
        help="write the map of this class only (default: every class, 4D output)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="number of classes, background included (default: largest label + 1)",
    )
    p.add_argument(
        "--slice-axis",
        type=int,
        default=None,
        help="compute independent 2D maps of the slices along this axis "
        "(default: one map of the whole volume)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_distmap)


def _cmd_distmap(args: argparse.Namespace) -> int:
    from napari_boundary_seg.core.distance import iter_class_distance_maps, signed_distance_map
    from napari_boundary_seg.core.io import read_nifti, write_nifti

    _check(args.num_classes, "--num-classes", 2)
    _check(args.class_index, "--class", 0)
    _check_output_file(args.output, args.overwrite, [args.labels], "OUTPUT")
    volume = read_nifti(args.labels, as_labels=True)
    labels = volume.data
    if labels.ndim not in (2, 3):
        raise CommandError(
            f"{args.labels}: expected a 2D or 3D label volume, got shape {labels.shape}"
        )
    _check_axis(args.slice_axis, "--slice-axis", labels.ndim)
    if labels.size and labels.min() < 0:
        raise CommandError(f"{args.labels}: negative label values ({labels.min()})")
    num_classes = args.num_classes if args.num_classes is not None else int(labels.max()) + 1
    num_classes = max(num_classes, 2)
    if labels.max() >= num_classes:
        raise CommandError(
            f"{args.labels}: label values up to {labels.max()} but --num-classes {num_classes}"
        )
    spacing = volume.spacing[: labels.ndim]
    if args.class_index is not None:
        if not 0 <= args.class_index < num_classes:
            raise CommandError(
                f"--class {args.class_index} is outside 0..{num_classes - 1} for {args.labels}"
            )
        maps = signed_distance_map(labels == args.class_index, spacing, axis=args.slice_axis)
    else:
        maps = _drive(
            iter_class_distance_maps(labels, num_classes, spacing, axis=args.slice_axis),
            "distmap",
        )
        maps = np.moveaxis(maps, 0, -1)  # NIfTI: the class axis last
    write_nifti(
        args.output, maps.astype(np.float32), affine=volume.affine, overwrite=args.overwrite
    )
    _out(f"wrote {args.output} {tuple(maps.shape)} (mm, spacing {tuple(spacing)})")
    return 0


# ---------------------------------------------------------------------------
# train


def _schedule_value(text: str) -> Any:
    parts = [t for t in text.split(",") if t.strip()]
    try:
        values = [float(t) for t in parts]
    except ValueError as err:
        raise CommandError(f"schedule parameter value {text!r} is not a number or list") from err
    return values if len(values) != 1 or "," in text else values[0]


def _schedule_from_args(kind: str | None, params: Sequence[str] | None) -> dict | None:
    if kind is None and not params:
        return None
    out: dict[str, Any] = {"kind": kind or "paper"}
    for item in params or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CommandError(f"--schedule-param {item!r}: use NAME=VALUE (e.g. step=0.02)")
        out[name.strip().replace("-", "_")] = _schedule_value(value)
    return out


class _PresetDefault:
    """A TrainConfig field's default as the help texts show it: one value when
    both presets agree, else ``15 with --preset quick, 100 with paper``."""

    def __init__(self, quick: Any, paper: Any) -> None:
        self.quick, self.paper = quick, paper

    @property
    def value(self) -> _PresetDefault:  # an enum field's value
        return _PresetDefault(self.quick.value, self.paper.value)

    def __format__(self, spec: str) -> str:
        def text(v: Any) -> str:
            return "0" if v is None else format(v, spec)  # slice_size: None = their size

        if self.quick == self.paper:
            return text(self.quick)
        return f"{text(self.quick)} with --preset quick, {text(self.paper)} with paper"


class _PresetDefaults:
    """``d.<field>``: the field's default under both presets (:class:`_PresetDefault`)."""

    def __init__(self) -> None:
        from napari_boundary_seg.core.presets import preset_config

        self._quick, self._paper = preset_config("quick"), preset_config("paper")

    def __getattr__(self, name: str) -> _PresetDefault:
        return _PresetDefault(getattr(self._quick, name), getattr(self._paper, name))


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options of :class:`~napari_boundary_seg.core.train.TrainConfig`, all
    defaulting to ``None`` (= the preset's value, or the resumed run's value).
    Used by ``train``; ``study`` and ``finetune`` have options of their own."""
    from napari_boundary_seg.core.losses import LossKind
    from napari_boundary_seg.core.presets import PRESETS
    from napari_boundary_seg.core.schedule import ScheduleKind

    d = _PresetDefaults()
    needed = p.add_argument_group("required (unless --resume or --config gives them)")
    needed.add_argument(
        "--data", type=Path, metavar="DIR", help="data set folder (generic, WMH or ISLES layout)"
    )
    needed.add_argument(
        "--out", type=Path, metavar="DIR", help="run folder for best.pt, last.pt, metrics.csv"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="starting values that the other options change: "
        + "; ".join(f"{k}: {v}" for k, v in PRESETS.items())
        + " (default: paper when a CUDA GPU is found, else quick; said in the first line)",
    )
    p.add_argument("--config", type=Path, help="JSON file of a TrainConfig; options override it")
    p.add_argument("--epochs", type=int, help=f"number of epochs (default {d.epochs})")
    p.add_argument(
        "--loss",
        choices=[k.value for k in LossKind],
        help=f"training objective (default {d.loss.value})",
    )
    p.add_argument(
        "--schedule",
        choices=[k.value for k in ScheduleKind],
        help="alpha schedule of gdl+bl (default paper: 1 at the first epoch, -0.01 per "
        "epoch, floor 0.01)",
    )
    p.add_argument(
        "--schedule-param",
        action="append",
        metavar="NAME=VALUE",
        help="schedule parameter, repeatable: step=0.02, floor=0.05, alpha=0.5, alphas=1,0.5,0.1",
    )
    p.add_argument(
        "--num-classes", type=int, help=f"classes incl. background (default {d.num_classes})"
    )
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr:g})")
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"batch size of one process; under torchrun the global batch is processes × this "
        f"(default {d.batch_size})",
    )
    p.add_argument(
        "--lr-patience",
        type=int,
        help=f"halve the lr after this many epochs without improvement (default {d.lr_patience})",
    )
    p.add_argument(
        "--slice-size",
        type=int,
        help=f"resize slices to this size, 0 keeps their size (default {d.slice_size})",
    )
    p.add_argument(
        "--axis",
        type=_plane_or_axis,
        help="slicing plane: auto (axial, or the thick-slice axis of anisotropic scans), "
        "axial, coronal, sagittal, or an axis 0-2 of the canonical order "
        f"(default {d.axis})",
    )
    p.add_argument(
        "--slice-spacing",
        nargs="+",
        metavar="MM",
        help="resample slices to this in-plane spacing: auto (the training cases' median), "
        "native (no resampling), or one or two numbers in mm (default auto)",
    )
    p.add_argument(
        "--normalize",
        choices=("zscore", "minmax"),
        help="intensities per modality: zscore (within the head, clipped at its 0.5/99.5 "
        "percentiles; for real scans) or minmax (the paper's [0, 1]) (default zscore)",
    )
    p.add_argument(
        "--canonical",
        action=argparse.BooleanOptionalAction,
        help="reorient scans to the closest canonical (RAS) order before slicing "
        "(default on; --no-canonical: stored voxel order)",
    )
    p.add_argument(
        "--crop-to-head",
        action=argparse.BooleanOptionalAction,
        help="2D: crop each scan to the head (plus 4 voxels) before slicing: no slices or "
        "borders of air (default on)",
    )
    p.add_argument(
        "--percentiles",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="robust intensity scaling between these percentiles (default min-max)",
    )
    p.add_argument(
        "--distance",
        choices=("3d", "2d"),
        help=f"distance maps of whole volumes or of each slice (default {d.distance})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        help=f"validation fraction of cases (default {d.val_fraction})",
    )
    p.add_argument("--seed", type=int, help=f"seed of initialisation and order (default {d.seed})")
    p.add_argument(
        "--split-seed", type=int, help="seed of the train/validation split (default: --seed)"
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--depth", type=int, help=f"UNet levels (default {d.depth})")
    p.add_argument(
        "--base-channels", type=int, help=f"UNet first-level width (default {d.base_channels})"
    )
    p.add_argument(
        "--num-workers",
        type=int,
        help="DataLoader worker processes (default 0); the same batches for any number",
    )
    p.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        help="2: the paper's 2D slices (default); 3: 3D patches from the memory-mapped cache",
    )
    p.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="3D patch in voxels, numpy axis order (default 96 96 32)",
    )
    p.add_argument(
        "--oversample",
        type=float,
        help="share of 3D patches centred on foreground, 0 = uniform (default 1/3)",
    )
    p.add_argument(
        "--slice-oversample",
        type=float,
        help="2D: share of each epoch's slices drawn from slices with foreground "
        "(default 0: every slice once)",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="augmentation that keeps φ exact (default: on in 3D, off in 2D)",
    )
    p.add_argument("--max-steps-per-epoch", type=int, help="cap on steps per epoch (quick runs)")
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="32 (float32), bf16 (bfloat16 autocast, also on the CPU) or 16-mixed (float16 "
        "autocast + gradient scaling, CUDA/MPS); losses are float32 always (default 32)",
    )
    p.add_argument(
        "--amp", action="store_true", default=None, help="deprecated: same as --precision 16-mixed"
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        default=None,
        help="channels-last memory format (opt-in; may speed up convolutions on a GPU)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="train a torch.compile'd network (opt-in; the first steps compile)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="folder of the cache of prepared cases, read memory-mapped (default: the "
        "per-user cache shared by every run, see the cache command)",
    )
    p.add_argument(
        "--overwrite", action="store_true", default=None, help="allow an --out that holds a run"
    )


PRECISION_CHOICES = ("32", "bf16", "16-mixed")  # core.precision.PRECISIONS (not imported here)

_OPTION_FIELDS = {
    "data": "data",
    "out": "out_dir",
    "epochs": "epochs",
    "loss": "loss",
    "num_classes": "num_classes",
    "lr": "lr",
    "batch_size": "batch_size",
    "lr_patience": "lr_patience",
    "axis": "axis",
    "normalize": "normalize",
    "canonical": "canonical",
    "crop_to_head": "crop_to_head",
    "distance": "distance",
    "val_fraction": "val_fraction",
    "seed": "seed",
    "split_seed": "split_seed",
    "device": "device",
    "depth": "depth",
    "base_channels": "base_channels",
    "num_workers": "num_workers",
    "max_steps_per_epoch": "max_steps_per_epoch",
    "amp": "amp",
    "precision": "precision",
    "channels_last": "channels_last",
    "compile": "compile",
    "cache_dir": "cache_dir",
    "overwrite": "overwrite",
    "dims": "dims",
    "oversample": "oversample",
    "slice_oversample": "slice_oversample",
    "augment": "augment",
}


_FIELD_FLAGS = {
    **{field: "--" + option.replace("_", "-") for option, field in _OPTION_FIELDS.items()},
    "slice_size": "--slice-size",
    "slice_spacing": "--slice-spacing",
    "percentiles": "--percentiles",
    "schedule": "--schedule/--schedule-param",
    "init_checkpoint": "--init-checkpoint",
    "resume_from": "--resume",
    "patch_size": "--patch-size",
}
_PATH_FIELDS = ("data", "out_dir", "init_checkpoint", "resume_from", "cache_dir")


def _read_json_config(value: Path) -> tuple[dict, str]:
    """The dict of ``--config`` (a JSON file, or inline JSON text starting with ``{``)."""
    import json

    text = str(value)
    where = "--config"
    if not text.lstrip().startswith("{"):
        if not value.is_file():
            raise FileNotFoundError(f"no such config file: {value}")
        where = f"--config {value}"
        try:
            text = value.read_text()
        except OSError as err:
            raise CommandError(f"{where}: {err.strerror or err}") from err
    try:
        loaded = json.loads(text)
    except ValueError as err:
        raise CommandError(f"{where}: not a JSON config: {err}") from err
    if not isinstance(loaded, dict):
        raise CommandError(f"{where}: a JSON object of TrainConfig fields is needed")
    return loaded, where


def _check_field_types(values: dict, sources: dict[str, str]) -> None:
    """Type of each config value against the TrainConfig field (a string is not a number)."""
    import dataclasses

    from napari_boundary_seg.core.train import TrainConfig

    kinds = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    for name, value in values.items():
        kind = kinds.get(name)
        if kind is None or (value is None and "None" in kind):
            continue
        base = kind.replace(" | None", "")
        ok = True
        if base == "bool":
            ok = isinstance(value, bool)
        elif base == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif base == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif base == "str":
            ok = isinstance(value, str)
        if not ok:
            raise TypeError(
                f"{_field_name(name, sources)} must be {base}, got {value!r} "
                f"({type(value).__name__})"
            )


def _field_name(name: str, sources: dict[str, str]) -> str:
    """A TrainConfig field as the user gave it: the flag, or the key in --config."""
    source = sources.get(name, "")
    if source.startswith("--config"):
        return f'"{name}" in {source}'
    if source == "flag":
        return _FIELD_FLAGS.get(name, name)
    if source:
        return f'"{name}" of {source}'
    return _FIELD_FLAGS.get(name, name)


def _flag_message(text: str, sources: dict[str, str]) -> str:
    import re

    return re.sub(r"TrainConfig\.(\w+)", lambda m: _field_name(m.group(1), sources), text)


def config_from_args(args: argparse.Namespace, base: dict | None = None, base_source: str = ""):
    """A TrainConfig from ``base`` (a config dict) updated with the given options.

    A value that the config refuses is reported under the flag the user typed
    (``--epochs``) or the key of the ``--config`` file it came from.
    """
    from napari_boundary_seg.core.train import TrainConfig

    values: dict[str, Any] = dict(base or {})
    sources = dict.fromkeys(values, base_source)
    if getattr(args, "config", None) is not None:
        loaded, where = _read_json_config(args.config)
        values.update(loaded)
        sources.update(dict.fromkeys(loaded, where))
    for option, name in _OPTION_FIELDS.items():
        value = getattr(args, option, None)
        if value is not None:
            values[name] = str(value) if isinstance(value, Path) else value
            sources[name] = "flag"
    if getattr(args, "precision", None) is not None and not getattr(args, "amp", None):
        values["amp"] = False  # an explicit --precision replaces the old amp flag of a base config
    if getattr(args, "slice_size", None) is not None:
        values["slice_size"] = args.slice_size or None
        sources["slice_size"] = "flag"
    if getattr(args, "slice_spacing", None) is not None:
        values["slice_spacing"] = _slice_spacing_value(args.slice_spacing)
        sources["slice_spacing"] = "flag"
    if getattr(args, "percentiles", None) is not None:
        values["percentiles"] = tuple(args.percentiles)
        sources["percentiles"] = "flag"
    if getattr(args, "patch_size", None) is not None:
        values["patch_size"] = tuple(args.patch_size)
        sources["patch_size"] = "flag"
    schedule = _schedule_from_args(
        getattr(args, "schedule", None), getattr(args, "schedule_param", None)
    )
    if schedule is not None:
        values["schedule"] = schedule
        sources["schedule"] = "flag"
    unknown = sorted(set(values) - set(_config_fields()))
    if unknown:
        where = next((sources[k] for k in unknown if sources.get(k)), "the config")
        raise CommandError(f"{where}: unknown keys {unknown}")
    try:
        _check_field_types(values, sources)
        config = TrainConfig.from_dict(values)
    except (ValueError, TypeError) as err:
        raise CommandError(_flag_message(_error_message(err), sources)) from err
    if config.epochs < 1:
        raise CommandError(
            f"{_field_name('epochs', sources)} must be an integer >= 1, got {config.epochs}"
        )
    return config


def _slice_spacing_value(words: list[str]) -> Any:
    """``--slice-spacing``: ``auto``, ``native`` (None), or one or two numbers (mm)."""
    if len(words) == 1 and words[0] in ("auto", "native"):
        return "auto" if words[0] == "auto" else None
    try:
        numbers = [float(w) for w in words]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise CommandError(
            f"--slice-spacing takes auto, native, or one or two numbers in mm, got {' '.join(words)}"
        )
    return numbers * 2 if len(numbers) == 1 else numbers


def _plane_or_axis(text: str) -> str | int:
    """``--axis``: a plane name or an axis number."""
    from napari_boundary_seg.core.orientation import SLICE_PLANES

    if text in SLICE_PLANES:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one of {', '.join(SLICE_PLANES)} or an axis 0, 1, 2"
        ) from None


def _config_fields() -> list[str]:
    import dataclasses

    from napari_boundary_seg.core.train import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


@subcommand
def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a UNet with GDL + boundary loss (--preset quick on a CPU, paper on a GPU)",
        usage="%(prog)s (--data DIR --out DIR | --resume RUN/last.pt | --config FILE) "
        "[--preset {quick,paper}] [options]",
        description="Train on a data set folder. Starts from a preset (quick: the CPU-sized "
        "Quick start; paper: the paper's GPU-sized setup; the first line of output says "
        "which) that the other options change. Writes best.pt (best validation DSC), "
        "last.pt, metrics.csv and config.json to --out; prepared cases go to the per-user "
        "cache. Ctrl-C stops cleanly at the next step and saves last.pt; continue with "
        "--resume OUT/last.pt.",
    )
    add_train_options(p)
    _add_threads_option(p)
    p.add_argument(
        "--resume",
        type=Path,
        help="continue the run saved in this checkpoint (its config; --epochs may extend it)",
    )
    p.add_argument(
        "--init-checkpoint",
        type=Path,
        help="fine-tune: start from this checkpoint's weights with the new data and schedule",
    )
    p.add_argument(
        "--folds",
        type=_folds_value,
        metavar="K",
        help="cross-validation by patient: K folds, or loo (leave one patient out); each "
        "fold trains in OUT/fold_N, writes its test patients' predictions to "
        "OUT/fold_N/test/ and their figures to OUT/folds.csv; a finished fold is skipped "
        "when the command is run again",
    )
    p.set_defaults(func=_cmd_train)


def _folds_value(text: str) -> int | str:
    from napari_boundary_seg.core.folds import LEAVE_ONE_OUT

    if text == LEAVE_ONE_OUT:
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 2 or {LEAVE_ONE_OUT}")
    return value


def run_training(config, cases=None, desc: str = "train", quiet: bool = False, **kwargs) -> int:
    """Drive :func:`~napari_boundary_seg.core.train.train` with tqdm bars; Ctrl-C
    requests a clean stop. Returns the exit code (1 when a non-finite loss stopped it).
    ``quiet`` shows nothing (the ranks other than 0 of a torchrun run).
    Used by ``train``; ``finetune`` drives its own generator (other events)."""
    from tqdm.auto import tqdm

    from napari_boundary_seg.core.progress import Progress
    from napari_boundary_seg.core.train import (
        DoneEvent,
        EpochEvent,
        InfoEvent,
        StepEvent,
        TrainControl,
        train,
    )

    control = TrainControl()
    previous = _stop_on_sigint(control)
    bar = None
    done: DoneEvent | None = None
    try:
        for event in train(config, cases, control, **kwargs):
            if quiet and not isinstance(event, DoneEvent):
                continue
            if isinstance(event, InfoEvent):
                tqdm.write(f"{desc}: {event.message}")
            elif isinstance(event, Progress):
                pass
            elif isinstance(event, StepEvent):
                if bar is None:  # epochs counted from 1, as in every message
                    desc_epoch = f"epoch {event.epoch + 1}/{config.epochs}"
                    bar = _progress(event.steps_per_epoch, desc_epoch, "step", False)
                    bar.n = event.step
                bar.update(1)
                bar.set_postfix(
                    loss=f"{event.loss:.4f}", alpha=f"{event.w_region:.2f}", refresh=False
                )
            elif isinstance(event, EpochEvent):
                if bar is not None:
                    bar.close()
                    bar = None
                tqdm.write(
                    f"epoch {event.epoch + 1}/{config.epochs}: loss {event.train_loss:.4f} "
                    f"(region {event.region:.4f}, "
                    f"boundary {event.boundary:.4f}, alpha {event.w_region:.2f}), lr {event.lr:g}, "
                    f"val DSC {event.val_dice:.4f}, HD {event.val_hd:.2f} mm, "
                    f"HD95 {event.val_hd95:.2f} mm{' *best*' if event.is_best else ''}"
                )
            elif isinstance(event, DoneEvent):
                done = event
    finally:
        if bar is not None:
            bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if done is None:  # pragma: no cover - train always ends with a DoneEvent
        raise CommandError("training ended without a result")
    if quiet:
        return 1 if "non-finite" in done.reason else 0
    _out(f"{desc}: {done.reason}")
    if done.best_checkpoint:
        _out(f"best checkpoint: {done.best_checkpoint}")
    if done.last_checkpoint:
        _out(f"last checkpoint: {done.last_checkpoint}")
    if config.cache_dir is not None:
        from napari_boundary_seg.core.cache import cache_info

        _out(
            f"cache: {cache_info(config.cache_dir).describe()} (shared by runs on the same "
            f"data and settings; {PROG} cache --clear empties it)"
        )
    if control.stop_requested and done.stopped and "non-finite" not in done.reason:
        if done.last_checkpoint:
            raise Interrupted(
                f"interrupted: {done.reason}; {done.last_checkpoint} is kept; continue with "
                f"{PROG} train --resume {done.last_checkpoint}"
            )
        raise Interrupted(f"interrupted: {done.reason}; no checkpoint was written")
    return 1 if "non-finite" in done.reason else 0


def _stop_on_sigint(control: Any) -> Any:
    """Ctrl-C asks ``control`` to stop at the next step (the checkpoint is saved); a
    second Ctrl-C interrupts at once. Returns the previous handler (None off the main
    thread)."""

    def handler(signum: int, frame: Any) -> None:
        if control.stop_requested:
            raise KeyboardInterrupt
        print(
            f"\n{PROG}: stopping at the next step and saving the checkpoint "
            "(Ctrl-C again to abort at once)",
            file=sys.stderr,
        )
        control.stop()

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        return None


_RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "config.json")


def _preset_line(args: argparse.Namespace) -> tuple[str, str]:
    """The preset of a new run (``--preset``, else paper with a CUDA GPU and quick
    without) and the first line of output that says it."""
    from napari_boundary_seg.core.device import resolve_device
    from napari_boundary_seg.core.presets import PRESETS

    if args.preset is not None:
        name, why = args.preset, "--preset"
    else:
        device = args.device or "auto"
        try:
            gpu = resolve_device(device).type == "cuda"
        except ValueError as err:
            raise CommandError(f"--device: {_error_message(err)}") from err
        name = "paper" if gpu else "quick"
        why = "a CUDA GPU is used" if gpu else "no CUDA GPU found"
        why += (
            "; --preset quick for the CPU-sized run"
            if gpu
            else ("; --preset paper for the paper's GPU-sized run")
        )
    return name, f"train: preset {name} ({why}): {PRESETS[name].split(': ', 1)[1]}"


_FLAG_WORDS = (
    "out_dir", "patch_size", "slice_size", "batch_size", "base_channels", "init_checkpoint",
    "resume_from", "cache_dir", "num_workers", "max_steps_per_epoch", "val_fraction",
    "num_classes", "lr_patience",
)  # fmt: skip
"""TrainConfig fields that ``train``'s messages name, rewritten as their flags."""
_FINETUNE_FLAGS = {"out_dir": "--out", "mix_ratio": "--mix-ratio", "mix_cases": "--mix-data"}


def _as_typed(message: str, flags: dict[str, str] | None = None) -> str:
    """A library message with the names of its arguments as the flags the user types
    (``patch_size`` -> ``--patch-size``); ``flags``: the names and flags of the
    command (default: ``train``'s)."""
    message = _error_message(ValueError(message))
    message = message.replace("allow overwrite", "pass --overwrite")
    message = message.replace("TrainConfig.", "")
    if flags is None:
        flags = {m: _FIELD_FLAGS[m] for m in _FLAG_WORDS if m in _FIELD_FLAGS}
    if not flags:
        return message
    words = re.compile(r"\b(" + "|".join(map(re.escape, flags)) + r")\b")
    return words.sub(lambda m: flags[m.group(1)], message)


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except (ValueError, TypeError) as err:  # named as the flags typed, not config fields
        raise CommandError(_as_typed(str(err))) from err


def _train(args: argparse.Namespace) -> int:
    from napari_boundary_seg.core.cache import default_cache_dir, is_user_cache_dir
    from napari_boundary_seg.core.io import check_not_input, ensure_writable_dir
    from napari_boundary_seg.core.presets import preset_config
    from napari_boundary_seg.core.validate import check_unet_fits, check_unet_size

    base, base_source = None, ""
    if args.resume is None:
        name, line = _preset_line(args)
        if _is_writer():
            _out(line)
        base, base_source = preset_config(name).to_dict(), f"--preset {name}"
    else:
        if args.preset is not None:
            raise CommandError("--preset starts a new run; --resume continues with its own values")
        from napari_boundary_seg.core.checkpoint import checkpoint_config, read_checkpoint

        if _is_writer():
            _out(f"train: resuming {args.resume} with its own settings")
        base = checkpoint_config(read_checkpoint(args.resume))
        base["resume_from"] = str(args.resume)
        base["init_checkpoint"] = None
        base_source = f"--resume {args.resume}"
        if args.out is None:
            base["out_dir"] = str(args.resume.parent)
    config = config_from_args(args, base, base_source)
    if args.init_checkpoint is not None:
        if not args.init_checkpoint.is_file():
            raise FileNotFoundError(f"no such checkpoint: {args.init_checkpoint}")
        config = config.replace(init_checkpoint=str(args.init_checkpoint))
    if config.data is None:
        raise CommandError("train needs --data DIR (or --resume of a run that has one)")
    folds = getattr(args, "folds", None)
    if folds is not None and (args.resume is not None or args.init_checkpoint is not None):
        raise CommandError("--folds trains from scratch: it takes no --resume or --init-checkpoint")
    if config.out_dir is None:
        raise CommandError("train needs --out DIR for its checkpoints")
    if not Path(config.data).is_dir():
        raise FileNotFoundError(f"no such data folder: {config.data}")
    if config.init_checkpoint is None:  # a checkpoint brings its own network
        check_unet_size(
            config.depth,
            config.base_channels,
            names=("--depth", "--base-channels"),
            spatial_dims=config.dims,
        )
        if config.slice_size and config.dims == 2:
            check_unet_fits(config.depth, config.slice_size, "--depth")
    _check_device(config.device)  # before any folder is made
    _set_threads(args, "train")
    if args.cache_dir is None and (config.cache_dir is None or is_user_cache_dir(config.cache_dir)):
        config = config.replace(cache_dir=str(default_cache_dir()))  # this user's, this machine's
    out = Path(config.out_dir)
    inputs = [Path(p) for p in (config.init_checkpoint, args.config) if p is not None]
    check_not_input([out / name for name in _RUN_FILES], inputs, "--out")
    if folds is not None:
        return _train_folds(config, folds)
    from napari_boundary_seg.core import distributed

    with _NewFolders(out, Path(config.cache_dir)):
        ensure_writable_dir(out)
        # started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK set): one process of a DDP run
        with distributed.init_from_env(config.device) as context:
            return run_training(config, quiet=not context.is_writer)


FOLD_COLUMNS = ("fold", "case", "dice", "hd95", "lesion_recall", "lesion_f1", "checkpoint")


def _train_folds(config: Any, folds: int | str) -> int:
    """``train --folds``: one run per fold, its test patients predicted and scored."""
    import csv
    import math

    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.data import find_cases, iter_check_cases, load_case
    from napari_boundary_seg.core.folds import fold_splits
    from napari_boundary_seg.core.io import (
        atomic_path,
        ensure_writable_dir,
        write_nifti,
        write_text_atomic,
    )
    from napari_boundary_seg.core.metrics import case_metrics
    from napari_boundary_seg.core.predict import iter_predict_volume

    files = find_cases(config.data)
    if not files:
        raise CommandError(f"no cases found in {config.data}")
    splits = fold_splits(files, folds, seed=config.effective_split_seed)  # refuses too few
    # every case is checked before the first fold writes anything
    _drive(iter_check_cases(files, config.num_classes, config.canonical), "check", "case")
    out = Path(config.out_dir)
    ensure_writable_dir(out)
    cache = config.cache_dir or str(out / "cache")  # the folds share one cache
    rows: list[dict[str, Any]] = []
    for index, (train_files, test_files) in enumerate(splits, start=1):
        fold_dir = out / f"fold_{index}"
        test_dir = fold_dir / "test"
        done_file = fold_dir / "test_metrics.csv"
        desc = f"fold {index}/{len(splits)}"
        if done_file.is_file():
            with open(done_file, newline="") as f:
                rows.extend(csv.DictReader(f))
            _out(f"{desc}: done before, kept ({done_file})")
            continue
        names = ", ".join(c.case_id for c in test_files)
        _out(f"{desc}: training on {len(train_files)} patient(s), testing on {names}")
        fold_config = config.replace(out_dir=str(fold_dir), cache_dir=cache, overwrite=True)
        code = run_training(fold_config, train_files, desc=desc)
        if code != 0:
            return code
        best, last = fold_dir / "best.pt", fold_dir / "last.pt"
        chosen = best if best.is_file() and config.val_fraction > 0 else last
        model_and_checkpoint = load_checkpoint(chosen)
        ensure_writable_dir(test_dir)
        fold_rows = []
        for files_ in test_files:
            case = load_case(files_)
            _, pred = _drive(
                iter_predict_volume(
                    model_and_checkpoint, case.images, case.spacing, affine=case.affine
                ),
                f"{desc} predict {case.case_id}",
                "batch",
            )
            write_nifti(
                test_dir / f"{case.case_id}.nii.gz",
                pred.astype(np.uint8 if pred.max() < 256 else np.int64),
                affine=case.affine,
                overwrite=True,
            )
            m = case_metrics(pred, case.labels, case.spacing)
            fold_rows.append(
                {
                    "fold": index,
                    "case": case.case_id,
                    **{k: m[k] for k in ("dice", "hd95", "lesion_recall", "lesion_f1")},
                    "checkpoint": chosen.name,
                }
            )
            _out(
                f"{desc}: {case.case_id}: DSC {m['dice']:.3f}, HD95 {m['hd95']:.1f} mm, "
                f"lesion recall {m['lesion_recall']:.2f}, F1 {m['lesion_f1']:.2f}"
            )
        with atomic_path(done_file) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, FOLD_COLUMNS)
            writer.writeheader()
            writer.writerows(fold_rows)
        rows.extend(fold_rows)
    lines = [",".join(FOLD_COLUMNS)]
    lines += [",".join(str(r[c]) for c in FOLD_COLUMNS) for r in rows]
    write_text_atomic(out / "folds.csv", "\n".join(lines) + "\n")

    def mean(key: str) -> float:
        values = [float(r[key]) for r in rows if not math.isnan(float(r[key]))]
        return float(np.mean(values)) if values else float("nan")

    _out(
        f"{len(rows)} test case(s) over {len(splits)} folds: mean DSC {mean('dice'):.3f}, "
        f"HD95 {mean('hd95'):.1f} mm, lesion recall {mean('lesion_recall'):.2f}, "
        f"F1 {mean('lesion_f1'):.2f} ({out / 'folds.csv'})"
    )
    return 0


# ---------------------------------------------------------------------------
# predict


def _group_inputs(paths: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    """Group NIfTI files into cases: ``<case>_<XXXX>`` names are modalities of one case."""
    import re

    from napari_boundary_seg.core.io import is_hidden_or_temp, is_nifti_path, nifti_stem

    def nifti_files(folder: Path) -> list[Path]:  # hidden and temporary files are no cases
        return sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and is_nifti_path(p) and not is_hidden_or_temp(p)
        )

    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            folder = path
            for sub in ("imagesTs", "imagesTr"):
                if not nifti_files(folder) and (folder / sub).is_dir():
                    folder = folder / sub
                    break
            found = nifti_files(folder)
            if not found:
                raise CommandError(f"{path}: no .nii/.nii.gz files")
            files.extend(found)
        elif is_nifti_path(path):
            files.append(path)
        else:
            raise CommandError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
    groups: dict[str, dict[int, Path]] = {}
    for path in files:
        stem = nifti_stem(path)
        match = re.fullmatch(r"(.+)_(\d{4})", stem)
        case, mod = (match.group(1), int(match.group(2))) if match else (stem, 0)
        if mod in groups.setdefault(case, {}):
            raise CommandError(f"{path}: a second file for modality {mod} of case {case}")
        groups[case][mod] = path
    out = []
    for case, mods in groups.items():
        if sorted(mods) != list(range(len(mods))):
            raise CommandError(
                f"case {case}: modality files {sorted(mods)} are not 0..{len(mods) - 1}"
            )
        out.append((case, [mods[m] for m in range(len(mods))]))
    return out


@subcommand
def _add_predict(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="segment NIfTI images with a trained checkpoint",
        description="Segment NIfTI files (or folders of them) as the checkpoint was trained: "
        "slice by slice (2D) or by overlapping Gaussian-weighted windows (3D). Files named "
        "<case>_0000.nii.gz, <case>_0001.nii.gz ... are the modalities of one case. Writes "
        "<out>/<case>.nii.gz labels with the input's affine.",
    )
    p.add_argument("inputs", type=Path, nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", required=True, type=Path, help="best.pt or last.pt of a run")
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <case>_probs.nii.gz (float, one channel per class on the last axis)",
    )
    p.add_argument(
        "--modalities",
        nargs="+",
        metavar="NAME",
        help="names of each case's modality files in file order (_0000 first); the model's "
        "modalities are then picked by name (default: the folder's dataset.json, else by "
        "position)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    _add_threads_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_affine_option(p, "modalities")
    p.set_defaults(func=_cmd_predict)


def _read_case(
    case: str,
    paths: Sequence[Path],
    in_channels: int,
    checkpoint: Path,
    allow_affine: bool,
    check_affines: bool = True,
) -> list[Any]:
    """Read and check the modality files of one case (count, finite values, shapes,
    dimensions and, with ``check_affines``, affines); returns the volumes."""
    from napari_boundary_seg.core.io import check_finite, read_nifti

    volumes = [read_nifti(p, as_labels=False) for p in paths]
    ref = volumes[0]
    if ref.data.ndim not in (2, 3):
        raise CommandError(f"{paths[0]}: expected a 2D or 3D image, got shape {ref.data.shape}")
    for path, vol in zip(paths, volumes, strict=True):
        check_finite(vol.data, path)
    for path, vol in zip(paths[1:], volumes[1:], strict=True):
        if vol.data.shape != ref.data.shape:
            raise CommandError(
                f"case {case}: {path} has shape {vol.data.shape}, {paths[0]} {ref.data.shape}"
            )
        if check_affines:
            _check_affine(paths[0], ref, path, vol, allow_affine, case)
    if len(paths) != in_channels:
        raise CommandError(
            f"case {case}: {len(paths)} modality file(s) ({paths[0].name} ...) but "
            f"{checkpoint} takes {in_channels}"
        )
    return volumes


def _input_channel_names(inputs: Sequence[Path], count: int) -> list[str] | None:
    """The modality names of a data folder's ``dataset.json`` (nnU-Net's
    ``channel_names``), when the inputs are one folder that has one."""
    from napari_boundary_seg.core.data import _generic_modality_names

    if len(inputs) != 1 or not inputs[0].is_dir():
        return None
    for folder in (inputs[0], inputs[0].parent):
        if (folder / "dataset.json").is_file():
            names = list(_generic_modality_names(folder, count))
            return None if names == [f"{i:04d}" for i in range(count)] else names
    return None


def _match_modalities(
    cases: list[tuple[str, list[Path]]],
    checkpoint: Mapping[str, Any],
    given: Sequence[str] | None,
    inputs: Sequence[Path],
) -> list[tuple[str, list[Path]]]:
    """Each case's modality files in the order the model takes them, matched by
    name (``--modalities`` or the folder's dataset.json) when names are known."""
    from napari_boundary_seg.core.predict import select_modalities

    trained = [str(m) for m in checkpoint.get("modalities") or []]
    if not cases:
        return cases
    count = len(cases[0][1])
    names = list(given) if given else _input_channel_names(inputs, count)
    if not names or not trained:
        return cases
    if all(name.isdigit() for name in trained):  # a model that never knew its names
        return cases
    order = select_modalities(trained, names)
    if order is None:
        raise CommandError(
            f"the model takes the modalities {', '.join(trained)}; the inputs are "
            f"{', '.join(names)} (give their names in file order with --modalities)"
        )
    out = []
    for case, paths in cases:
        if len(paths) != len(names):
            raise CommandError(
                f"case {case}: {len(paths)} modality file(s) but {len(names)} names "
                f"({', '.join(names)})"
            )
        out.append((case, [paths[i] for i in order]))
    if order != list(range(len(names))):
        _out(
            "modalities matched by name: " + ", ".join(f"{names[i]} (file _{i:04d})" for i in order)
        )
    return out


def _cmd_predict(args: argparse.Namespace) -> int:
    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.io import (
        check_not_input,
        ensure_writable_dir,
        fit_name,
    )

    _check(args.batch_size, "--batch-size", 1)
    _check_device(args.device)
    model, checkpoint = load_checkpoint(args.checkpoint)
    cases = _match_modalities(_group_inputs(args.inputs), checkpoint, args.modalities, args.inputs)
    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out} is a file, not a folder")
    folder = args.out if args.out.is_dir() else None
    targets = {case: args.out / fit_name(case, ".nii.gz", folder) for case, _ in cases}
    prob_targets = {case: args.out / fit_name(case, "_probs.nii.gz", folder) for case, _ in cases}
    outputs = [*targets.values(), *(prob_targets.values() if args.probabilities else [])]
    inputs = [args.checkpoint, *(p for _, paths in cases for p in paths)]
    check_not_input(outputs, inputs, "--out")
    if len(set(outputs)) != len(outputs):
        raise CommandError(f"two cases would write the same file in {args.out}")
    if not args.overwrite:
        for path in outputs:
            if path.exists():
                raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    # every case is checked before anything is written
    checked = None
    for case, paths in cases:
        checked = _read_case(
            case, paths, model.in_channels, args.checkpoint, args.allow_affine_mismatch
        )
    _set_threads(args, "predict")
    with _NewFolders(args.out):
        ensure_writable_dir(args.out)
        _predict_cases(args, cases, checked, model, checkpoint, targets, prob_targets)
    return 0


def _predict_cases(args, cases, checked, model, checkpoint, targets, prob_targets) -> None:
    from napari_boundary_seg.core.io import write_nifti
    from napari_boundary_seg.core.predict import iter_predict_volume

    for case, paths in cases:
        if len(cases) == 1 and checked is not None:
            volumes = checked
        else:  # checked above: read again, case by case (memory stays that of one case)
            volumes = _read_case(case, paths, model.in_channels, args.checkpoint, True, False)
        ref = volumes[0]
        images = np.stack([v.data for v in volumes])
        probs, labels = _drive(
            iter_predict_volume(
                (model, checkpoint),
                images,
                ref.spacing[: ref.data.ndim],
                batch_size=args.batch_size,
                device=args.device,
                affine=ref.affine,
            ),
            f"predict {case}",
            "batch",
        )
        write_nifti(
            targets[case], labels.astype(np.int64), affine=ref.affine, overwrite=args.overwrite
        )
        if args.probabilities:
            write_nifti(
                prob_targets[case],
                np.moveaxis(probs, 0, -1),
                affine=ref.affine,
                overwrite=args.overwrite,
                as_labels=False,
            )
        _out(f"{case}: wrote {targets[case]} ({int((labels > 0).sum())} foreground voxels)")


# ---------------------------------------------------------------------------
# evaluate


@subcommand
def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare a folder of predictions with a folder of labels (DSC, HD, HD95, ASSD ...)",
        description="Match <case>.nii.gz files of --pred and --labels by name, compute every "
        "case metric in 3D with the labels' voxel spacing (mm), write a CSV with one row per "
        "case plus mean and std rows, and print a table. In the mean and std rows an "
        "infinite distance (one mask empty) counts as the image diagonal. Every labelled "
        "case needs a prediction, unless --subset scores only the cases predicted (a "
        "held-out subset of a labelled folder).",
    )
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label files")
    p.add_argument("--labels", required=True, type=Path, help="folder of reference label files")
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")
    p.add_argument(
        "--label",
        type=int,
        default=None,
        help="evaluate this class only (default: every nonzero label is foreground)",
    )
    p.add_argument(
        "--subset",
        action="store_true",
        help="score only the labelled cases that have a prediction (the others are counted "
        "and named, not scored)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    _add_affine_option(p, "a prediction and a reference")
    p.set_defaults(func=_cmd_evaluate)


def _label_files(folder: Path) -> dict[str, Path]:
    from napari_boundary_seg.core.io import is_hidden_or_temp, is_nifti_path, nifti_stem

    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    files = {
        nifti_stem(p): p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and is_nifti_path(p)
        and not is_hidden_or_temp(p)  # hidden and temporary files are no cases
        and not nifti_stem(p).endswith("_probs")
    }
    if not files:
        raise CommandError(f"{folder}: no .nii/.nii.gz files")
    return files


def _read_labels(path: Path) -> Any:
    from napari_boundary_seg.core.io import read_nifti

    volume = read_nifti(path, as_labels=True)
    if volume.data.size and volume.data.min() < 0:
        raise CommandError(f"{path}: negative label values ({volume.data.min()})")
    return volume


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_boundary_seg.core.io import atomic_path
    from napari_boundary_seg.core.metrics import CASE_METRIC_COLUMNS, case_metrics, replace_inf

    _check(args.label, "--label", 1)
    preds, refs = _label_files(args.pred), _label_files(args.labels)
    _check_output_file(args.out, args.overwrite, [*preds.values(), *refs.values()], "--out")
    missing = sorted(set(refs) - set(preds))
    extra = sorted(set(preds) - set(refs))
    if missing and not args.subset:
        raise CommandError(
            f"{args.pred}: {len(missing)} of {len(refs)} labelled cases have no prediction: "
            f"{', '.join(missing)}; pass --subset to score only the "
            f"{len(refs) - len(missing)} predicted"
        )
    if extra:
        print(
            f"{PROG}: warning: {len(extra)} prediction(s) without labels in {args.labels}, "
            f"not scored: {', '.join(extra)}",
            file=sys.stderr,
        )
    if missing:
        refs = {case: path for case, path in refs.items() if case in preds}
        if not refs:
            raise CommandError(f"{args.pred}: no prediction matches a case of {args.labels}")
        _out(
            f"evaluate: scoring {len(refs)} predicted case(s) of {len(refs) + len(missing)} "
            f"labelled; {len(missing)} without a prediction: {', '.join(missing)}"
        )
    rows: list[dict[str, Any]] = []
    finite_rows: list[dict[str, float]] = []
    distance_keys = ("hd", "hd95", "assd")
    bar = _progress(len(refs), "evaluate", "case")
    try:
        for case, ref_path in refs.items():
            ref = _read_labels(ref_path)
            pred = _read_labels(preds[case])
            if pred.data.shape != ref.data.shape:
                raise CommandError(
                    f"{preds[case]} has shape {pred.data.shape} but {ref_path} has {ref.data.shape}"
                )
            _check_affine(ref_path, ref, preds[case], pred, args.allow_affine_mismatch, case)
            spacing = ref.spacing[: ref.data.ndim]
            figures = case_metrics(pred.data, ref.data, spacing, label=args.label)
            rows.append({"case": case, **figures})
            finite = dict(figures)
            for key in distance_keys:
                finite[key] = replace_inf(figures[key], ref.data.shape, spacing)
            finite_rows.append(finite)
            bar.update(1)
    finally:
        bar.close()
    columns = ["case", *CASE_METRIC_COLUMNS]
    summary = {}
    for stat, func in (("mean", np.nanmean), ("std", np.nanstd)):
        row: dict[str, Any] = {"case": stat}
        for key in CASE_METRIC_COLUMNS:
            values = np.array([r.get(key, math.nan) for r in finite_rows], dtype=np.float64)
            row[key] = float(func(values)) if np.any(~np.isnan(values)) else math.nan
        summary[stat] = row
    with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in [*rows, summary["mean"], summary["std"]]:
            writer.writerow(row)
    shown = ("dice", "hd", "hd95", "assd")
    width = max(len(r["case"]) for r in [*rows, summary["mean"]])
    _out(f"{'case':<{width}}  " + "  ".join(f"{k:>9}" for k in shown))
    for row in [*rows, summary["mean"], summary["std"]]:
        _out(f"{row['case']:<{width}}  " + "  ".join(f"{row[k]:>9.4g}" for k in shown))
    _out(f"wrote {args.out} ({len(rows)} cases, distances in mm)")
    return 0


# ---------------------------------------------------------------------------
# cache


@subcommand
def _add_cache(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="show the size of the per-user cache of prepared cases, or empty it",
        description="train prepares every case once (scaled intensities, labels, distance "
        "maps) into one cache per user, shared by every run on the same data and settings "
        "(entries are keyed by a content hash of the files and settings). Without an option, "
        "or with --info, print its folder and size; --clear removes its entries (nothing "
        "else in the folder). The folder is $NAPARI_BOUNDARY_SEG_CACHE/cases when that is "
        "set, else the platform's user cache folder (~/.cache/napari-boundary-seg/cases on "
        "Linux).",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--info", action="store_true", help="print the folder and its size")
    what.add_argument("--clear", action="store_true", help="remove every prepared case")
    p.add_argument(
        "--cache-dir", type=Path, help="another cache folder (as given to train --cache-dir)"
    )
    p.set_defaults(func=_cmd_cache)


def _cmd_cache(args: argparse.Namespace) -> int:
    from napari_boundary_seg.core.cache import cache_info, clear_cache, format_size

    if args.cache_dir is not None and not args.cache_dir.is_dir():
        raise FileNotFoundError(f"no such cache folder: {args.cache_dir}")
    if args.clear:
        removed = clear_cache(args.cache_dir)
        _out(
            f"cache: removed {removed.entries} prepared case(s), {format_size(removed.bytes)}, "
            f"from {removed.path}"
        )
        return 0
    _out(f"cache: {cache_info(args.cache_dir).describe()}")
    return 0


# ---------------------------------------------------------------------------
# bench


@subcommand
def _add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: ratios against a baseline measured in the same run",
        description="Run a benchmark and print its times and ratios.",
    )
    bench_sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    d = bench_sub.add_parser(
        "distance",
        help="signed distance maps against plain scipy",
        description="Time core.distance against plain scipy on a 3D mask and on 2D slices.",
    )
    d.add_argument("--repeats", type=int, default=3, help="repeats, best time kept (default 3)")
    d.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0)")
    d.set_defaults(func=_cmd_bench_distance)
    t = bench_sub.add_parser(
        "train",
        help="the engine's training step against a bare model step",
        description="Time the trainer's full step (batch from the cached data set, "
        "GDL + boundary loss, backward, Adam) against a bare step of the same network on "
        "ready-made tensors with cross-entropy, interleaved, and report the share of the "
        "step spent in the boundary loss. Bar: engine / bare <= 1.15.",
    )
    t.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    t.add_argument("--size", type=int, default=128, help="slice size (default 128)")
    t.add_argument("--repeats", type=int, default=10, help="timed repeats, medians (default 10)")
    t.add_argument("--warmup", type=int, default=2, help="untimed warm-up repeats (default 2)")
    t.add_argument("--depth", type=int, default=4, help="UNet levels (default 4)")
    t.add_argument("--base-channels", type=int, default=64, help="UNet width (default 64)")
    t.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    t.set_defaults(func=_cmd_bench_train)
    m = bench_sub.add_parser(
        "metrics",
        help="case evaluation (surface, volume, lesion figures) against plain scipy",
        description="Time core.metrics.case_metrics against a plain scipy evaluation "
        "(erosion surfaces, full-volume EDTs, ndimage.label) on a 160x192x160 case, and "
        "the connected-component labelling against scipy.ndimage.label.",
    )
    m.add_argument("--repeats", type=int, default=3, help="repeats, best time kept (default 3)")
    m.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0)")
    m.set_defaults(func=_cmd_bench_metrics)
    b = bench_sub.add_parser(
        "data",
        help="training memory vs number of cases, loader throughput, cost of φ recomputation",
        description="Peak resident memory of a 3D training process (a fresh process per "
        "setting) for --small and --large synthetic cases (bar: large / small <= 1.3); "
        "batches per second of augmented patches with 0, 1 and 2 DataLoader workers; the "
        "seconds spent recomputing φ per warped sample as a share of a training step at "
        "batch 8 x 128² (2D) and 2 x 96x96x32 (3D). The flags shrink it for a quick check.",
    )
    b.add_argument("--small", type=int, default=8, help="cases of the small run (default 8)")
    b.add_argument("--large", type=int, default=64, help="cases of the large run (default 64)")
    b.add_argument(
        "--shape", type=int, nargs=3, default=(48, 56, 48), help="case shape (default 48 56 48)"
    )
    b.add_argument("--spacing", type=float, default=4.0, help="voxel size in mm (default 4)")
    b.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        default=(32, 32, 16),
        help="patch of the memory and loader runs (default 32 32 16)",
    )
    b.add_argument("--steps", type=int, default=3, help="training steps per run (default 3)")
    b.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        default=3,
        help="memory of 3D patch training (default) or of 2D slice training",
    )
    b.add_argument("--loader-batches", type=int, default=8, help="batches timed (default 8)")
    b.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=(0, 1, 2),
        help="worker counts (default 0 1 2; none: no loader figures)",
    )
    b.add_argument("--batch-2d", type=int, default=8, help="2D step batch (default 8)")
    b.add_argument("--size-2d", type=int, default=128, help="2D step slice size (default 128)")
    b.add_argument("--batch-3d", type=int, default=2, help="3D step batch (default 2)")
    b.add_argument(
        "--patch-3d",
        type=int,
        nargs=3,
        default=(96, 96, 32),
        help="3D step patch (default 96 96 32)",
    )
    b.add_argument(
        "--volume-3d",
        type=int,
        nargs=3,
        default=(96, 112, 96),
        help="volume the 3D patches come from, at 2 mm (default 96 112 96, the sample case)",
    )
    b.add_argument("--depth", type=int, default=4, help="UNet levels of the steps (default 4)")
    b.add_argument(
        "--base-channels", type=int, default=32, help="UNet width of the steps (default 32)"
    )
    b.add_argument(
        "--phi-samples", type=int, default=6, help="warped samples timed, 0: none (default 6)"
    )
    b.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    b.set_defaults(func=_cmd_bench_data)


def _cmd_bench_distance(args: argparse.Namespace) -> int:
    from napari_boundary_seg import bench

    _check(args.repeats, "--repeats", 1)
    _out(bench.format_bench(bench.bench_distance(repeats=args.repeats, seed=args.seed)))
    return 0


def _cmd_bench_data(args: argparse.Namespace) -> int:
    from napari_boundary_seg import bench

    result = bench.bench_data(
        n_small=args.small,
        n_large=args.large,
        shape=tuple(args.shape),
        spacing=(args.spacing,) * 3,
        patch_size=tuple(args.patch_size),
        steps=args.steps,
        loader_batches=args.loader_batches,
        workers=tuple(args.workers),
        step_2d=(args.batch_2d, args.size_2d),
        step_3d=(args.batch_3d, tuple(args.patch_3d)),
        depth=args.depth,
        base_channels=args.base_channels,
        phi_samples=args.phi_samples,
        seed=args.seed,
        volume_3d=tuple(args.volume_3d),
        dims=args.dims,
    )
    _out(bench.format_bench(result))
    return 0


def _cmd_bench_metrics(args: argparse.Namespace) -> int:
    from napari_boundary_seg import bench

    _check(args.repeats, "--repeats", 1)
    _out(bench.format_bench(bench.bench_metrics(repeats=args.repeats, seed=args.seed)))
    return 0


def _cmd_bench_train(args: argparse.Namespace) -> int:
    from napari_boundary_seg import bench
    from napari_boundary_seg.core.validate import check_unet_fits, check_unet_size

    _check(args.batch_size, "--batch-size", 1)
    _check(args.size, "--size", 1)
    _check(args.repeats, "--repeats", 1)
    _check(args.warmup, "--warmup", 0)
    check_unet_size(args.depth, args.base_channels, names=("--depth", "--base-channels"))
    check_unet_fits(args.depth, args.size, "--depth")
    result = bench.bench_train(
        batch_size=args.batch_size,
        size=args.size,
        repeats=args.repeats,
        warmup=args.warmup,
        depth=args.depth,
        base_channels=args.base_channels,
        device=args.device,
        seed=args.seed,
    )
    _out(bench.format_bench(result))
    return 0


# ---------------------------------------------------------------------------
# study (the parser and handler live in napari_boundary_seg.study)


@subcommand
def _add_study(sub: Any) -> None:
    from napari_boundary_seg.study import add_study_parser

    add_study_parser(sub, _drive)


# ---------------------------------------------------------------------------
# demo (the logic lives in napari_boundary_seg._demo)


@subcommand
def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="open napari with the sample lesion case and every widget docked "
        "(a headless demo where there is no display)",
        description="Open napari with a synthetic lesion case (FLAIR, T1, lesions) and the "
        "plugin's widgets docked, and start the Train widget's Quick start on it (a UNet of "
        "width 16, 15 epochs; a live preview shows the lesions forming). Without a display "
        "(no DISPLAY/WAYLAND_DISPLAY on Linux, or Qt cannot start) run a headless demo "
        "instead: the sample case, its signed distance maps, the same Quick start training "
        "on the slices outside a held-out block, and the DSC on that block.",
    )
    p.add_argument(
        "--headless", action="store_true", help="run the headless demo even with a display"
    )
    _add_threads_option(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from napari_boundary_seg._demo import run_demo
    from napari_boundary_seg.core.threads import choose_threads

    choose_threads(args.threads)  # a bad --threads is refused before any work
    return run_demo(headless=args.headless, echo=_out, threads=args.threads)


# ---------------------------------------------------------------------------
# finetune (the logic lives in napari_boundary_seg.core.finetune)


@subcommand
def _add_finetune(sub: Any) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a checkpoint on corrected slices of one scan",
        description="Fine-tune CHECKPOINT on the corrected slices of one scan (the same core "
        "function as the napari widget): --image (one per modality, in the model's order) and "
        "--labels (the corrected labels). --slices names the corrected slices along the "
        "model's slicing axis; without it, the slices where the labels differ from the model's "
        "prediction are used. A checkpoint trained in 3D is fine-tuned on 3D patches of its "
        "patch size that hold a corrected slice. Writes best.pt, last.pt, metrics.csv, "
        "config.json and "
        "lineage.json (parent, slices, settings, metrics before/after) to --out, then prints "
        "DSC and HD95 of the old and the new model on the corrected and untouched slices.",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="the model to start from")
    p.add_argument("--image", required=True, type=Path, action="append", help="a modality (repeat)")
    p.add_argument("--labels", required=True, type=Path, help="corrected labels (NIfTI)")
    p.add_argument("--slices", type=int, nargs="+", help="corrected slices (default: auto-detect)")
    p.add_argument("--axis", type=int, help="slicing axis (default: the checkpoint's)")
    p.add_argument("--out", required=True, type=Path, help="folder of the new checkpoint")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    p.add_argument(
        "--alpha-start", type=float, default=0.8, help="α in the first epoch (default 0.8)"
    )
    p.add_argument("--alpha-step", type=float, default=0.1, help="α drop per epoch (default 0.1)")
    p.add_argument("--lr", type=float, help="learning rate (default: the checkpoint's)")
    p.add_argument("--mix-data", type=Path, help="original training data folder to mix in")
    p.add_argument(
        "--mix-ratio",
        type=float,
        default=0.0,
        help="original slices per corrected slice (3D: patches per corrected patch)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _add_threads_option(p)
    p.add_argument("--overwrite", action="store_true", help="allow an --out that holds a run")
    _add_affine_option(p, "labels and images")

    def handler(args: argparse.Namespace) -> int:
        try:
            return _finetune(args)
        except (ValueError, TypeError) as err:  # named as the flags typed
            raise CommandError(_as_typed(str(err), _FINETUNE_FLAGS)) from err

    def _finetune(args: argparse.Namespace) -> int:
        from napari_boundary_seg.core.checkpoint import load_checkpoint
        from napari_boundary_seg.core.finetune import (
            LINEAGE_NAME,
        )
        from napari_boundary_seg.core.io import (
            check_finite,
            check_not_input,
            ensure_writable_dir,
            read_nifti,
        )

        _check(args.epochs, "--epochs", 1)
        _check(args.alpha_start, "--alpha-start", 0.0, 1.0)
        _check(args.alpha_step, "--alpha-step", 0.0, 1.0)
        _check(args.lr, "--lr", positive=True)
        _check(args.mix_ratio, "--mix-ratio", 0.0)
        for index in args.slices or []:
            _check(index, "--slices", 0)
        _check_device(args.device)
        outputs = [args.out / name for name in (*_RUN_FILES, LINEAGE_NAME)]
        check_not_input(outputs, [args.checkpoint, *args.image, args.labels], "--out")
        volumes = [read_nifti(path, as_labels=False) for path in args.image]
        labels = read_nifti(args.labels, as_labels=True)
        if labels.data.size and labels.data.min() < 0:
            raise CommandError(f"{args.labels}: negative label values ({labels.data.min()})")
        for path, vol in zip(args.image, volumes, strict=True):
            check_finite(vol.data, path)
            if vol.data.shape != labels.data.shape:
                raise CommandError(
                    f"{path} has shape {vol.data.shape}, {args.labels} {labels.data.shape}"
                )
        for path, vol in [*zip(args.image[1:], volumes[1:], strict=True), (args.labels, labels)]:
            _check_affine(args.image[0], volumes[0], path, vol, args.allow_affine_mismatch)
        images = np.stack([v.data for v in volumes])
        spacing = volumes[0].spacing[: images.ndim - 1]
        _check_axis(args.axis, "--axis", images.ndim - 1)
        model, checkpoint = load_checkpoint(args.checkpoint)
        affine = volumes[0].affine
        if args.axis is not None:
            axis = args.axis
        elif images.ndim == 4:  # the plane the model was trained on, found through the affine
            from napari_boundary_seg.core.checkpoint import preprocess_from_checkpoint
            from napari_boundary_seg.core.orientation import native_slice_axis

            prep = preprocess_from_checkpoint(checkpoint)
            axis = native_slice_axis(affine if prep.canonical else None, spacing, prep.axis)
        else:
            axis = 0
        axis = axis % (images.ndim - 1)
        _set_threads(args, "finetune")
        with _NewFolders(args.out):
            ensure_writable_dir(args.out)
            return _finetune_in(args, model, checkpoint, images, labels, spacing, axis, affine)

    def _finetune_in(args, model, checkpoint, images, labels, spacing, axis, affine) -> int:
        from napari_boundary_seg.core.checkpoint import training_mode
        from napari_boundary_seg.core.finetune import (
            differing_slices,
            evaluate_finetune,
            finetune,
            worse_on_corrected,
        )
        from napari_boundary_seg.core.predict import iter_predict_volume
        from napari_boundary_seg.core.progress import run_to_end
        from napari_boundary_seg.core.train import EpochEvent, InfoEvent, StepEvent, TrainControl

        old_pred = None
        slices = args.slices
        if not slices:
            _, old_pred = _drive(
                iter_predict_volume(
                    (model, checkpoint),
                    images,
                    spacing,
                    axis=axis,
                    device=args.device,
                    affine=affine,
                ),
                "predict",
                "batch",
            )
            slices = differing_slices(labels.data, old_pred, axis)
            if not slices:
                raise CommandError(
                    f"{args.labels} equals the model's prediction: no corrected slice found"
                )
            _out(f"corrected slices (differ from the prediction, axis {axis}): {slices}")
        control = TrainControl()
        gen = finetune(
            args.checkpoint,
            images,
            labels.data,
            spacing,
            slices,
            axis=axis,
            affine=affine,
            mix_cases=args.mix_data,
            mix_ratio=args.mix_ratio,
            alpha_start=args.alpha_start,
            alpha_step=args.alpha_step,
            epochs=args.epochs,
            lr=args.lr,
            out_dir=args.out,
            device=args.device,
            overwrite=args.overwrite,
            control=control,
        )
        bar = None

        def show(event: Any) -> None:
            nonlocal bar
            if isinstance(event, StepEvent):
                if bar is None:
                    bar = _progress(args.epochs * event.steps_per_epoch, "finetune", "step")
                bar.update(1)
                bar.set_postfix(loss=f"{event.loss:.4f}", alpha=f"{event.w_region:.2f}")
            elif isinstance(event, EpochEvent):
                logger.info("epoch %d: loss %.4f", event.epoch, event.train_loss)
            elif isinstance(event, InfoEvent):
                logger.info("finetune: %s", event.message)

        previous = _stop_on_sigint(control)
        try:
            result = run_to_end(gen, show)
        finally:
            if bar is not None:
                bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if result.dims == 3:
            _out(
                "finetune: a 3D checkpoint, trained on 3D patches of "
                f"{tuple(training_mode(checkpoint)['patch_size'])} holding the corrected slices"
            )
        _out(f"finetune: {result.reason}; lineage {result.lineage_path}")
        if control.stop_requested and result.stopped and "non-finite" not in result.reason:
            kept = f"{result.checkpoint} is kept" if result.checkpoint else "no checkpoint written"
            hint = (
                f"; continue with {PROG} finetune --checkpoint {result.checkpoint} and the "
                "same images and labels into another --out"
                if result.checkpoint
                else ""
            )
            raise Interrupted(f"interrupted: {result.reason}; {kept}{hint}")
        if result.stopped or result.checkpoint is None:
            return 1
        evaluation = _drive(
            evaluate_finetune(
                result,
                images,
                labels.data,
                spacing,
                old_pred=old_pred,
                device=args.device,
                affine=affine,
            ),
            "compare",
            "batch",
        )
        _out(f"new checkpoint: {result.checkpoint} (parent {result.parent})")
        _out(
            f"{'slices':<10} {'n':>4} {'DSC old':>8} {'DSC new':>8} {'HD95 old':>9} {'HD95 new':>9}"
        )
        for group, row in evaluation["comparison"].items():
            _out(
                f"{group:<10} {row['n_slices']:>4} {row['dice_old']:>8.3f} "
                f"{row['dice_new']:>8.3f} {row['hd95_old']:>9.2f} {row['hd95_new']:>9.2f}"
            )
        warning = worse_on_corrected(evaluation["comparison"])
        if warning:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
        return 0

    p.set_defaults(func=handler)


# ---------------------------------------------------------------------------
# main


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand.

    ``only``: register just the subcommand of that name (its registrar is
    ``_add_<only>``), so that a command starts without importing what the others
    need (torch, for one); every subcommand when no registrar has that name.
    """
    parser = _Parser(
        prog=PROG,
        description="Boundary loss (Kervadec et al., MIDL 2019) for highly unbalanced "
        "segmentation: data, training, inference and evaluation from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = [r for r in _SUBCOMMANDS if only is not None and r.__name__ == f"_add_{only}"]
    for register in chosen or _SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-boundary-seg``; returns the exit code.

    User errors (missing or existing files, bad values) print one line
    ``napari-boundary-seg <command>: error: <message>`` to stderr and return 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except Interrupted as stop:
        print(f"{PROG} {args.command}: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as err:
        logger.debug("out of memory", exc_info=True)
        print(f"{PROG} {args.command}: error: out of memory {err}".rstrip(), file=sys.stderr)
        return 2
    except _USER_ERRORS as err:
        logger.debug("user error", exc_info=True)  # -vv shows the traceback
        print(f"{PROG} {args.command}: error: {_error_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
