"""The Train widget's logic without Qt: its fields described as data, presets,
settings → :class:`core.train.TrainConfig`, layers → training cases, and the
checks of labels, folders, patches and devices. Tests import it without a display.

- :class:`FieldSpec` describes one form field (name, type, default, label,
  help, bounds, step, choices, section, the ``TrainConfig`` key it fills).
  :data:`TRAIN_FIELDS` says how the Train widget presents its fields;
  :func:`train_fields` completes them from ``TrainConfig``'s declared settings
  (:func:`spec_from_setting`, :func:`specs_from_settings`) and adds every other
  declared setting a form can hold; :func:`field_specs` gives one section's.
  ``_fields.make_field`` turns a spec into a magicgui widget, so a setting
  declared with its metadata shows up in the form without touching the widget.
- :func:`settings_from_values` / :func:`preset_values`: field values ↔
  ``TrainConfig`` keyword arguments; :func:`build_config`.
- :func:`schedule_fields`, :func:`schedule_params`, :func:`planned_weights`,
  :func:`boundary_only_from_start`: the α schedule fields, from the schedule
  classes' declared parameters.
- :func:`cases_from_layers`, :func:`fit_patch`, :func:`fitting_cases`,
  :func:`check_labels`, :func:`check_output_folder`, :func:`new_run_folder`,
  :func:`default_patch`, :func:`check_device`.
- :class:`RunState`: the state of a widget's run.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg._widgets._layers import ImageStack
from napari_boundary_seg.core.orientation import SLICE_PLANES
from napari_boundary_seg.core.presets import split_slices, validation_block
from napari_boundary_seg.core.settings import plain_help

LOSS_CHOICES = [
    ("GDL", "gdl"),
    ("GDL + BL (α schedule)", "gdl+bl"),
    ("BL alone", "bl"),
    ("Cross-entropy", "ce"),
    ("Dice", "dice"),
    ("GDL + cross-entropy", "gdl+ce"),
]
SCHEDULE_CHOICES = [
    ("paper (α − step per epoch)", "paper"),
    ("constant α", "constant"),
    ("reference code", "reference-code"),
    ("warm start (GDL, then BL from the best)", "warm-start"),
    ("hold α = 1 until out of the empty basin", "basin-hold"),
]
#: The widget's labels of each schedule kind's parameters, in the order of its
#: three α fields (a kind with fewer parameters hides the rest), and the
#: parameters' defaults where the schedule classes declare none
#: (:func:`schedule_fields` reads the declarations of ``core.schedule``).
SCHEDULE_LABELS: dict[str, dict[str, str]] = {
    "paper": {"start": "α start", "step": "step / epoch", "floor": "α floor"},
    "constant": {"alpha": "α"},
    "reference-code": {
        "boundary_start": "BL start",
        "step": "step / epoch",
        "region_floor": "GDL floor",
    },
    "warm-start": {"patience": "patience (epochs)", "step": "step / epoch", "floor": "α floor"},
    "basin-hold": {"threshold": "leave at val DSC", "step": "step / epoch", "floor": "α floor"},
}
_SCHEDULE_DEFAULTS = {
    "paper": {"start": 1.0, "step": 0.01, "floor": 0.01},
    "constant": {"alpha": 0.5},
    "reference-code": {"boundary_start": 0.01, "step": 0.01, "region_floor": 0.1},
    "warm-start": {"patience": 5, "step": 0.01, "floor": 0.01},
    "basin-hold": {"threshold": 0.1, "step": 0.01, "floor": 0.01},
}


BL_ALONE_WARNING = (
    "⚠ Boundary loss alone (α = 0 from the start) collapses to an empty "
    "foreground in binary problems (Kervadec et al. 2019). Use GDL + BL with an "
    "α schedule."
)

#: Name of the live-preview Labels layer (updated in place after each epoch).
PREVIEW_NAME = "training preview"


class RunState(enum.StrEnum):
    """The run state of a widget (a ``str`` enum: ``RunState.RUNNING == "running"``)."""

    IDLE = "idle"
    PREPARING = "preparing"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPING = "stopping"
    PREDICTING = "predicting"
    DONE = "done"

    @property
    def text(self) -> str:
        """The words the status line starts with."""
        return _STATE_TEXT[self]

    @property
    def active(self) -> bool:
        """A run is going on (the status shows the live preview)."""
        return self in (RunState.RUNNING, RunState.PAUSING, RunState.PAUSED, RunState.STOPPING)


_STATE_TEXT = {
    RunState.IDLE: "Ready.",
    RunState.PREPARING: "Preparing the data…",
    RunState.RUNNING: "Training",
    RunState.PAUSING: "Pausing after the current step…",
    RunState.PAUSED: "Paused",
    RunState.STOPPING: "Stopping after the current step…",
    RunState.PREDICTING: "Predicting with the trained model…",
    RunState.DONE: "Done",
}


# ---------------------------------------------------------------------------
# Settings -> core config, layers -> cases
# ---------------------------------------------------------------------------


def _declared_schedule(kind: str) -> dict[str, Any]:
    """The declared settings (``core.settings.Setting``) of a schedule kind's
    class, by name; {} when ``core.schedule`` declares none."""
    try:
        from napari_boundary_seg.core.schedule import SCHEDULE_CLASSES
        from napari_boundary_seg.core.settings import settings
    except ImportError:
        return {}
    cls = {str(getattr(k, "value", k)): c for k, c in SCHEDULE_CLASSES.items()}.get(kind)
    return {d.name: d for d in settings(cls)} if cls is not None else {}


def schedule_fields(kind: str) -> list[tuple[str, str, float, str]]:
    """``(parameter, label, default, help)`` of each α field of a schedule
    kind, in field order: the widget's labels (:data:`SCHEDULE_LABELS`), the
    defaults and help texts the schedule class declares."""
    declared = _declared_schedule(kind)
    labels = dict(SCHEDULE_LABELS.get(kind, {}))
    for name, d in declared.items():  # a parameter declared later shows up too
        if getattr(d, "kind", "") == "float":
            labels.setdefault(name, d.label)
    out = []
    for name, label in labels.items():
        d = declared.get(name)
        default = d.default if d is not None else _SCHEDULE_DEFAULTS[kind][name]
        out.append((name, label, float(default), d.help if d is not None else ""))
    return out


def schedule_param_is_integer(kind: str, name: str) -> bool:
    """True when schedule ``kind`` declares parameter ``name`` as an integer (the
    warm start's patience, in epochs): its α field shows no decimals."""
    declared = _declared_schedule(kind).get(name)
    return getattr(declared, "kind", "") == "int"


def schedule_params(kind: str, *values: float) -> dict[str, float]:
    """The ``make_schedule`` parameters of the widget's α fields' ``values``
    (:func:`schedule_fields` names them: ``paper``: ``start, step, floor``;
    ``constant``: ``alpha``; ``reference-code``: ``boundary_start, step,
    region_floor``)."""
    if kind not in SCHEDULE_LABELS:
        raise ValueError(f"unknown schedule kind {kind!r}")
    names = [name for name, *_ in schedule_fields(kind)]
    return dict(zip(names, values, strict=False))


def planned_weights(
    loss: str, kind: str, params: dict[str, float], epochs: int
) -> list[tuple[float, float]]:
    """``(w_region, w_boundary)`` per planned epoch for ``loss`` and the schedule
    (``core.config.loss_weights``: only ``gdl+bl`` follows the schedule)."""
    from napari_boundary_seg.core.config import loss_weights, uses_schedule
    from napari_boundary_seg.core.schedule import make_schedule

    epochs = max(int(epochs), 1)
    if not uses_schedule(loss):  # the schedule is not built (nor checked)
        return [loss_weights(loss, (1.0, 0.0))] * epochs
    return [loss_weights(loss, w) for w in make_schedule(kind, **params).curve(epochs)]


def boundary_only_from_start(loss: str, kind: str, params: dict[str, float]) -> bool:
    """True when the boundary loss is the whole objective in the first epoch
    (``core.config.boundary_only_from_start``; False for a schedule that does
    not build)."""
    from napari_boundary_seg.core.config import boundary_only_from_start as rule

    try:
        return rule(loss, {"kind": kind, **params})
    except (TypeError, ValueError):
        return False


def build_config(settings: dict[str, Any]) -> Any:
    """A :class:`core.train.TrainConfig` from a settings dict.

    ``settings`` holds ``TrainConfig`` keyword arguments plus the widget's
    schedule fields ``schedule_kind`` and ``schedule_params`` (turned into the
    config's ``schedule`` dict); other keys are ignored. Invalid values raise
    ValueError / TypeError from ``TrainConfig`` itself.
    """
    from napari_boundary_seg.core.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in settings.items() if k in names}
    if "schedule_kind" in settings:
        kwargs["schedule"] = {
            "kind": settings["schedule_kind"],
            **settings.get("schedule_params", {}),
        }
    return TrainConfig(**kwargs)


def check_output_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written there.

    Raises
    ------
    ValueError
        Empty path, a file in the way, or no permission to write.
    """
    text = str(folder).strip()
    if not text:
        raise ValueError("No output folder chosen: give a folder for the checkpoints.")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"Output folder '{path}' is a file, not a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"Output folder '{path}' is not writable: {exc.strerror or exc}.") from exc
    return path


def new_run_folder(output: Path) -> Path:
    """A fresh ``run-YYYYmmdd-HHMMSS[-k]`` folder under ``output``: a run never
    overwrites an earlier one's checkpoints."""
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    candidate = output / stamp
    k = 1
    while candidate.exists():
        k += 1
        candidate = output / f"{stamp}-{k}"
    return candidate


def check_labels(labels: np.ndarray, name: str, image_shape: Sequence[int]) -> int:
    """Check a label volume against the images; return the number of classes.

    Raises
    ------
    ValueError
        Shapes that differ, or no foreground voxel.
    """
    if tuple(labels.shape) != tuple(image_shape):
        raise ValueError(
            f"Shapes do not match: labels '{name}' is {tuple(labels.shape)}, "
            f"the image layer(s) are {tuple(image_shape)}."
        )
    top = int(labels.max()) if labels.size else 0
    if top == 0:
        raise ValueError(
            f"Labels layer '{name}' has no foreground: paint or load some labels first."
        )
    return max(top + 1, 2)


def cases_from_layers(
    stack: ImageStack,
    labels: np.ndarray,
    axis: int,
    val_fraction: float,
    case_id: str = "viewer",
    affine: np.ndarray | None = None,
    normalize: str | None = "robust",
) -> tuple[Callable[[], tuple[list[Any], list[Any]]], slice | None]:
    """A function building the ``core.data.Case`` objects of the viewer's layers.

    The volume is split along ``axis`` (stored numpy order) into training cases
    and one validation case (:func:`core.presets.validation_block`,
    :func:`core.presets.split_slices`); the cases carry the layer's ``affine``
    so that the trainer finds the same anatomy in each, and the intensities
    the whole volume has under ``normalize`` (the training config's rule).
    The returned function is called inside the worker; it returns
    ``(train_cases, val_cases)``.
    """
    block = validation_block(labels, axis, val_fraction)

    def make() -> tuple[list[Any], list[Any]]:
        return split_slices(
            stack.images,
            labels,
            stack.spacing,
            axis,
            val_fraction,
            case_id=case_id,
            modalities=stack.names,
            affine=affine,
            normalize=normalize,
        )

    return make, block


def fit_patch(
    patch: Sequence[int], shape: Sequence[int], axis: int, block: slice | None
) -> tuple[int, ...]:
    """A 3D patch that fits the training parts of one volume split along ``axis``.

    The patch is clipped to the volume's ``shape``; with a validation ``block``
    held out, its extent along ``axis`` is also clipped to the longest
    training part (before or after the block). A shorter part cannot hold a
    patch: :meth:`TrainWidget.validate` leaves it out of training.
    """
    fitted = [min(int(p), int(n)) for p, n in zip(patch, shape, strict=True)]
    if block is not None:
        longest = max(block.start, int(shape[axis]) - block.stop)
        fitted[axis] = max(1, min(fitted[axis], longest))
    return tuple(fitted)


def fitting_cases(
    make: Callable[[], tuple[list[Any], list[Any]]], patch: Sequence[int]
) -> Callable[[], tuple[list[Any], list[Any]]]:
    """``make`` keeping only the training cases that hold a ``patch``."""

    def fitting() -> tuple[list[Any], list[Any]]:
        train, val = make()
        kept = [c for c in train if all(n >= p for n, p in zip(c.labels.shape, patch, strict=True))]
        return kept, val

    return fitting


def default_patch(shape: Sequence[int] | None) -> tuple[int, int, int]:
    """:data:`core.patches.DEFAULT_PATCH_SIZE` clipped to a volume's ``shape``
    (None, or not 3 axes: the default itself)."""
    from napari_boundary_seg.core.patches import DEFAULT_PATCH_SIZE

    if shape is None or len(shape) != 3:
        return tuple(DEFAULT_PATCH_SIZE)
    return tuple(min(int(p), int(n)) for p, n in zip(DEFAULT_PATCH_SIZE, shape, strict=True))


def path_text(edit: Any) -> str:
    """The text of a magicgui ``FileEdit`` as typed ("" when empty; its
    ``value`` would turn "" into the current folder)."""
    return str(edit.line_edit.value).strip()


# ---------------------------------------------------------------------------
# The form's fields as data
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One field of a form: what ``_fields.make_field`` needs to build its
    magicgui widget, and how its value maps to a ``TrainConfig`` field. A
    field of the config may leave out what its declaration says (type,
    default, label, help, bounds, step, choices): :func:`spec_from_setting`
    fills it in.

    Attributes
    ----------
    name
        The widget's attribute (``widget.<name>``).
    type
        ``int``, ``float``, ``bool``, ``str`` (with ``choices``) or ``Path``.
    default, label, help
        Initial value, the row's label (a check box's text) and its tooltip.
    bounds, step, decimals
        Numeric range ``(low, high)``, spin step and shown decimals.
    choices
        ``[(text, value), ...]`` of a choice field.
    section
        ``"data"``, ``"mode"``, ``"schedule"``, ``"advanced"`` or ``"run"``.
    config
        The ``TrainConfig`` field it fills (None: none).
    encode
        Field value → config value (e.g. the augmentation choice); None: the value.
    zero_is_none
        0 in the field is None in the config ("native", "all").
    preset
        A preset sets it.
    mode
        A path field's ``FileEdit`` mode (``"r"`` file, ``"d"`` folder), and
        ``filter`` its file filter.
    widget
        A widget of this package instead of magicgui's choice (``"device"``:
        the devices present here).
    """

    name: str
    type: type | None = None
    default: Any = None
    label: str = ""
    help: str = ""
    bounds: tuple[float, float] | None = None
    step: float | None = None
    decimals: int | None = None
    choices: Sequence[tuple[str, Any]] | None = None
    section: str = "advanced"
    config: str | None = None
    encode: Mapping[Any, Any] | None = None
    zero_is_none: bool = False
    preset: bool = False
    mode: str = "r"
    filter: str = ""
    widget: str = ""

    def to_config(self, value: Any) -> Any:
        """The field's value as its ``TrainConfig`` value (an empty path: None)."""
        if self.type is Path:
            return str(value).strip() or None
        if self.encode is not None:
            return self.encode[value]
        if self.zero_is_none:
            return value or None
        return value

    def from_config(self, value: Any) -> Any:
        """A ``TrainConfig`` value as the field's value."""
        if self.encode is not None:
            return {v: k for k, v in self.encode.items()}[value]
        if isinstance(value, enum.Enum):
            value = value.value
        if self.zero_is_none:
            return value or 0
        return value


#: The augmentation choice's values and ``TrainConfig.augment``.
AUGMENT_CHOICES = [
    ("default (on in 3D, off in 2D)", "default"),
    ("on", "on"),
    ("off", "off"),
]
AUGMENT_CONFIG = {"default": None, "on": True, "off": False}
DIMS_CHOICES = [("2D slices (the paper)", 2), ("3D patches", 3)]

#: How the Train widget presents its fields (but the layer and folder pickers
#: and the patch, built by its sections), in form order: the widget's labels,
#: sections, choice texts and narrower bounds; what a field of the config
#: leaves out comes from its declaration (:func:`train_fields`).
TRAIN_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "val_fraction", label="Validation",
        help="Folder: fraction of cases (patient-wise) held out for validation.\n"
        "Layers: a block of neighbouring slices of that size is held out.",
        bounds=(0.0, 0.9), section="data", config="val_fraction", preset=True,
    ),
    FieldSpec(
        "dims", label="Train on", choices=DIMS_CHOICES, section="mode", config="dims",
        preset=True,
    ),
    FieldSpec("augment", label="Augmentation", section="mode", config="augment", preset=True),
    FieldSpec(
        "steps_per_epoch", label="Steps / epoch", section="mode",
        config="steps_per_epoch", preset=True,
    ),
    FieldSpec(
        "epochs", label="Epochs", bounds=(1, 100000), section="schedule", config="epochs",
        preset=True,
    ),
    FieldSpec(
        "lr", label="Learning rate", bounds=(1e-6, 1.0), decimals=5, section="schedule",
        config="lr", preset=True,
    ),
    FieldSpec(
        "loss", label="Loss", choices=LOSS_CHOICES, section="schedule", config="loss",
        preset=True,
    ),
    FieldSpec(
        "schedule", str, "paper", "α schedule",
        "paper: α from its start, minus the step after each epoch, never below the "
        "floor (the default). constant: one α. reference code: the boundary weight "
        "grows from its start by the step (no cap), the GDL weight floored. warm start: "
        "GDL alone until the validation DSC stops improving for 'patience' epochs, then "
        "GDL + BL from the best weights, α falling by the step. hold: GDL alone until the "
        "validation DSC reaches the threshold (out of the empty basin), then the same.",
        choices=SCHEDULE_CHOICES, section="schedule",
    ),
    FieldSpec(
        # up to 100: the warm start's patience (epochs) takes this box; the
        # schedule checks each kind's own bounds
        "alpha_start", float, 1.0, "α start", bounds=(0.0, 100.0), step=0.05, decimals=3,
        section="schedule", preset=True,
    ),
    FieldSpec(
        "alpha_step", float, 0.02, "step / epoch", bounds=(0.0, 1.0), step=0.005,
        decimals=3, section="schedule", preset=True,
    ),
    FieldSpec(
        "alpha_floor", float, 0.5, "α floor", bounds=(0.0, 1.0), step=0.01, decimals=3,
        section="schedule", preset=True,
    ),
    FieldSpec("batch_size", label="Batch size", config="batch_size", preset=True),
    FieldSpec(
        "slice_size", label="Slice size (0: native)", step=16, config="slice_size", preset=True
    ),
    FieldSpec(
        "oversample", label="Foreground share", decimals=3, config="oversample", preset=True
    ),
    FieldSpec("depth", label="UNet depth", bounds=(1, 6), config="depth", preset=True),
    FieldSpec(
        "base_channels", label="UNet width", bounds=(2, 256), step=8, config="base_channels",
        preset=True,
    ),
    FieldSpec("num_classes", label="Classes", bounds=(2, 255), config="num_classes"),
    FieldSpec(
        "axis", label="Slice plane", choices=[(p, p) for p in SLICE_PLANES], config="axis"
    ),
    FieldSpec(
        "skip_empty", label="foreground slices only", config="skip_empty_slices", preset=True
    ),
    FieldSpec("max_steps", label="Max steps / epoch", config="max_steps_per_epoch", preset=True),
    FieldSpec("lr_patience", config="lr_patience", preset=True),
    FieldSpec("device", label="Device", config="device", widget="device"),
    FieldSpec("seed", label="Seed", bounds=(0, 2**31 - 1), config="seed"),
    FieldSpec(
        "output", Path, str(Path.home() / "boundary-seg-runs"), "Output folder",
        "Each run writes a new run-YYYYmmdd-HHMMSS folder here", mode="d", config="out_dir",
    ),
    FieldSpec(
        "finetune", label="Fine-tune from", mode="r", filter="*.pt *.pth",
        config="init_checkpoint",
    ),
    FieldSpec(
        "predict_after", bool, True, "add the best model's prediction", section="run"
    ),
    FieldSpec(
        "live_preview", bool, True, "live preview of the shown slice",
        "After each epoch the model predicts the slice the viewer shows (in the "
        "worker thread) and the 'training preview' layer is updated",
        section="run",
    ),
)  # fmt: skip


def field_specs(section: str) -> list[FieldSpec]:
    """The :func:`train_fields` of one section, in form order."""
    return [spec for spec in train_fields() if spec.section == section]


def settings_from_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``TrainConfig`` keyword arguments from field values (by field name), plus
    the schedule fields ``schedule_kind`` and ``schedule_params``
    (:func:`build_config`)."""
    settings = {
        spec.config: spec.to_config(values[spec.name])
        for spec in train_fields()
        if spec.config is not None and spec.name in values
    }
    if "schedule" in values:
        settings["schedule_kind"] = values["schedule"]
        settings["schedule_params"] = schedule_params(
            values["schedule"], values["alpha_start"], values["alpha_step"], values["alpha_floor"]
        )
    return settings


PRESET_CHOICES = [
    ("Quick start (a model in minutes on a CPU)", "quick"),
    ("Paper (Kervadec et al. 2019)", "paper"),
    ("Custom", "custom"),
]
PRESET_HELP = {
    "quick": (
        "Quick start: UNet width 16 on slices at their own size, 15 short epochs, "
        "GDL, lr 2e-3 (with Loss GDL + BL: α from 1 down to 0.5). On the sample case "
        "it passes a validation DSC of 0.7 within minutes on 2 CPU cores (README, "
        "Quick start)."
    ),
    "paper": (
        "The paper's setup: UNet width 64, 256×256 slices, 100 epochs, α from 1 "
        "by −0.01 per epoch; hours on a CPU, use a GPU."
    ),
    "custom": "Your own settings.",
}


def preset_values(preset: str) -> dict[str, Any]:
    """The field values (by field name) of a preset (``"quick"`` or ``"paper"``):
    the preset's ``TrainConfig`` read through :data:`TRAIN_FIELDS`."""
    from napari_boundary_seg.core.presets import quick_start_config
    from napari_boundary_seg.core.train import TrainConfig

    # the paper: the trainer's defaults with its slices resized to 256 × 256
    config = quick_start_config() if preset == "quick" else TrainConfig(slice_size=256)
    values = {
        spec.name: spec.from_config(getattr(config, spec.config))
        for spec in train_fields()
        if spec.preset and spec.config is not None
    }
    schedule = dict(config.schedule)
    values["schedule"] = schedule["kind"]
    values["alpha_start"] = schedule.get("start", 1.0)
    values["alpha_step"] = schedule.get("step", 0.01)
    values["alpha_floor"] = schedule.get("floor", 0.01)
    return values


def device_choices() -> list[str]:
    """``"auto"`` then the devices present here (``core.device.available_devices``)."""
    from napari_boundary_seg.core.device import available_devices

    return ["auto", *[d for d in available_devices() if d != "auto"]]


def check_device(device: str) -> str:
    """Raise ValueError if ``device`` is not present on this machine."""
    choices = device_choices()
    if device not in choices:
        raise ValueError(
            f"Device '{device}' is not available on this machine; choose one of {choices}."
        )
    return device


#: Spin-box limits of a setting without an upper bound.
_NO_BOUND = {"int": 1_000_000, "float": 1e6}
_KIND_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "path": Path}
_UNSET = object()


def _kind_of(spec: FieldSpec) -> str:
    return {v: k for k, v in _KIND_TYPES.items()}.get(spec.type, "")


def spec_from_setting(
    declared: Any, shown: FieldSpec | None = None, **place: Any
) -> FieldSpec | None:
    """The form field of one declared setting (a ``core.settings.Setting``:
    name, kind, optional, default, help, bounds, step, choices, label,
    none_as, none_text), or None when a form cannot hold it (a structured
    value, or None that no field value spells).

    ``shown``: how the widget already presents it (its attribute, label,
    section, choice texts, tighter bounds); what it leaves out comes from the
    declaration. ``place``: FieldSpec fields for a new one (e.g. ``section``).
    """
    kind = getattr(declared, "kind", "")
    if kind not in _KIND_TYPES:  # a structured value: a form holds it as the widget's choices
        if shown is None or not shown.choices:
            return None
        kind = _kind_of(dataclasses.replace(shown, type=type(shown.choices[0][1])))
    none_as = getattr(declared, "none_as", None)
    default = getattr(declared.default, "value", declared.default)  # an enum: its value
    if default is None and kind != "path":
        if none_as is None and not (kind == "bool" and getattr(declared, "none_text", None)):
            return None
        default = none_as
    bounds = declared.bounds
    if bounds is None and kind in _NO_BOUND:
        bounds = (0, None)
    if bounds is not None and kind in _NO_BOUND:
        low, high = bounds
        low = 0 if low is None else low
        if none_as is not None:
            low = min(low, none_as)
        bounds = (low, _NO_BOUND[kind] if high is None else high)
    choices = declared.choices
    choices = None if choices is None else [(str(c), c) for c in choices]
    if kind == "bool" and declared.optional and getattr(declared, "none_text", None):
        choices = [(f"default ({declared.none_text})", "default"), ("on", "on"), ("off", "off")]
        default, kind = {None: "default", True: "on", False: "off"}[default], "str"
        place.setdefault("encode", AUGMENT_CONFIG)
    facts = {
        "name": declared.name,
        "type": _KIND_TYPES[kind],
        "default": "" if default is None else default,
        "label": declared.label,
        "help": plain_help(declared.help),
        "bounds": bounds,
        "step": declared.step,
        "choices": choices,
        "config": declared.name,
        "zero_is_none": none_as == 0,
        **place,
    }
    if shown is None:
        return FieldSpec(**facts)
    # the widget's presentation wins; the declaration fills what it leaves out
    merged = {
        key: facts[key] if getattr(shown, key) in (None, "") else getattr(shown, key)
        for key in ("type", "default", "label", "help", "bounds", "step", "choices", "encode")
        if key in facts
    }
    merged["zero_is_none"] = shown.zero_is_none or facts["zero_is_none"]
    return dataclasses.replace(shown, **merged)


def specs_from_settings(
    declared: Sequence[Any],
    shown: Sequence[FieldSpec] = TRAIN_FIELDS,
    section: str = "advanced",
    skip: Sequence[str] = ("data", "patch_size", "schedule"),
) -> tuple[FieldSpec, ...]:
    """The form's fields from a config's declared settings: the ``shown``
    fields in their order, completed from their declarations, then every other
    declared setting a form can hold (not declared ``form=False``), in
    ``section`` (so a setting declared with its metadata shows up in the form
    without touching the widget).
    ``skip``: settings the widget builds itself (the data folder, the patch,
    the schedule)."""
    by_name = {d.name: d for d in declared}
    out = []
    for spec in shown:
        d = by_name.get(spec.config) if spec.config else None
        out.append(spec if d is None else spec_from_setting(d, spec) or spec)
    used = {spec.config for spec in shown} | set(skip)
    for d in declared:
        if d.name not in used and d.form:
            spec = spec_from_setting(d, section=section)
            if spec is not None:
                out.append(spec)
    return tuple(out)


@functools.cache
def train_fields() -> tuple[FieldSpec, ...]:
    """The Train widget's fields: :data:`TRAIN_FIELDS` completed from the
    declared settings of ``core.config.TrainConfig`` (type, default, label,
    help, bounds, steps, choices), then every other declared setting a form
    can hold, under "Advanced settings" (:func:`specs_from_settings`)."""
    from napari_boundary_seg.core.config import TrainConfig
    from napari_boundary_seg.core.settings import settings

    return specs_from_settings(settings(TrainConfig))
