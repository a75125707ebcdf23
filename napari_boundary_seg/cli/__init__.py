"""The ``napari-boundary-seg`` command line.

Subcommands: ``synth`` (write the built-in benchmark), ``distmap`` (NIfTI labels
to signed distance maps), ``train``, ``predict``, ``evaluate``, ``finetune``,
``export`` (a bioimage.io model package), ``cache``, ``demo``, ``study`` and ``bench``.
Every one calls the same ``core`` functions as the napari widgets and shows
tqdm progress bars.

Bad input (a missing file, a file that exists, wrong shapes, a bad option
value) and file-system faults (no space left, a read-only file system...) end
the command with exit code 2 and a one-line message naming the file or the
option and the problem, no traceback; Ctrl-C ends it with exit code 130. No
command writes over one of its inputs, and every option is checked before any
work starts (see "What happens when things go wrong" in the README).

Each subcommand is one module of this package with ``HELP`` (its line in
``--help``), ``add_parser(sub)`` (its options, each with a help text; it sets
``func`` to its handler) and ``run(args) -> int``; heavy imports (torch) happen
inside them, so a command loads only what it needs. Adding a subcommand: write
such a module and add its name to :data:`COMMANDS`. What they share is in
``_common``. See docs/DESIGN.md, "The command line".
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from napari_boundary_seg import __version__
from napari_boundary_seg.cli._common import (
    PROG,
    USER_ERRORS,
    CommandError,
    Interrupted,
    Parser,
    error_message,
)
from napari_boundary_seg.cli.train import FOLD_COLUMNS, run_training
from napari_boundary_seg.cli.train_options import (
    PRECISION_CHOICES,
    add_train_options,
    config_from_args,
)

__all__ = [
    "COMMANDS",
    "FOLD_COLUMNS",
    "PRECISION_CHOICES",
    "PROG",
    "CommandError",
    "Interrupted",
    "add_train_options",
    "build_parser",
    "config_from_args",
    "main",
    "run_training",
]

logger = logging.getLogger(__name__)

COMMANDS = (
    "synth",
    "distmap",
    "train",
    "predict",
    "evaluate",
    "cache",
    "bench",
    "study",
    "demo",
    "finetune",
    "export",
)
"""The subcommands, in the order ``--help`` lists them; each is the module
``napari_boundary_seg.cli.<name>``."""


def _command(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def _parser(commands: Sequence[str], overview: bool = False) -> Parser:
    parser = Parser(
        prog=PROG,
        description="Boundary loss (Kervadec et al., MIDL 2019) for highly unbalanced "
        "segmentation: data, training, inference and evaluation from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands:
        module = _command(name)
        if overview:  # the summary line only: no command's options (nor their imports)
            sub.add_parser(name, help=module.HELP)
        else:
            module.add_parser(sub)
    return parser


def build_parser(only: str | None = None) -> Parser:
    """The argument parser with every subcommand.

    ``only``: just the subcommand of that name, so that a command starts without
    importing what the others need (torch, for one); every subcommand when no
    subcommand has that name.
    """
    return _parser([only] if only in COMMANDS else COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-boundary-seg``; returns the exit code.

    User errors (missing or existing files, bad values) print one line
    ``napari-boundary-seg <command>: error: <message>`` to stderr and return 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        parser = build_parser(only=command)
    else:  # --help, --version or a usage error: the summary lines are enough
        parser = _parser(COMMANDS, overview=True)
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
    except USER_ERRORS as err:
        logger.debug("user error", exc_info=True)  # -vv shows the traceback
        print(f"{PROG} {args.command}: error: {error_message(err)}", file=sys.stderr)
        return 2
