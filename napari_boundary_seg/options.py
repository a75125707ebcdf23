"""Command-line options generated from declared settings.

:func:`add_options` adds one option per :class:`~napari_boundary_seg.core.settings.Setting`
that has a flag (type, choices, ``nargs`` and ``--help`` text from its metadata,
its default ``None`` so that a value the user did not type is told apart);
:func:`option_values` reads the typed values back as field values;
:func:`check_types` checks the values of a JSON config against the fields' types
and :func:`flag_message` rewrites a config's message (``TrainConfig.epochs``) as
the flag or key the user gave. ``train``, ``study`` and ``finetune`` build their
options this way, so a setting is declared once, in its dataclass. See
``docs/DESIGN.md``, "The config".
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING
from enum import Enum
from pathlib import Path
from typing import Any

from napari_boundary_seg.core.settings import Setting

__all__ = [
    "Option",
    "add_options",
    "check_types",
    "default_text",
    "flag_message",
    "option_values",
    "preset_default_text",
]


class Option:
    """One generated option: the setting, its flag and its argparse ``dest``."""

    def __init__(self, spec: Setting, flag: str) -> None:
        self.spec, self.flag = spec, flag
        self.dest = flag.lstrip("-").replace("-", "_")


def _type(spec: Setting) -> Callable[[str], Any]:
    if spec.parse is not None and spec.nargs is None:
        parse = spec.parse

        def typed(text: str) -> Any:
            try:
                return parse(text)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        return typed
    if spec.kind == "path":
        return Path
    if spec.kind in ("int", "float"):
        return int if spec.kind == "int" else float
    if spec.nargs is not None and spec.parse is None:  # a tuple
        return int if "int" in spec.type else float if "float" in spec.type else str
    return str


def add_options(
    parser: Any,
    specs: Iterable[Setting],
    *,
    flags: Mapping[str, str] | None = None,
    shown_default: Callable[[Setting], str | None] | None = None,
    group: Callable[[Setting], Any] | None = None,
    required: Iterable[str] = (),
) -> list[Option]:
    """Add an option for every setting with a flag; returns them.

    Parameters
    ----------
    parser
        An ``argparse`` parser or argument group.
    specs
        The settings (:func:`~napari_boundary_seg.core.settings.settings`).
    flags
        Field name -> flag, replacing a setting's own flag (``""``: no option).
    shown_default
        The default as ``--help`` shows it (``None``: not shown); by default the
        setting's default. Not appended when the help text already names its
        default.
    group
        The parser or argument group of a setting (default ``parser``).
    required
        Fields whose option must be given (besides the fields without a default).
    """
    flags = flags or {}
    required = set(required)
    out = []
    for spec in specs:
        flag = flags.get(spec.name, spec.flag)
        if not flag:
            continue
        shown = shown_default(spec) if shown_default is not None else default_text(spec)
        help_text = spec.help
        if shown is not None and "default" not in help_text:
            help_text += f" (default {shown})"
        kwargs: dict[str, Any] = {"help": help_text, "default": None}
        if spec.required or spec.name in required:
            kwargs["required"] = True
        if spec.kind == "bool":
            on_by_default = spec.default is None or spec.default is True
            kwargs["action"] = argparse.BooleanOptionalAction if on_by_default else "store_true"
        else:
            kwargs["type"] = _type(spec)
            if spec.choices is not None and spec.parse is None:
                kwargs["choices"] = [c.value if isinstance(c, Enum) else c for c in spec.choices]
            if spec.nargs is not None:
                kwargs["nargs"] = spec.nargs
            if spec.metavar is not None:
                kwargs["metavar"] = spec.metavar
        option = Option(spec, flag)
        (group(spec) if group is not None else parser).add_argument(
            flag, dest=option.dest, **kwargs
        )
        out.append(option)
    return out


def default_text(spec: Setting, value: Any = MISSING) -> str | None:
    """A setting's default (or ``value``) as ``--help`` shows it: ``on`` for True,
    nothing for False or a required field, ``none_as`` or ``none_text`` for None."""
    value = spec.default if value is MISSING else value
    if value is MISSING or value is False:
        return None
    if value is None:
        return str(spec.none_as) if spec.none_as is not None else spec.none_text
    if value is True:
        return "on"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def preset_default_text(presets: Mapping[str, Any]) -> Callable[[Setting], str | None]:
    """``shown_default`` for :func:`add_options` when the defaults come from named
    configs: one value when they agree, else ``15 with --preset quick, 100 with paper``."""
    names = list(presets)

    def shown(spec: Setting) -> str | None:
        texts = [default_text(spec, getattr(presets[n], spec.name)) for n in names]
        if len(set(texts)) == 1:
            return texts[0]
        parts = [f"{t} with --preset {n}" if i == 0 else f"{t} with {n}"
                 for i, (n, t) in enumerate(zip(names, texts, strict=True))]  # fmt: skip
        return ", ".join(parts)

    return shown


def option_values(args: argparse.Namespace, options: Iterable[Option]) -> dict[str, Any]:
    """The field values of the options the user typed (``None`` ones are left out).

    Paths become strings, word lists tuples (or what the setting's ``parse``
    makes of them), and a setting's ``none_as`` value ``None``. A ``parse``
    refusal raises ValueError naming the flag.
    """
    values: dict[str, Any] = {}
    for option in options:
        value = getattr(args, option.dest, None)
        if value is None:
            continue
        spec = option.spec
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = spec.parse(value) if spec.parse is not None else tuple(value)
        if spec.none_as is not None and value == spec.none_as:
            value = None
        values[spec.name] = value
    return values


_BASE_TYPES: dict[str, Callable[[Any], bool]] = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "path": lambda v: isinstance(v, str),
}


def check_types(
    values: Mapping[str, Any], specs: Iterable[Setting], name: Callable[[str], str]
) -> None:
    """TypeError when a value does not have its field's type (a string is not a
    number); ``name(field)`` is how the message names the field."""
    by_name = {spec.name: spec for spec in specs}
    for key, value in values.items():
        spec = by_name.get(key)
        if spec is None or spec.kind not in _BASE_TYPES or (value is None and spec.optional):
            continue
        if not _BASE_TYPES[spec.kind](value):
            base = "str" if spec.kind == "path" else spec.kind
            raise TypeError(f"{name(key)} must be {base}, got {value!r} ({type(value).__name__})")


def flag_message(text: str, prefix: str, name: Callable[[str], str]) -> str:
    """``text`` with every ``<prefix>.<field>`` replaced by ``name(field)``."""
    return re.sub(rf"{re.escape(prefix)}\.(\w+)", lambda m: name(m.group(1)), text)
