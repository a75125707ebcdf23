"""Declared settings: a dataclass field with its user-facing facts, read back as descriptors.

A configuration dataclass (:class:`~napari_boundary_seg.core.config.TrainConfig`,
the schedule classes, ...) declares each field once with :func:`setting`::

    epochs: int = setting(100, help="number of epochs",
                          bounds=(0, None), section="schedule")

and every consumer reads the facts from :func:`settings`: the command line builds
its options from them, a form (magicgui) its widgets, the docs their tables, and
:func:`check_settings` the validation of ``__post_init__`` (bounds, choices, int,
float and bool types, through :mod:`napari_boundary_seg.core.validate`, with
messages naming ``<Class>.<field>``). Checks that involve several fields stay as
code in the dataclass. See ``docs/DESIGN.md``, "The config".

This module imports neither torch nor any other package module but
:mod:`~napari_boundary_seg.core.validate`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from napari_boundary_seg.core.validate import check_bool, check_choice, check_int, check_number

__all__ = [
    "SECTIONS",
    "Setting",
    "check_settings",
    "form_options",
    "plain_help",
    "setting",
    "settings",
]

SECTIONS = ("data", "model", "schedule", "run", "advanced")
"""Where a setting is shown: the sections of a form and the groups of ``--help``."""

_KEY = "napari_boundary_seg"


@dataclass(frozen=True)
class Setting:
    """The user-facing facts of one field of a settings dataclass.

    Attributes
    ----------
    name
        The field's name (``batch_size``).
    type
        The field's annotation as written (``"int"``, ``"float | None"``).
    kind
        The value type the checks and the forms use: ``"int"``, ``"float"``,
        ``"bool"``, ``"str"``, ``"path"``, or ``""`` for a structured value
        (a tuple, a mapping, an enum) that the class checks itself.
    optional
        Whether ``None`` is accepted.
    default
        The default value (``dataclasses.MISSING`` for a required field; a
        ``default_factory``'s value otherwise).
    help
        One line for ``--help`` and tooltips, without the default.
    flag
        The command-line option (``--lr-patience``); ``""`` when the field has none.
    bounds
        ``(low, high)``, either ``None`` for no bound; ``None`` without bounds.
    open
        ``(low_open, high_open)``: whether each bound is excluded.
    step
        The increment of a spin box (``None``: the form's default).
    choices
        The values accepted (``None``: any of the type).
    section
        One of :data:`SECTIONS`.
    label
        The form's label (default: the name with spaces).
    nargs, metavar
        How many words the option takes and how ``--help`` names them
        (``None``: one word).
    none_as
        The value that spells ``None`` on the command line (``0`` for "no
        cap" or "their size"); ``None``: ``None`` cannot be typed.
    none_text
        How ``--help`` and forms describe the value ``None`` ("on in 3D, off
        in 2D"); ``None``: not described.
    same_on_resume
        Whether a resumed run must have the value of the run it continues.
    form
        Whether a widget form offers it (False: the command line only, e.g. a
        deprecated alias or a flag whose question a form answers otherwise).
    parse
        Turns the typed word (the list of words with ``nargs``) into the value,
        raising ValueError; ``None``: the type's conversion.
    """

    name: str
    type: str
    kind: str
    optional: bool
    default: Any
    help: str
    flag: str
    bounds: tuple[Any, Any] | None
    open: tuple[bool, bool]
    step: float | None
    choices: tuple[Any, ...] | None
    section: str
    label: str
    nargs: int | str | None = None
    metavar: str | tuple[str, ...] | None = None
    none_as: Any = None
    none_text: str | None = None
    parse: Any = None
    same_on_resume: bool = False
    form: bool = True

    @property
    def required(self) -> bool:
        """True when the field has no default."""
        return self.default is MISSING


def plain_help(text: str) -> str:
    """A setting's ``help`` as a person reads it (a tooltip): argparse's ``%%`` as ``%``."""
    return text.replace("%%", "%")


def setting(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = None,
    bounds: tuple[Any, Any] | None = None,
    open: tuple[bool, bool] = (False, False),
    step: float | None = None,
    choices: Sequence[Any] | None = None,
    section: str = "advanced",
    label: str | None = None,
    kind: str | None = None,
    default_factory: Any = MISSING,
    nargs: int | str | None = None,
    metavar: str | tuple[str, ...] | None = None,
    none_as: Any = None,
    none_text: str | None = None,
    parse: Any = None,
    same_on_resume: bool = False,
    form: bool = True,
) -> Any:
    """A dataclass field carrying its user-facing facts (see :class:`Setting`).

    ``flag=None`` derives ``--batch-size`` from ``batch_size``; ``flag=""``
    declares a field without a command-line option. ``kind`` overrides the type
    read from the annotation (``"path"`` for a file or folder).
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    metadata = {
        _KEY: {
            "help": help,
            "flag": flag,
            "bounds": bounds,
            "open": tuple(open),
            "step": step,
            "choices": None if choices is None else tuple(choices),
            "section": section,
            "label": label,
            "kind": kind,
            "nargs": nargs,
            "metavar": metavar,
            "none_as": none_as,
            "none_text": none_text,
            "parse": parse,
            "same_on_resume": same_on_resume,
            "form": form,
        }
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_SCALARS = ("int", "float", "bool", "str")


def _kind(annotation: str) -> tuple[str, bool]:
    parts = [p.strip() for p in str(annotation).split("|")]
    optional = "None" in parts
    rest = [p for p in parts if p != "None"]
    kind = rest[0] if len(rest) == 1 and rest[0] in _SCALARS else ""
    return kind, optional


def settings(cls: Any) -> tuple[Setting, ...]:
    """The declared settings of a dataclass (or of an instance), in field order.

    Fields declared without :func:`setting` are left out.
    """
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_KEY)
        if meta is None:
            continue
        kind, optional = _kind(f.type)
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        flag = meta["flag"]
        out.append(
            Setting(
                name=f.name,
                type=str(f.type),
                kind=meta["kind"] or kind,
                optional=optional,
                default=default,
                help=meta["help"],
                flag="--" + f.name.replace("_", "-") if flag is None else flag,
                bounds=meta["bounds"],
                open=meta["open"],
                step=meta["step"],
                choices=meta["choices"],
                section=meta["section"],
                label=meta["label"] or f.name.replace("_", " "),
                nargs=meta["nargs"],
                metavar=meta["metavar"],
                none_as=meta["none_as"],
                none_text=meta["none_text"],
                parse=meta["parse"],
                same_on_resume=meta["same_on_resume"],
                form=meta["form"],
            )
        )
    return tuple(out)


def check_value(spec: Setting, value: Any, name: str) -> Any:
    """``value`` checked against ``spec`` (type, bounds, choices) and normalised
    (an int for ``int``, a float for ``float``, a str path for ``path``);
    ``name`` is how the message names it."""
    if value is None and spec.optional:
        return None
    low, high = spec.bounds if spec.bounds is not None else (None, None)
    if spec.kind == "int":
        value = check_int(value, name, low, high)
    elif spec.kind == "float":
        value = check_number(value, name, low, high, low_open=spec.open[0], high_open=spec.open[1])
    elif spec.kind == "bool":
        value = check_bool(value, name, optional=spec.optional)
    elif spec.kind == "path":
        value = os.fspath(value)
    if spec.choices is not None:
        for item in value if spec.nargs is not None else (value,):
            check_choice(item, name, spec.choices)
    return value


def check_settings(obj: Any, prefix: str | None = None) -> None:
    """Check and normalise every declared setting of a frozen dataclass instance.

    Called from ``__post_init__``; messages name ``<prefix>.<field>`` (default
    the class name), which the command line rewrites as the flag the user typed.
    """
    prefix = type(obj).__name__ if prefix is None else prefix
    for spec in settings(obj):
        value = getattr(obj, spec.name)
        if spec.kind or spec.choices is not None:
            name = f"{prefix}.{spec.name}" if prefix else spec.name
            object.__setattr__(obj, spec.name, check_value(spec, value, name))


def form_options(spec: Setting) -> dict[str, Any]:
    """The options of a form widget for ``spec``, in magicgui's words: ``label``,
    ``tooltip``, and where declared ``min``, ``max``, ``step`` and ``choices``
    (an excluded bound of an int moved in by one; a float's is kept, and the
    config refuses it). Pass them to
    ``magicgui.widgets.create_widget(value, annotation, label=..., options=...)``."""
    out: dict[str, Any] = {"label": spec.label, "tooltip": spec.help[:1].upper() + spec.help[1:]}
    if spec.bounds is not None and spec.kind in ("int", "float"):
        inward = 1 if spec.kind == "int" else 0
        low, high = spec.bounds
        if low is not None:
            out["min"] = low + inward * spec.open[0]
        if high is not None:
            out["max"] = high - inward * spec.open[1]
    if spec.step is not None:
        out["step"] = spec.step
    if spec.choices is not None:
        out["choices"] = [getattr(c, "value", c) for c in spec.choices]
    return out
