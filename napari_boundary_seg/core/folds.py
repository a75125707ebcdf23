"""Cross-validation folds by patient, for small sets of real scans.

With a handful of patients a single train/test split says little; every
patient is tested once by a model that never saw it. ``K`` folds split the
patients (sorted by name, shuffled by a seed) into ``K`` groups of nearly equal
size; ``K`` = the number of patients is leave one patient out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

__all__ = ["LEAVE_ONE_OUT", "check_folds", "fold_splits"]

C = TypeVar("C")

LEAVE_ONE_OUT = "loo"
"""The ``folds`` value that means one fold per patient."""


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def check_folds(folds: Any, n_patients: int) -> int:
    """The number of folds of ``folds`` (an integer ≥ 2, or ``"loo"``) for
    ``n_patients`` patients; ValueError naming both when it cannot be done."""
    if folds == LEAVE_ONE_OUT:
        k = n_patients
    elif isinstance(folds, int | np.integer) and not isinstance(folds, bool):
        k = int(folds)
    else:
        raise ValueError(f"folds must be an integer >= 2 or '{LEAVE_ONE_OUT}', got {folds!r}")
    if k < 2:
        raise ValueError(f"folds must be at least 2, got {k} (for {n_patients} patient(s))")
    if k > n_patients:
        raise ValueError(f"{k} folds need at least {k} patients, the data has {n_patients}")
    return k


def fold_splits(
    cases: Sequence[C],
    folds: int | str,
    seed: int = 0,
    group: Callable[[C], str] | None = None,
) -> list[tuple[list[C], list[C]]]:
    """``(train, test)`` lists of cases per fold, split by patient.

    Parameters
    ----------
    cases
        Anything with a ``case_id`` (or what ``group`` takes).
    folds
        Number of folds, or ``"loo"`` (one per patient).
    seed
        Seed of the shuffle of the patients (after sorting them by name, so
        the folds do not depend on the input order).
    group
        The patient of a case (default: its ``case_id``).

    Returns
    -------
    list of (train, test)
        Every patient is in exactly one test list; each list keeps the input order.
    """
    key = group if group is not None else (lambda c: str(c.case_id))
    names = [str(key(c)) for c in cases]
    patients = sorted(set(names), key=_natural_key)
    k = check_folds(folds, len(patients))
    if folds == LEAVE_ONE_OUT:
        order = np.arange(len(patients))  # fold i tests the i-th patient by name
    else:
        order = np.random.default_rng(seed).permutation(len(patients))
    assignment = {patients[p]: i % k for i, p in enumerate(order)}
    out = []
    for fold in range(k):
        test = [c for c, n in zip(cases, names, strict=True) if assignment[n] == fold]
        train = [c for c, n in zip(cases, names, strict=True) if assignment[n] != fold]
        out.append((train, test))
    return out
