"""Progress events shared by every long-running generator in ``core``.

Long work (3D distance maps, training, inference on a volume) is written as a
generator that yields :class:`Progress` events and *returns* its result. napari's
``thread_worker`` turns the return value into its ``returned`` signal; scripts and
the command line use :func:`run_to_end`. The generator ``iter_x`` is the one
implementation and holds the documentation; where a blocking ``x`` is public, it
is made from it by :func:`blocking` (same signature, one-line docstring).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


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


def _result_annotation(annotation: Any) -> Any:
    """``Z`` of a ``Generator[X, Y, Z]`` annotation (a string under postponed
    evaluation); anything else unchanged."""
    if not isinstance(annotation, str) or not annotation.startswith("Generator["):
        return getattr(annotation, "__args__", (None, None, annotation))[-1]
    inner, depth, cut = annotation[len("Generator[") : -1], 0, 0
    for i, char in enumerate(inner):
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            cut = i + 1
    return inner[cut:].strip()


def blocking(gen_fn: Callable[P, Generator[Any, Any, T]]) -> Callable[P, T]:
    """The blocking form ``x`` of a progress generator function ``iter_x``.

    ``x(*args, **kwargs)`` is ``run_to_end(iter_x(*args, **kwargs))``: the same
    parameters (its signature is ``iter_x``'s with the generator's result as
    return type), and a one-line docstring pointing at ``iter_x``, which holds
    the documentation.
    """
    name = gen_fn.__name__.removeprefix("iter_")

    @functools.wraps(gen_fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_to_end(gen_fn(*args, **kwargs))

    run.__name__ = name
    run.__qualname__ = gen_fn.__qualname__[: -len(gen_fn.__name__)] + name
    run.__doc__ = f"Blocking form of :func:`{gen_fn.__name__}`: its result, without the events."
    signature = inspect.signature(gen_fn)
    result = _result_annotation(signature.return_annotation)
    run.__signature__ = signature.replace(return_annotation=result)  # type: ignore[attr-defined]
    run.__annotations__ = {**gen_fn.__annotations__, "return": result}
    return run
