"""NIfTI reading and writing that keeps the affine and the voxel spacing.

Arrays are returned in the file's own array order (the numpy axis order of
``nibabel``'s ``dataobj``); ``spacing`` is the header's zooms for those axes, so
``spacing[k]`` is the size of a voxel along numpy axis ``k`` in mm (what napari's
``layer.scale`` expects). Nothing is reoriented.

Labels come back with an integer dtype and images as ``float32``. Files are written
atomically (a temporary file in the same folder, then :func:`os.replace`) and an
existing file is never replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "AFFINE_ATOL",
    "NIFTI_SUFFIXES",
    "NiftiVolume",
    "OutputError",
    "atomic_path",
    "available_memory",
    "check_finite",
    "check_geometry",
    "check_not_input",
    "clean_stale_temp",
    "ensure_writable_dir",
    "fit_name",
    "is_hidden_or_temp",
    "default_affine",
    "is_label_file",
    "is_nifti_path",
    "nifti_stem",
    "read_nifti",
    "write_nifti",
    "write_text_atomic",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def default_affine(spacing: Sequence[float]) -> np.ndarray:
    """4×4 affine of a volume with no geometry: the voxel sizes (1 beyond the
    given axes) on the diagonal, origin 0."""
    diag = [float(s) for s in spacing][:3]
    diag += [1.0] * (3 - len(diag))
    return np.diag(diag + [1.0])


AFFINE_ATOL = 1e-3
"""Largest difference (mm) between the affines of files that must share a grid
(the modalities and labels of a case; a prediction and its reference)."""

# The name of a temporary file of :func:`atomic_path`: ``.<name>.<pid>-<random>.tmp<suffix>``.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp(\..+)?$")
# ... and of version 0.1 (``tempfile.mkstemp``): ``.<name>.<8 characters>.tmp<suffix>``.
_OLD_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(\..+)?$")
_OLD_TEMP_AGE_S = 3600.0  # an old-style temporary file is stale after an hour
_DEFAULT_NAME_MAX = 255


class OutputError(OSError):
    """An output could not be written; ``str()`` is one line naming the file and the cause
    (``cannot write runs/a/best.pt: no space left on device``)."""

    def __init__(self, code: int, path: str | os.PathLike, reason: str | None = None) -> None:
        reason = reason or os.strerror(code)
        super().__init__(code, reason, os.fspath(path))
        self.message = f"cannot write {os.fspath(path)}: {reason[:1].lower()}{reason[1:]}"

    def __str__(self) -> str:
        return self.message


def _name_max(folder: str | os.PathLike) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX


def fit_name(stem: str, suffix: str = "", folder: str | os.PathLike | None = None) -> str:
    """``stem + suffix``, shortened with a hash of ``stem`` when it exceeds the file
    system's name limit (255 bytes on most; of ``folder`` when given and existing).

    The same ``stem`` always gives the same name; names that fit are unchanged.
    """
    limit = _name_max(folder) if folder is not None and Path(folder).is_dir() else None
    limit = limit or _DEFAULT_NAME_MAX
    name = stem + suffix
    # names as the file system stores them: a non-UTF-8 name (surrogate-escaped by
    # Python) is measured and hashed by its bytes like any other
    if len(os.fsencode(name)) <= limit:
        return name
    digest = hashlib.sha1(os.fsencode(stem)).hexdigest()[:12]
    room = limit - len(os.fsencode(suffix)) - len(digest) - 1
    short = os.fsencode(stem)[: max(room, 1)].decode(errors="ignore")
    return f"{short}-{digest}{suffix}"


def _temp_name(path: Path, suffix: str) -> Path:
    tail = f".{os.getpid()}-{secrets.token_hex(4)}{suffix}"
    name = f".{path.name}"
    if len(os.fsencode(name + tail)) > _name_max(path.parent):  # a long name: hash it
        name = "." + hashlib.sha1(os.fsencode(path.name)).hexdigest()[:16]
    return path.parent / (name + tail)


def _is_out_of_space(folder: Path) -> bool:
    try:
        info = os.statvfs(folder)
    except OSError:
        return False
    no_inodes = info.f_files > 0 and info.f_favail == 0  # f_files 0: no inode limit
    return info.f_bavail * info.f_frsize < 1 << 20 or no_inodes


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary file name beside ``path``, for writing ``path`` atomically.

    Write the file at the yielded name inside the ``with`` block; when the block
    ends without error the file is flushed to disk (``fsync``) and replaces
    ``path`` (:func:`os.replace`), so readers never see a half-written file and a
    file that was there stays whole until the new one is complete; on any error
    the temporary file is deleted. ``suffix`` ends the temporary name (nibabel
    picks the format from it).

    The new file gets the mode the umask gives (0644 under umask 022); a
    replaced file keeps its mode. Failures of the file system (no space left, a
    read-only file system, no permission, a name too long) raise
    :class:`OutputError` naming ``path`` and the cause.
    """
    path = Path(path)
    tmp = _temp_name(path, suffix)
    try:
        # 0o666 & ~umask, as open() gives; a replaced file's mode is kept
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        if path.is_file():
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        code = exc.errno or errno.EIO
        raise OutputError(code, path, exc.strerror or str(exc)) from exc
    try:
        yield str(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OutputError):
            raise
        code = exc.errno or errno.EIO
        raise OutputError(code, path, exc.strerror or str(exc)) from exc
    except Exception as exc:
        # torch.save and others report a full disk as a RuntimeError ("unexpected pos")
        full = _is_out_of_space(path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise OutputError(errno.ENOSPC, path) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path` (an old file stays whole
    if the write fails)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
    return path


def is_hidden_or_temp(path: str | os.PathLike) -> bool:
    """True for hidden files (a name starting with ``.``), among them the temporary
    files of :func:`atomic_path`: never data, never a case."""
    return Path(path).name.startswith(".")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours
        return True
    return True


def clean_stale_temp(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed :func:`atomic_path` left in ``folder``.

    A temporary file is stale when the process that wrote it is gone (its id is in
    the name), or, for the names of version 0.1, when it is older than an hour.
    Other files are never touched. Returns the deleted files; errors are ignored.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        match = _TEMP_RE.match(name)
        try:
            if not entry.is_file() or entry.is_symlink():
                continue
            if match is not None:
                stale = not _pid_alive(int(match.group("pid")))
            elif _OLD_TEMP_RE.match(name):
                stale = now - entry.stat().st_mtime > _OLD_TEMP_AGE_S
            else:
                continue
            if stale:
                entry.unlink()
                removed.append(entry)
                logger.info("removed the stale temporary file %s", entry)
        except OSError:
            continue
    return removed


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents) if missing and check that files can be
    written in it, before any long work; removes stale temporary files there.

    Raises
    ------
    OutputError
        The folder cannot be created or written (read-only file system, no
        permission, not a folder...): one line naming it and the cause.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(errno.ENOTDIR, folder, "it exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(exc.errno or errno.EIO, folder, exc.strerror or str(exc)) from exc
    probe = folder / f".write-test.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        raise OutputError(exc.errno or errno.EIO, folder, exc.strerror or str(exc)) from exc
    try:
        probe.unlink()
    except OSError:
        pass
    clean_stale_temp(folder)
    return folder


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(
    outputs: Sequence[str | os.PathLike],
    inputs: Sequence[str | os.PathLike],
    what: str = "",
) -> None:
    """Refuse to write over an input: ValueError when an output is one of the inputs
    (the same resolved path, or the same file through another name: a link).

    ``what`` names the option of the output in the message (e.g. ``"--out"``).
    """
    ins = [Path(p) for p in inputs if p is not None]
    for out in outputs:
        out = Path(out)
        for inp in ins:
            if _same_file(out, inp):
                where = f" ({what})" if what else ""
                raise ValueError(
                    f"{out}{where} is one of the inputs ({inp}); this command never writes over "
                    "its inputs, --overwrite or not: choose another output"
                )


def check_geometry(
    ref_path: str | os.PathLike,
    ref_affine: np.ndarray,
    path: str | os.PathLike,
    affine: np.ndarray,
    case_id: str | None = None,
    atol: float = AFFINE_ATOL,
) -> float:
    """ValueError when two files that must share a grid have affines more than
    ``atol`` mm apart (the training loader's rule and message); returns the
    largest difference in mm."""
    diff = float(np.abs(np.asarray(affine) - np.asarray(ref_affine)).max())
    if not diff <= atol:
        case = f"case {case_id}: " if case_id is not None else ""
        raise ValueError(
            f"{case}the affine of {path} differs from that of {ref_path} by up to "
            f"{diff:.4g} mm (tolerance {atol} mm)"
        )
    return diff


def check_finite(data: np.ndarray, path: str | os.PathLike) -> None:
    """ValueError naming ``path`` when ``data`` holds NaN or inf."""
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ValueError(f"{path}: the image holds {bad} NaN or inf voxel(s)")


# A file whose name holds one of these tokens is a label volume.
_LABEL_TOKENS = frozenset(
    {
        "seg",
        "segs",
        "segmentation",
        "aseg",
        "label",
        "labels",
        "labelmap",
        "mask",
        "masks",
        "wmh",
        "ot",
        "gt",
        "truth",
        "groundtruth",
        "lesion",
        "lesions",
        "annotation",
        "annotations",
        "manual",
        "roi",
        "pred",
        "prediction",
    }
)
# ... and one holding one of these is an image (checked after the label tokens).
_IMAGE_TOKENS = frozenset(
    {
        "flair",
        "t1",
        "t1w",
        "t1c",
        "t1ce",
        "t2",
        "t2w",
        "dwi",
        "adc",
        "ct",
        "cbf",
        "cbv",
        "mtt",
        "tmax",
        "pwi",
        "4dpwi",
        "image",
        "img",
        "mri",
        "brain",
    }
)
_LABEL_FOLDERS = frozenset({"labelstr", "labelsts", "labels", "masks", "segmentations"})
_IMAGE_FOLDERS = frozenset({"imagestr", "imagests", "images"})
# Integer or integer-valued data with at most this many distinct values looks like labels.
_MAX_LABEL_VALUES = 64


@dataclass(frozen=True, eq=False)
class NiftiVolume:
    """A volume read from, or to be written to, a NIfTI file.

    Attributes
    ----------
    data
        ``(*spatial)`` array in the file's array order: an integer dtype for labels,
        ``float32`` for images.
    affine
        ``(4, 4)`` float64 voxel-to-world (mm) matrix.
    spacing
        Voxel size in mm per numpy axis (the header's zooms), one entry per spatial
        axis (at most 3).
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]

    @property
    def is_labels(self) -> bool:
        """True when ``data`` has an integer (or bool) dtype."""
        return self.data.dtype.kind in "biu"


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True when the name ends with ``.nii`` or ``.nii.gz`` (any case)."""
    name = Path(path).name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """The file name without ``.nii`` / ``.nii.gz`` (``"case_0000.nii.gz" -> "case_0000"``)."""
    name = Path(path).name
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _identity_scaling(img: nib.Nifti1Image) -> bool:
    slope, inter = img.dataobj.slope, img.dataobj.inter
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope == 1.0 and inter == 0.0


def _smallest_int_dtype(data: np.ndarray) -> np.dtype:
    """uint8 when the values fit, else int16, else int32 (ValueError beyond)."""
    if data.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(data.min()), int(data.max())
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"label values {lo}..{hi} do not fit in int32")


def _to_integer(data: np.ndarray, what: str) -> np.ndarray:
    """Integer copy of integer-valued ``data``; ValueError naming ``what`` otherwise."""
    if data.dtype.kind in "iu":
        return data
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{what}: label data contain NaN or inf")
    rounded = np.rint(data)
    if not np.allclose(data, rounded, rtol=0, atol=1e-3):
        bad = data[np.abs(data - rounded) > 1e-3].ravel()[:3]
        raise ValueError(f"{what}: label data are not integer-valued (e.g. {bad.tolist()})")
    return rounded.astype(_smallest_int_dtype(rounded))


_GZIP_MAX_RATIO = 1032  # deflate cannot compress more than about 1032:1


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**24 else f"{nbytes / 1024:.3g} KiB"


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` on Linux);
    ``None`` where it cannot be told."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _gzip_holds_at_least(path: Path, nbytes: int) -> bool:
    """Whether the gzip file ``path`` decompresses to at least ``nbytes`` bytes.

    Cheap first: the gzip trailer (ISIZE, the size mod 2**32 of the last member) and
    the largest deflate ratio; a stream count (no allocation) only when the trailer
    says less (several members).
    """
    size = path.stat().st_size
    if nbytes > size * _GZIP_MAX_RATIO + 4096:
        return False
    if nbytes >= 2**32:
        return True  # the trailer is modulo 2**32: trust the ratio bound
    with open(path, "rb") as handle:
        handle.seek(max(size - 4, 0))
        isize = int.from_bytes(handle.read(4), "little")
    if isize >= nbytes:
        return True
    count = 0
    try:
        with gzip.open(path, "rb") as stream:
            while count < nbytes:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                count += len(chunk)
    except (OSError, EOFError):
        return False
    return count >= nbytes


def _check_declared_size(path: Path, img: nib.Nifti1Image) -> None:
    """ValueError when the header declares more voxel data than the file holds (a
    truncated or tampered file), or more than the memory available; checked before
    any voxel is read."""
    shape = tuple(int(n) for n in img.header.get_data_shape())
    itemsize = np.dtype(img.get_data_dtype()).itemsize
    nbytes = int(np.prod(shape, dtype=np.float64)) * itemsize if shape else 0
    try:
        offset = int(img.header["vox_offset"])
    except (KeyError, ValueError, TypeError):
        offset = 352
    declared = (
        f"its header declares shape {shape} {np.dtype(img.get_data_dtype())} ({_gib(nbytes)})"
    )
    if path.name.lower().endswith(".gz"):
        if not _gzip_holds_at_least(path, offset + nbytes):
            raise ValueError(
                f"{path}: {declared} but the compressed file holds less: truncated or corrupt"
            )
    else:
        size = path.stat().st_size
        if size < offset + nbytes:
            raise ValueError(
                f"{path}: {declared} but the file holds {_gib(size)}: truncated or corrupt"
            )
    free = available_memory()
    if free is not None and nbytes > free:
        raise ValueError(f"{path}: {declared}, more than the {_gib(free)} of memory available")


def read_nifti(
    path: str | os.PathLike,
    as_labels: bool | None = None,
    ndim: int | None = None,
) -> NiftiVolume:
    """Read a ``.nii`` / ``.nii.gz`` file.

    Parameters
    ----------
    path
        The file.
    as_labels
        ``None``: integer data on disk (integer dtype, no intensity scaling) come
        back with their own integer dtype, everything else as ``float32``.
        ``True``: force an integer dtype (ValueError if the values are not
        integers). ``False``: force ``float32``.
    ndim
        Expected number of axes (e.g. 3). Trailing axes of length 1 beyond ``ndim``
        are dropped; any other mismatch raises ValueError naming the file and its
        shape. Whatever ``ndim``, trailing axes of length 1 beyond the third are
        always dropped (``(X, Y, Z, 1) -> (X, Y, Z)``): one rule for every reader.

    Returns
    -------
    NiftiVolume
        ``data`` in the file's array order, the ``(4, 4)`` affine and the spacing
        (mm) of the first ``min(data.ndim, 3)`` axes.

    Raises
    ------
    ValueError
        Also before any voxel is read, when the header declares more data than the
        file holds (truncated or tampered) or than the memory available.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a NIfTI file")
    if not is_nifti_path(path):
        raise ValueError(f"{path} is not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for broken files
        raise ValueError(f"{path} could not be read as NIfTI: {exc}") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path} is not a NIfTI image ({type(img).__name__})")

    integer_on_disk = np.dtype(img.get_data_dtype()).kind in "biu" and _identity_scaling(img)
    _check_declared_size(path, img)
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ValueError(f"{path}: could not read the voxel data: {exc}") from exc
    # one rule for every command: trailing axes of length 1 beyond the third are dropped
    # ((X, Y, Z, 1) -> (X, Y, Z)), so a volume reads the same wherever it is used
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if ndim is not None:
        while raw.ndim > ndim and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim != ndim:
            raise ValueError(f"{path}: expected a {ndim}D volume, got shape {raw.shape}")

    if as_labels is None:
        as_labels = integer_on_disk
    if as_labels:
        data = _to_integer(np.asarray(raw), str(path))
    else:
        data = np.asarray(raw, dtype=np.float32)

    zooms = img.header.get_zooms()
    n_spatial = min(data.ndim, 3)
    spacing = tuple(float(z) for z in zooms[:n_spatial])
    if len(spacing) < n_spatial:  # degenerate header
        spacing = spacing + (1.0,) * (n_spatial - len(spacing))
    affine = np.asarray(img.affine, dtype=np.float64)
    return NiftiVolume(data=np.ascontiguousarray(data), affine=affine, spacing=spacing)


def _label_like(data: np.ndarray) -> bool:
    return data.dtype.kind in "biu"


def write_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
    as_labels: bool | None = None,
) -> Path:
    """Write ``data`` to a ``.nii`` / ``.nii.gz`` file, atomically.

    Parameters
    ----------
    path
        Target file; its name must end with ``.nii`` or ``.nii.gz`` (gzip follows
        the name). The folder must exist.
    data
        ``(*spatial)`` array, 2 to 4 axes, in numpy axis order.
    affine
        ``(4, 4)`` voxel-to-world matrix (mm). ``None``: ``diag(*spacing, 1)``, or the
        identity when ``spacing`` is also ``None``.
    spacing
        Voxel size per axis in mm. With an ``affine`` it must agree with the
        affine's column norms (ValueError otherwise); the header's zooms follow it.
    overwrite
        Replace an existing file. ``False`` (default) raises FileExistsError.
    as_labels
        ``None``: integer/bool data are stored as labels, float data as float32.
        ``True``: store as labels (values must be integers). ``False``: float32.
        Labels are stored as uint8 when they fit, else int16 (int32 beyond).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"{path}: a NIfTI file name must end with .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    data = np.asarray(data)
    if data.ndim < 2 or data.ndim > 4:
        raise ValueError(f"{path}: data must have 2 to 4 axes, got shape {data.shape}")
    n_spatial = min(data.ndim, 3)

    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != n_spatial:
            raise ValueError(
                f"{path}: spacing {spacing} has {len(spacing)} entries for data of shape "
                f"{data.shape} ({n_spatial} spatial axes)"
            )
        if any(not np.isfinite(s) or s <= 0 for s in spacing):
            raise ValueError(f"{path}: spacing must be positive and finite, got {spacing}")
    if affine is None:
        affine = default_affine(spacing if spacing is not None else ())
    else:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"{path}: affine must be a finite (4, 4) matrix, got {affine.shape}")
        if spacing is not None:
            norms = np.linalg.norm(affine[:3, :n_spatial], axis=0)
            if not np.allclose(norms, spacing, rtol=1e-4, atol=1e-5):
                raise ValueError(
                    f"{path}: spacing {spacing} disagrees with the affine's voxel sizes "
                    f"{tuple(np.round(norms, 6))}"
                )

    if as_labels is None:
        as_labels = _label_like(data)
    if as_labels:
        values = _to_integer(data, str(path))
        out = values.astype(_smallest_int_dtype(values), copy=False)
    else:
        out = data.astype(np.float32, copy=False)

    img = nib.Nifti1Image(np.ascontiguousarray(out), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(out.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if spacing is not None:
        zooms = list(img.header.get_zooms())
        zooms[:n_spatial] = spacing
        img.header.set_zooms(zooms)

    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    with atomic_path(path, ".tmp" + suffix) as tmp:
        nib.save(img, tmp)
    logger.debug("wrote %s %s %s", path, out.shape, out.dtype)
    return path


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def is_label_file(path: str | os.PathLike, data: np.ndarray | None = None) -> bool:
    """Guess whether a NIfTI file holds labels rather than an image.

    In order: a parent folder named ``labelsTr``/``labelsTs``/``labels``/``masks``
    means labels, ``imagesTr``/``imagesTs``/``images`` means image; a name token
    such as ``seg``, ``label``, ``mask``, ``wmh``, ``OT`` or ``gt`` means labels; an
    image token (``FLAIR``, ``T1``, ``CT_CBF``, a ``_0000`` modality suffix...)
    means image; otherwise ``data`` decides: bool or integer data (or float data
    that are integer-valued) with at most 64 distinct values are labels.

    Parameters
    ----------
    path
        The file name (it need not exist when ``data`` is given).
    data
        The voxel data, if already read.
    """
    path = Path(path)
    for parent in path.parents[:2]:
        name = parent.name.lower()
        if name in _LABEL_FOLDERS:
            return True
        if name in _IMAGE_FOLDERS:
            return False
    stem = nifti_stem(path)
    tokens = _tokens(stem)
    if any(
        t in _LABEL_TOKENS or t.startswith("seg") or "label" in t or "mask" in t for t in tokens
    ):
        return True
    if any(t in _IMAGE_TOKENS for t in tokens) or re.search(r"_\d{4}$", stem):
        return False
    if data is None:
        return False
    data = np.asarray(data)
    if data.dtype.kind == "b":
        return True
    if data.dtype.kind not in "iuf" or data.size == 0:
        return False
    # a strided sample rules most images out quickly
    flat = data.reshape(-1)
    sample = flat[:: max(1, flat.size // 100_000)]
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(sample)) or np.any(sample != np.rint(sample)):
            return False
    if np.unique(sample).size > _MAX_LABEL_VALUES:
        return False
    if data.dtype.kind == "f" and np.any(flat != np.rint(flat)):
        return False
    return np.unique(flat).size <= _MAX_LABEL_VALUES
