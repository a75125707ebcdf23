"""Progress events shared by every long-running generator in ``core``.

Long work (3D distance maps, training, inference on a volume) is written as a
generator that yields :class:`Progress` events and *returns* its result. napari's
``thread_worker`` turns the return value into its ``returned`` signal; scripts and
the command line use :func:`run_to_end`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of work are finished."""

    done: int
    total: int
    message: str = ""


def run_to_end(gen: Generator[Any, Any, T], callback: Callable[[Any], None] | None = None) -> T:
    """Drive a progress generator to completion and return its return value.

    Parameters
    ----------
    gen
        A generator that yields events and returns a result.
    callback
        Called with every yielded event, if given.
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
