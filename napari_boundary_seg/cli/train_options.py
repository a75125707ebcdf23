"""The options of a training run: :func:`add_train_options` (the flags of
:class:`~napari_boundary_seg.core.train.TrainConfig`'s fields) and
:func:`config_from_args` (the options, a preset, a ``--config`` file or a resumed
run's values to one ``TrainConfig``; a refused value is reported under the flag
or the ``--config`` key it came from).

Used by ``train``; ``study`` and ``finetune`` have options of their own.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import CommandError, error_message

PRECISION_CHOICES = ("32", "bf16", "16-mixed")  # core.precision.PRECISIONS (not imported here)


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
        choices=("robust", "zscore", "minmax"),
        help="intensities per modality: robust (the head's 0.5/99.5 %% percentiles mapped to "
        "[0, 1]; for real scans), zscore (within the head, nnU-Net's MRI rule) or minmax "
        "(the volume's minimum and maximum, the paper's) (default robust)",
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
_FLAG_WORDS = (
    "out_dir", "patch_size", "slice_size", "batch_size", "base_channels", "init_checkpoint",
    "resume_from", "cache_dir", "num_workers", "max_steps_per_epoch", "val_fraction",
    "num_classes", "lr_patience",
)  # fmt: skip
TRAIN_FLAGS = {name: _FIELD_FLAGS[name] for name in _FLAG_WORDS}
"""TrainConfig fields that ``train``'s messages name, and the flags they are shown as."""


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
    from napari_boundary_seg.core.validate import check_int

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
        check_int(config.epochs, _field_name("epochs", sources), 1)  # a run trains
    except (ValueError, TypeError) as err:
        raise CommandError(_flag_message(error_message(err), sources)) from err
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
