"""Run the README's CPU example as written and print its wall time.

Reads the README's code block that starts with ``# CPU example``, runs its
``napari-boundary-seg`` commands one after the other in a fresh temporary
folder (``data/``, ``runs/``, ``preds/`` are made there) with an empty
per-user cache (``NAPARI_BOUNDARY_SEG_CACHE`` pointed at a temporary folder:
a newcomer's first run), and prints each command's wall time, the total, the
cache size and the checkpoint size. The bar: the whole example within 10
minutes on a 2-core machine. Not part of the test suite (it takes minutes).

Usage::

    python benchmarks/readme_cpu_example.py [--keep DIR] [--bar 600]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "# CPU example"


def cpu_example(readme: Path = ROOT / "README.md") -> list[list[str]]:
    """The ``napari-boundary-seg`` commands of the README's CPU example, as argv lists
    (without the program name)."""
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme.read_text(), flags=re.S)
    block = next((b for b in blocks if b.lstrip().startswith(MARK)), None)
    if block is None:
        raise SystemExit(f"no code block starting with {MARK!r} in {readme}")
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "napari-boundary-seg":
            commands.append(words[1:])
    return commands


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    parser.add_argument("--bar", type=float, default=600.0, help="seconds allowed (default 600)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="nbs-readme-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="nbs-readme-cache-"))
    # the checkout's package, also when it is not the installed one
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "NAPARI_BOUNDARY_SEG_CACHE": str(cache), "PYTHONPATH": path}
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; in {work}"
    )
    total = 0.0
    for argv in cpu_example():
        print(f"$ napari-boundary-seg {shlex.join(argv)}", flush=True)
        tic = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "napari_boundary_seg", *argv],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - tic
        total += seconds
        for line in result.stdout.splitlines():
            print(f"  {line}")
        if result.returncode != 0:
            print(result.stderr[-3000:])
            print(f"FAILED with exit code {result.returncode} after {seconds:.0f} s")
            return 1
        print(f"  [{seconds:.0f} s]", flush=True)
    checkpoints = sorted(work.glob("runs/*/best.pt"))
    sizes = ", ".join(f"{p.relative_to(work)} {p.stat().st_size / 1e6:.1f} MB" for p in checkpoints)
    print(f"cache {_size(cache) / 1e6:.0f} MB; {sizes}")
    verdict = "within" if total <= args.bar else "OVER"
    print(f"CPU example wall time: {total:.0f} s ({verdict} the {args.bar:.0f} s bar)")
    return 0 if total <= args.bar else 1


if __name__ == "__main__":
    sys.exit(main())
