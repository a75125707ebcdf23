"""How many threads torch uses on the CPU: the cores that are free now.

On a 2-core machine, two torch threads make a Quick start training step twice
as fast when the machine is idle, and almost twice as slow when another job
keeps one core busy (OpenMP threads spin waiting for each other):
``python benchmarks/threads.py`` and ``python benchmarks/threads.py --busy 1``
measure it, ``benchmarks/results/threads/threads.txt`` holds a run. So the
command line and the demo take one thread per idle core: the CPU count minus
the cores busy with other work, at least 1 and at most torch's
own default. ``OMP_NUM_THREADS`` set in the environment is respected, and
``--threads N`` overrides both.

Busy cores are measured over half a second from ``/proc/stat`` (Linux), not
from the load average, which lags by a minute (it would still count the
previous command of a script); elsewhere the load average is used.

Results of a training run depend slightly on the thread count (sums are added
in another order), so the outputs say which count was used.
"""

from __future__ import annotations

import os

__all__ = ["ThreadChoice", "apply_threads", "busy_cores", "choose_threads"]


class ThreadChoice(tuple):
    """``(threads, reason)``: the count and why, for the first lines of output."""

    __slots__ = ()

    def __new__(cls, threads: int, reason: str) -> ThreadChoice:
        return super().__new__(cls, (threads, reason))

    @property
    def threads(self) -> int:
        return self[0]

    @property
    def reason(self) -> str:
        return self[1]

    def describe(self) -> str:
        """e.g. ``torch uses 1 CPU thread (2 CPUs, 1.0 busy with other work; ...)``."""
        s = "" if self.threads == 1 else "s"
        return f"torch uses {self.threads} CPU thread{s} ({self.reason}; --threads N to change)"


def choose_threads(
    requested: int | None = None,
    *,
    cpu_count: int | None = None,
    load: float | None = None,
    default: int | None = None,
    environ: dict | None = None,
) -> ThreadChoice:
    """The torch thread count for CPU work.

    Parameters
    ----------
    requested
        ``--threads``: used as given (>= 1).
    cpu_count, load, default, environ
        The machine's CPU count, the cores busy with other work
        (:func:`busy_cores`), torch's default
        thread count and the environment (tests pass them; read from the
        system when None).
    """
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"--threads must be an integer >= 1, got {requested!r}")
        return ThreadChoice(requested, "--threads")
    env = os.environ if environ is None else environ
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    if cpu_count is None:
        cpu_count = os.cpu_count() or 1
    if load is None:
        load = busy_cores(cpu_count)
    if default is None:
        import torch

        default = torch.get_num_threads()
    idle = max(1, cpu_count - int(load + 0.5))
    threads = max(1, min(idle, default, cpu_count))
    return ThreadChoice(threads, f"{cpu_count} CPUs, {load:.1f} busy with other work")


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values)


def busy_cores(cpu_count: int, window: float = 0.5) -> float:
    """Cores kept busy by other work, measured over ``window`` seconds (Linux), else
    the 1-minute load average (0 where neither is available)."""
    import time

    first = _cpu_times()
    if first is not None:
        time.sleep(window)
        second = _cpu_times()
        if second is not None and second[1] > first[1]:
            idle = (second[0] - first[0]) / (second[1] - first[1])
            return max(0.0, (1.0 - idle) * cpu_count)
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return 0.0


def apply_threads(choice: ThreadChoice) -> ThreadChoice:
    """Set torch's intra-op thread count to ``choice.threads``; returns ``choice``."""
    import torch

    torch.set_num_threads(choice.threads)
    return choice
