"""What every subcommand of the command line shares: its errors, option checks,
output files, progress bars, Ctrl-C handling and the threads and device options.

Nothing here imports torch or numpy at module level, so that ``--help`` and the
commands that do not train stay fast. See docs/DESIGN.md, "The command line".
"""

from __future__ import annotations

import argparse
import errno
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROG = "napari-boundary-seg"

RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "config.json")
"""The files a training run writes into its folder."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``PROG CMD: error: MESSAGE`` and a pointer to
    ``--help`` instead of the whole usage (24 lines for ``train``); exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        hint = f"{self.prog} --help"
        self.exit(2, f"{self.prog}: error: {message} (see {hint})\n")


class CommandError(Exception):
    """A user-facing error: printed on one line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C stopped the work cleanly: the message says what was kept; exit code 130."""


USER_ERRORS = (ValueError, TypeError, OSError, CommandError)
"""The exceptions that are the user's to fix: one line on stderr, exit code 2."""


def error_message(err: BaseException) -> str:
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


def as_typed(message: str, flags: Mapping[str, str]) -> str:
    """A library message with the names of its arguments as the flags the user types
    (``patch_size`` -> ``--patch-size``); ``flags``: the names and flags of the command."""
    message = error_message(ValueError(message))
    message = message.replace("allow overwrite", "pass --overwrite")
    message = message.replace("TrainConfig.", "")
    if not flags:
        return message
    words = re.compile(r"\b(" + "|".join(map(re.escape, flags)) + r")\b")
    return words.sub(lambda m: flags[m.group(1)], message)


def check_option(
    value: Any,
    flag: str,
    low: float | None = None,
    high: float | None = None,
    *,
    positive: bool = False,
) -> Any:
    """``value`` of option ``flag`` checked against ``[low, high]`` (``> 0`` with
    ``positive``) by :mod:`napari_boundary_seg.core.validate`, as an int when it is
    one; None passes (an option not given)."""
    import math

    from napari_boundary_seg.core.validate import check_int, check_number

    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and not positive:
        low_int = None if low is None else math.ceil(low)
        return check_int(value, flag, low_int, None if high is None else math.floor(high))
    if positive:
        return check_number(value, flag, 0.0, high, low_open=True)
    return check_number(value, flag, low, high)


def check_axis(value: int | None, flag: str, ndim: int) -> int | None:
    """An axis option in ``-ndim..ndim-1`` (numpy's rule), as given (not wrapped)."""
    return check_option(value, flag, -ndim, ndim - 1)


def check_output_file(path: Path, overwrite: bool, inputs: Sequence[Path], flag: str) -> None:
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


def warn(message: str) -> None:
    """A warning on stderr, as ``PROG: warning: message``."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def check_affine(
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
        warn(f"{err} (allowed by --allow-affine-mismatch)")


def add_affine_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--allow-affine-mismatch``, for commands that read several files of one case."""
    p.add_argument(
        "--allow-affine-mismatch",
        action="store_true",
        help=f"accept {what} whose affines differ by more than 1e-3 mm (a warning says so)",
    )


def read_labels(path: Path) -> Any:
    """A NIfTI label file; negative label values are refused."""
    from napari_boundary_seg.core.io import read_nifti

    volume = read_nifti(path, as_labels=True)
    if volume.data.size and volume.data.min() < 0:
        raise CommandError(f"{path}: negative label values ({volume.data.min()})")
    return volume


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", leave: bool = True):
    """A tqdm bar sized to the terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)


def drive(gen, desc: str, unit: str = "it", skip: int = 0):
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
                bar = progress_bar(total or None, desc, unit)
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


def out(text: str = "") -> None:
    """A line of the command's output (stdout)."""
    print(text)


def is_writer() -> bool:
    """False in the processes other than rank 0 of a torchrun run (they print nothing)."""
    import os

    return os.environ.get("RANK", "0") in ("", "0")


def stop_on_sigint(control: Any) -> Any:
    """Ctrl-C asks ``control`` (a ``TrainControl``) to stop at the next step (the
    checkpoint is saved); a second Ctrl-C interrupts at once. Returns the previous
    handler (None off the main thread), for :func:`restore_sigint`."""

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


def restore_sigint(previous: Any) -> None:
    """Put back the Ctrl-C handler that :func:`stop_on_sigint` replaced."""
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads``, for the commands that run torch."""
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: one per idle core, or OMP_NUM_THREADS; said in "
        "the first lines of output)",
    )


def set_threads(args: argparse.Namespace, command: str) -> None:
    """Choose torch's CPU thread count (``--threads``, ``OMP_NUM_THREADS`` or the idle
    cores) and say it."""
    from napari_boundary_seg.core.threads import apply_threads, choose_threads

    choice = apply_threads(choose_threads(getattr(args, "threads", None)))
    if is_writer():
        out(f"{command}: {choice.describe()}")


def check_device(name: str) -> None:
    """``--device`` names a device available here (checked before any folder is made)."""
    from napari_boundary_seg.core.device import resolve_device

    try:
        resolve_device(name)
    except ValueError as err:
        raise CommandError(f"--device: {error_message(err)}") from err


class NewFolders:
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

    def __enter__(self) -> NewFolders:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            return
        for folder in self.created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass
