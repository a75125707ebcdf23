"""The options of a training run, generated from :class:`~napari_boundary_seg.core.config.TrainConfig`'s
declared settings: :func:`add_train_options` (a flag per field, its help, type,
choices and the presets' defaults from the field's metadata) and
:func:`config_from_args` (the options, a preset, a ``--config`` file or a resumed
run's values to one ``TrainConfig``; a refused value is reported under the flag
or the ``--config`` key it came from). See ``docs/DESIGN.md``, "The config".

Used by ``train``; ``study`` and ``finetune`` generate theirs from their own configs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import CommandError, error_message
from napari_boundary_seg.core.config import PRECISIONS, TrainConfig, settings
from napari_boundary_seg.options import (
    Option,
    add_options,
    check_types,
    flag_message,
    option_values,
    preset_default_text,
)

PRECISION_CHOICES = PRECISIONS
"""The values of ``--precision``."""

_SETTINGS = settings(TrainConfig)
_RUN_START = ("resume_from", "init_checkpoint")
"""Fields whose options ``train`` reads itself (where the run starts from)."""

TRAIN_OPTIONS = [Option(s, s.flag) for s in _SETTINGS if s.flag and s.name not in _RUN_START]
"""The options read into the config by :func:`config_from_args`."""

_FIELD_FLAGS = {s.name: s.flag for s in _SETTINGS if s.flag}
_FIELD_FLAGS["schedule"] = "--schedule/--schedule-param"

TRAIN_FLAGS = {name: flag for name, flag in _FIELD_FLAGS.items() if "_" in name}
"""TrainConfig fields that ``train``'s messages name, and the flags they are shown as."""


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


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options of :class:`~napari_boundary_seg.core.config.TrainConfig`, all
    defaulting to ``None`` (= the preset's value, or the resumed run's value);
    ``--help`` shows both presets' defaults."""
    from napari_boundary_seg.core.presets import PRESET_CONFIGS, PRESETS
    from napari_boundary_seg.core.schedule import ScheduleKind

    needed = p.add_argument_group("required (unless --resume or --config gives them)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="starting values that the other options change: "
        + "; ".join(f"{k}: {v}" for k, v in PRESETS.items())
        + " (default: paper when a CUDA GPU is found, else quick; said in the first line)",
    )
    p.add_argument("--config", type=Path, help="JSON file of a TrainConfig; options override it")
    add_options(
        p,
        [s for s in _SETTINGS if s.name not in _RUN_START],
        shown_default=preset_default_text(PRESET_CONFIGS),
        group=lambda s: needed if s.name in ("data", "out_dir") else p,
    )
    schedule = next(s for s in _SETTINGS if s.name == "schedule")
    p.add_argument("--schedule", choices=[k.value for k in ScheduleKind], help=schedule.help)
    p.add_argument(
        "--schedule-param",
        action="append",
        metavar="NAME=VALUE",
        help="schedule parameter, repeatable: step=0.02, floor=0.05, alpha=0.5, alphas=1,0.5,0.1",
    )


def add_run_start_options(p: argparse.ArgumentParser) -> None:
    """``--resume`` and ``--init-checkpoint`` (where a run starts from)."""
    add_options(p, [s for s in _SETTINGS if s.name in _RUN_START])


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


def _field_name(name: str, sources: dict[str, str]) -> str:
    """A TrainConfig field as the user gave it: the flag, or the key in --config."""
    source = sources.get(name, "")
    if source.startswith("--config"):
        return f'"{name}" in {source}'
    if source and source != "flag":
        return f'"{name}" of {source}'
    return _FIELD_FLAGS.get(name, name)


def config_from_args(args: argparse.Namespace, base: dict | None = None, base_source: str = ""):
    """A TrainConfig from ``base`` (a config dict) updated with the given options.

    A value that the config refuses is reported under the flag the user typed
    (``--epochs``) or the key of the ``--config`` file it came from.
    """
    from napari_boundary_seg.core.validate import check_int

    values: dict[str, Any] = dict(base or {})
    sources = dict.fromkeys(values, base_source)
    if getattr(args, "config", None) is not None:
        loaded, where = _read_json_config(args.config)
        values.update(loaded)
        sources.update(dict.fromkeys(loaded, where))
    try:
        typed = option_values(args, TRAIN_OPTIONS)
    except ValueError as err:  # a word a setting's parser refuses (--slice-spacing)
        raise CommandError(error_message(err)) from err
    if getattr(args, "precision", None) is not None and not getattr(args, "amp", None):
        typed["amp"] = False  # an explicit --precision replaces the old amp flag of a base config
    schedule = _schedule_from_args(
        getattr(args, "schedule", None), getattr(args, "schedule_param", None)
    )
    if schedule is not None:
        typed["schedule"] = schedule
    values.update(typed)
    sources.update(dict.fromkeys(typed, "flag"))
    unknown = sorted(set(values) - {s.name for s in _SETTINGS})
    if unknown:
        where = next((sources[k] for k in unknown if sources.get(k)), "the config")
        raise CommandError(f"{where}: unknown keys {unknown}")

    def name(field: str) -> str:
        return _field_name(field, sources)

    try:
        check_types(values, _SETTINGS, name)
        config = TrainConfig.from_dict(values)
        check_int(config.epochs, name("epochs"), 1)  # a run trains
    except (ValueError, TypeError) as err:
        raise CommandError(flag_message(error_message(err), "TrainConfig", name)) from err
    return config
