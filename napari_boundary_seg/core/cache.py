"""The per-user cache of prepared cases: where it is, how big, and clearing it.

Training prepares every case once (scaled intensities, labels, φ; in 2D the
resized slices) into a cache folder read memory-mapped. Entries are keyed by a
content hash of the case's files and of the settings, so runs on the same data
and settings share them safely, and a changed file or setting makes a new
entry. The command line keeps one cache per user:
``$NAPARI_BOUNDARY_SEG_CACHE/cases`` when that variable is set, else the
platform's user cache folder (``~/.cache/napari-boundary-seg/cases`` on
Linux, ``~/Library/Caches/napari-boundary-seg/cases`` on macOS,
``%LOCALAPPDATA%\\napari-boundary-seg\\Cache\\cases`` on Windows); ``--cache-dir``
overrides it. ``napari-boundary-seg cache --info`` shows its size,
``cache --clear`` empties it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "CacheInfo",
    "cache_info",
    "clear_cache",
    "default_cache_dir",
    "format_size",
    "is_cache_entry",
    "is_user_cache_dir",
]

CACHE_ENV = "NAPARI_BOUNDARY_SEG_CACHE"
"""Environment variable naming the plugin's cache folder (also the sample case's)."""

_ENTRY_PREFIXES = ("vol-", "sl-", ".vol-", ".sl-")  # entries and unfinished temporary ones


def user_cache_root() -> Path:
    """``$NAPARI_BOUNDARY_SEG_CACHE``, else the platform's user cache folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-boundary-seg"))


def default_cache_dir() -> Path:
    """The per-user cache of prepared cases (``<user cache>/cases``)."""
    return user_cache_root() / "cases"


def is_user_cache_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a per-user cache of prepared cases, this user's or the one
    recorded in the ``config.json`` of a run made elsewhere (a folder ``cases`` under a
    ``napari-boundary-seg`` folder): a run started from that config uses this
    machine's per-user cache instead of another user's path."""
    folder = Path(path)
    if folder == default_cache_dir():
        return True
    return folder.name == "cases" and "napari-boundary-seg" in folder.parts[:-1]


def is_cache_entry(path: Path) -> bool:
    """A folder written by the case cache (``vol-<key>``, ``sl-<key>``, or an
    unfinished temporary one)."""
    return path.is_dir() and not path.is_symlink() and path.name.startswith(_ENTRY_PREFIXES)


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


@dataclass(frozen=True)
class CacheInfo:
    """Entries and bytes of a cache folder (0 and 0 when it does not exist)."""

    path: Path
    entries: int
    bytes: int

    def describe(self) -> str:
        return f"{self.path}: {self.entries} prepared case(s), {format_size(self.bytes)}"


def cache_info(path: str | os.PathLike | None = None) -> CacheInfo:
    """Size of the cache at ``path`` (default :func:`default_cache_dir`)."""
    folder = Path(path) if path is not None else default_cache_dir()
    if not folder.is_dir():
        return CacheInfo(folder, 0, 0)
    entries = [p for p in folder.iterdir() if is_cache_entry(p)]
    return CacheInfo(folder, len(entries), sum(_size(p) for p in entries))


def clear_cache(path: str | os.PathLike | None = None) -> CacheInfo:
    """Remove every cache entry under ``path`` (default :func:`default_cache_dir`);
    nothing else in that folder is touched. Returns what was removed."""
    before = cache_info(path)
    if before.entries:
        for entry in before.path.iterdir():
            if is_cache_entry(entry):
                shutil.rmtree(entry)
    return before


def format_size(n: int) -> str:
    """Bytes for people: ``0 B``, ``476 MB``, ``2.8 GB`` (powers of 1000)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "kB", "MB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover
