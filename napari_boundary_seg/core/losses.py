"""Segmentation losses: boundary loss, generalized Dice, Dice and cross-entropy.

Every loss is a plain function first and a thin :class:`torch.nn.Module` second.
Tensors are ``(B, C, *spatial)`` with any number of spatial dimensions (2D and 3D
are tested). The functions take softmax probabilities; the modules also accept
logits (``from_logits=True`` applies a softmax over dim 1 first).

Definitions (docs/DESIGN.md, "The method"):

- Boundary loss (Kervadec et al. 2019, Eq. 5):
  ``L_B = mean over batch, supervised classes and voxels of s(q) * phi_G(q)``,
  with ``phi_G`` the signed distance map of the class (negative inside, 0 on the
  boundary). It is negative at a good solution.
- Generalized Dice loss (Sudre et al. 2017, Eq. 1), per image:
  ``w_c = 1 / (sum g_c)^2`` and
  ``1 - (2 sum_c w_c sum(s g) + eps) / (sum_c w_c sum(s + g) + eps)``, ``eps = 1e-5``,
  averaged over the batch. A class absent from an image (``sum g_c = 0``, so an
  infinite weight) gets the largest finite weight of that image instead; if no
  supervised class has a finite weight (all are absent), every weight is 1.
- Combined loss (Eq. 6): ``w_region * L_region + w_boundary * L_B``, which is
  ``alpha * L_GD + (1 - alpha) * L_B`` in the paper's form.

Loss mask: every function takes ``mask`` (``(B, 1, *spatial)`` or ``(B, *spatial)``
of 0/1, float or bool; ``None``: every voxel). With a mask each loss is
summed over the verified voxels (mask 1) only: the GDL sums ``sum(s g)``,
``sum(s + g)`` and its weights' ``sum g``, the Dice sums, the boundary loss's
mean of ``s * phi`` and the cross-entropy's mean run over those voxels; an
image of the batch without a verified voxel contributes nothing (the region
losses average over the images that have one). An unverified voxel's gradient
is exactly zero. ``mask=None`` computes exactly what it computes without the
argument. See docs/DESIGN.md, "Fine-tuning".

Validation: with ``validate=True`` (the default) each call checks shapes (free),
and values with a few reductions and a single host synchronisation: inputs must
be finite, probabilities in ``[0, 1]`` summing to 1 over the class axis (within
a dtype-dependent tolerance), targets in ``[0, 1]``. A failed check raises a
``ValueError`` naming the shapes and the offending values. Pass
``validate=False`` in a hot loop once the data pipeline is trusted.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from napari_boundary_seg.core.config import MONAI_MISSING, LossKind, loss_weights, monai_available
from napari_boundary_seg.core.validate import check_int

logger = logging.getLogger(__name__)

__all__ = [
    "GDL_EPSILON",
    "DICE_EPSILON",
    "LossKind",
    "LossParts",
    "one_hot",
    "boundary_loss",
    "generalized_dice_loss",
    "dice_loss",
    "cross_entropy",
    "gdl_ce_loss",
    "combined_loss",
    "loss_for_kind",
    "monai_available",
    "BoundaryLoss",
    "GeneralizedDiceLoss",
    "DiceLoss",
    "CrossEntropyLoss",
]

GDL_EPSILON = 1e-5
"""The smoothing term ``eps`` of the generalized Dice loss (numerator and denominator)."""

DICE_EPSILON = 1e-5
"""The smoothing term ``eps`` of the soft Dice loss (numerator and denominator)."""

ClassesArg = int | Sequence[int] | None


class LossParts(NamedTuple):
    """A loss value and its two terms (0-dim tensors).

    ``total = w_region * region + w_boundary * boundary``. A term whose weight is 0
    is still reported (computed without a graph) but does not enter ``total``; a
    boundary term that was not computed (no distance maps given) is NaN.
    """

    total: torch.Tensor
    region: torch.Tensor
    boundary: torch.Tensor


# ---------------------------------------------------------------------------
# validation helpers


class _Checks:
    """Deferred value checks resolved with a single host synchronisation."""

    def __init__(self) -> None:
        self._items: list[tuple[torch.Tensor, Callable[[], str]]] = []

    def add(self, ok: torch.Tensor, message: Callable[[], str]) -> None:
        self._items.append((ok, message))

    def raise_if_failed(self) -> None:
        if not self._items:
            return
        oks = [ok.to(device=self._items[0][0].device) for ok, _ in self._items]
        if bool(torch.stack(oks).all()):
            return
        for ok, message in self._items:
            if not bool(ok):
                raise ValueError(message())


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_probs_shape(probs: torch.Tensor) -> None:
    _check_tensor(probs, "probs")
    if probs.ndim < 3:
        raise ValueError(
            "probs must have shape (B, C, *spatial) with at least one spatial dimension, "
            f"got shape {_shape(probs)}"
        )
    if not probs.is_floating_point():
        raise TypeError(f"probs must be a floating-point tensor, got dtype {probs.dtype}")
    if probs.numel() == 0:
        what = "an empty batch" if probs.shape[0] == 0 else "an empty class or spatial axis"
        raise ValueError(f"probs has shape {_shape(probs)}: {what}, nothing to compute a loss on")


def _check_same_shape(probs: torch.Tensor, other: torch.Tensor, name: str) -> None:
    _check_tensor(other, name)
    if other.shape == probs.shape:
        if other.device != probs.device:
            raise ValueError(
                f"{name} is on device {other.device} but probs is on {probs.device} "
                f"(shape {_shape(probs)})"
            )
        return
    detail = ""
    if other.ndim != probs.ndim:
        detail = f": {other.ndim} dimensions vs {probs.ndim}"
    elif other.shape[0] != probs.shape[0]:
        detail = f": batch size differs ({other.shape[0]} vs {probs.shape[0]})"
    elif other.shape[1] != probs.shape[1]:
        detail = f": class count differs ({other.shape[1]} vs {probs.shape[1]})"
    else:
        detail = f": spatial shape differs ({_shape(other)[2:]} vs {_shape(probs)[2:]})"
    raise ValueError(
        f"{name} shape {_shape(other)} does not match probs shape {_shape(probs)}{detail}"
    )


def _simplex_tolerance(dtype: torch.dtype, num_classes: int) -> float:
    return max(1e-3, 4.0 * num_classes * torch.finfo(dtype).eps)


def _add_probs_checks(checks: _Checks, probs: torch.Tensor) -> None:
    tol = _simplex_tolerance(probs.dtype, probs.shape[1])
    with torch.no_grad():
        p = probs.detach()
        lo, hi = torch.aminmax(p)
        dev = (p.sum(dim=1) - 1.0).abs().amax()
    shape = _shape(probs)
    checks.add(
        torch.isfinite(lo) & torch.isfinite(hi),
        lambda: f"probs of shape {shape} contains NaN or inf",
    )
    checks.add(
        (lo >= -tol) & (hi <= 1.0 + tol),
        lambda: (
            f"probs of shape {shape} has values in [{float(lo):.6g}, {float(hi):.6g}], "
            "outside [0, 1]: pass softmax probabilities (the modules take logits with "
            "from_logits=True)"
        ),
    )
    checks.add(
        dev <= tol,
        lambda: (
            f"probs of shape {shape} is not a probability simplex: the channels (dim 1) "
            f"sum to 1 only within {float(dev):.6g}, tolerance {tol:.3g}"
        ),
    )


def _add_target_checks(checks: _Checks, target: torch.Tensor, name: str) -> None:
    with torch.no_grad():
        lo, hi = torch.aminmax(target.detach())
        if not target.is_floating_point():
            lo, hi = lo.double(), hi.double()
    shape = _shape(target)
    checks.add(
        torch.isfinite(lo) & torch.isfinite(hi),
        lambda: f"{name} of shape {shape} contains NaN or inf",
    )
    checks.add(
        (lo >= 0) & (hi <= 1),
        lambda: (
            f"{name} of shape {shape} has values in [{float(lo):.6g}, {float(hi):.6g}], "
            "outside [0, 1]: pass a one-hot (B, C, *spatial) tensor (see one_hot)"
        ),
    )


def _add_finite_check(checks: _Checks, x: torch.Tensor, name: str) -> None:
    with torch.no_grad():
        lo, hi = torch.aminmax(x.detach())
    shape = _shape(x)
    checks.add(
        torch.isfinite(lo) & torch.isfinite(hi),
        lambda: f"{name} of shape {shape} contains NaN or inf",
    )


def _class_index_list(classes: int | Sequence[int]) -> list[int]:
    """``classes`` as a list of ints (bools and non-integers rejected)."""
    message = f"classes must be an int or a sequence of ints, got {classes!r}"
    if isinstance(classes, bool):
        raise TypeError(message)
    try:
        return [operator.index(classes)]
    except TypeError:
        pass
    try:
        items = list(classes)  # type: ignore[arg-type]
    except TypeError as err:
        raise TypeError(message) from err
    if any(isinstance(c, bool) for c in items):
        raise TypeError(message)
    try:
        return [operator.index(c) for c in items]
    except TypeError as err:
        raise TypeError(message) from err


def _class_selection(
    classes: ClassesArg, num_classes: int, default_start: int
) -> slice | list[int]:
    """Turn ``classes`` into a slice (a view) when contiguous, else a list of indices."""
    if classes is None:
        if default_start >= num_classes:
            raise ValueError(
                f"no class to supervise: classes=None means classes {default_start}.."
                f"{num_classes - 1}, but the input has {num_classes} class(es)"
            )
        return slice(default_start, num_classes)
    index = _class_index_list(classes)
    if not index:
        raise ValueError("classes is empty: give at least one class index (or None)")
    bad = [c for c in index if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"classes {bad} out of range for an input with {num_classes} classes "
            f"(valid: 0..{num_classes - 1})"
        )
    if len(set(index)) != len(index):
        raise ValueError(f"classes {index} contains duplicates")
    if index == list(range(index[0], index[0] + len(index))):
        return slice(index[0], index[0] + len(index))
    return index


def _select(x: torch.Tensor, sel: slice | list[int]) -> torch.Tensor:
    if isinstance(sel, slice):
        if sel.start == 0 and sel.stop == x.shape[1]:
            return x
        return x[:, sel]
    return x.index_select(1, torch.as_tensor(sel, device=x.device))


def _compute_dtype(probs: torch.Tensor) -> torch.dtype:
    # Half-precision sums over a whole image overflow float16; compute in float32.
    if probs.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return probs.dtype


def _prepare_region(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    classes: ClassesArg,
    validate: bool,
    default_start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_probs_shape(probs)
    _check_same_shape(probs, target_onehot, "target_onehot")
    sel = _class_selection(classes, probs.shape[1], default_start)
    if validate:
        checks = _Checks()
        _add_probs_checks(checks, probs)
        _add_target_checks(checks, target_onehot, "target_onehot")
        checks.raise_if_failed()
    dtype = _compute_dtype(probs)
    return _select(probs, sel).to(dtype), _select(target_onehot, sel).to(dtype)


def _prepare_mask(
    mask: torch.Tensor | None, probs: torch.Tensor, dtype: torch.dtype, validate: bool
) -> torch.Tensor | None:
    """``mask`` as a ``(B, 1, *spatial)`` tensor of ``dtype`` (None stays None); its
    shape is checked always, its values (0/1 within [0, 1]) with ``validate``."""
    if mask is None:
        return None
    _check_tensor(mask, "mask")
    want = (probs.shape[0], *probs.shape[2:])
    if mask.ndim == probs.ndim - 1 and tuple(mask.shape) == want:
        mask = mask.unsqueeze(1)
    if tuple(mask.shape) != (probs.shape[0], 1, *probs.shape[2:]):
        raise ValueError(
            f"mask shape {_shape(mask)} does not match probs shape {_shape(probs)}: give "
            f"(B, 1, *spatial) or (B, *spatial) = {want}"
        )
    if mask.device != probs.device:
        raise ValueError(f"mask is on device {mask.device} but probs is on {probs.device}")
    if validate and mask.dtype != torch.bool:
        checks = _Checks()
        _add_target_checks(checks, mask, "mask")
        checks.raise_if_failed()
    return mask.detach().to(dtype)


def _image_mean(per_image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean over the batch of ``per_image (B,)``; with a mask, over the images
    holding a verified voxel only (0 when none does)."""
    if mask is None:
        return per_image.mean()
    dims = tuple(range(1, mask.ndim))
    verified = (mask.sum(dim=dims) > 0).to(per_image.dtype)
    return (per_image * verified).sum() / verified.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------
# functions


def one_hot(
    labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One-hot encode an integer label tensor.

    Parameters
    ----------
    labels
        ``(B, *spatial)`` integer tensor of class indices in ``[0, num_classes)``.
    num_classes
        Number of classes ``C`` (background included).
    dtype
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor
        ``(B, C, *spatial)`` tensor of 0 and 1, on the device of ``labels``.
    """
    _check_tensor(labels, "labels")
    num_classes = check_int(num_classes, "num_classes", 1)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.ndim < 2:
        raise ValueError(
            f"labels must have shape (B, *spatial) with at least one spatial dimension, "
            f"got shape {_shape(labels)}"
        )
    if labels.numel() > 0:
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"labels of shape {_shape(labels)} has values in [{lo}, {hi}], outside "
                f"[0, {num_classes - 1}] for num_classes={num_classes}"
            )
    out = torch.zeros(
        (labels.shape[0], num_classes, *labels.shape[1:]), dtype=dtype, device=labels.device
    )
    return out.scatter_(1, labels.unsqueeze(1).long(), 1.0)


def boundary_loss(
    probs: torch.Tensor,
    dist_maps: torch.Tensor,
    classes: ClassesArg = None,
    *,
    validate: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boundary loss (Kervadec et al. 2019, Eq. 5).

    ``L_B = mean over b, supervised c and voxels q of probs[b, c, q] * dist_maps[b, c, q]``.
    Its gradient with respect to ``probs`` is ``dist_maps / N`` on the supervised
    classes, ``N = B * len(classes) * voxels``, and 0 elsewhere. The value is
    negative at a good solution.

    Parameters
    ----------
    probs
        ``(B, C, *spatial)`` softmax probabilities.
    dist_maps
        ``(B, C, *spatial)`` floating signed distance maps ``phi_G`` of each class,
        in physical units (mm): negative inside, 0 on the boundary, positive outside
        (as :func:`napari_boundary_seg.core.distance.class_distance_maps` returns).
    classes
        Class indices to supervise; ``None`` means every class but background
        (indices ``1..C-1``).
    validate
        Check values (finite, simplex); shapes are always checked.
    mask
        ``(B, 1, *spatial)`` or ``(B, *spatial)`` 0/1: the mean runs over the
        verified voxels only, ``sum(m s phi) / (len(classes) * sum m)`` (0
        without any); ``None``: every voxel.

    Returns
    -------
    torch.Tensor
        0-dim tensor (units of ``dist_maps``).
    """
    _check_probs_shape(probs)
    _check_same_shape(probs, dist_maps, "dist_maps")
    if not dist_maps.is_floating_point():
        raise TypeError(
            f"dist_maps must be floating point (integer maps truncate distances), "
            f"got dtype {dist_maps.dtype}"
        )
    sel = _class_selection(classes, probs.shape[1], default_start=1)
    if validate:
        checks = _Checks()
        _add_probs_checks(checks, probs)
        _add_finite_check(checks, dist_maps, "dist_maps")
        checks.raise_if_failed()
    dtype = _compute_dtype(probs)
    m = _prepare_mask(mask, probs, dtype, validate)
    product = _select(probs, sel).to(dtype) * _select(dist_maps, sel)
    if m is None:
        return product.mean()
    count = m.sum() * product.shape[1]
    return (product * m).sum() / count.clamp_min(1.0)


def _gdl_weights(gsum: torch.Tensor) -> torch.Tensor:
    """Sudre weights ``1 / gsum^2`` per (image, class); non-finite ones replaced."""
    with torch.no_grad():
        raw = 1.0 / gsum.detach().square()
        finite = torch.isfinite(raw)
        largest = torch.where(finite, raw, torch.zeros_like(raw)).amax(dim=1, keepdim=True)
        largest = torch.where(finite.any(dim=1, keepdim=True), largest, torch.ones_like(largest))
        return torch.where(finite, raw, largest)


def generalized_dice_loss(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    classes: ClassesArg = None,
    *,
    validate: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalized Dice loss (Sudre et al. 2017, Eq. 1), averaged over the batch.

    Per image ``b``, with sums over voxels: ``w_c = 1 / (sum g_c)^2`` and
    ``L_b = 1 - (2 sum_c w_c sum(s_c g_c) + eps) / (sum_c w_c sum(s_c + g_c) + eps)``,
    ``eps = 1e-5``. A class absent from image ``b`` gets the largest finite weight
    of that image; if every supervised class is absent, all weights are 1. The
    weights are constants (no gradient flows through them).

    Parameters
    ----------
    probs
        ``(B, C, *spatial)`` softmax probabilities.
    target_onehot
        ``(B, C, *spatial)`` one-hot ground truth (values in ``[0, 1]``).
    classes
        Class indices to include; ``None`` means all classes.
    validate
        Check values (finite, simplex, target in ``[0, 1]``).
    mask
        ``(B, 1, *spatial)`` or ``(B, *spatial)`` 0/1: the sums ``sum(s g)``,
        ``sum(s + g)`` and the weights' ``sum g`` over the verified voxels only,
        the mean over the images holding one; ``None``: every voxel.

    Returns
    -------
    torch.Tensor
        0-dim tensor in ``[0, 1]`` (0 for a perfect prediction).
    """
    s, g = _prepare_region(probs, target_onehot, classes, validate)
    m = _prepare_mask(mask, probs, s.dtype, validate)
    if m is not None:
        s, g = s * m, g * m
    dims = tuple(range(2, s.ndim))
    inter = (s * g).sum(dim=dims)
    gsum = g.sum(dim=dims)
    total = s.sum(dim=dims) + gsum
    w = _gdl_weights(gsum)
    num = 2.0 * (w * inter).sum(dim=1) + GDL_EPSILON
    den = (w * total).sum(dim=1) + GDL_EPSILON
    return _image_mean(1.0 - num / den, m)


def dice_loss(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    classes: ClassesArg = None,
    *,
    validate: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft Dice loss: 1 minus the mean over images and classes of the soft Dice.

    ``D_bc = (2 sum(s g) + eps) / (sum s + sum g + eps)``, ``eps = 1e-5``; the loss
    is ``1 - mean_{b,c} D_bc``. A class absent from both prediction and target
    scores 1.

    Parameters
    ----------
    probs
        ``(B, C, *spatial)`` softmax probabilities.
    target_onehot
        ``(B, C, *spatial)`` one-hot ground truth.
    classes
        Class indices to include; ``None`` means all classes.
    validate
        Check values (finite, simplex, target in ``[0, 1]``).
    mask
        0/1 verified voxels (as :func:`generalized_dice_loss`); ``None``: every voxel.

    Returns
    -------
    torch.Tensor
        0-dim tensor in ``[0, 1]``.
    """
    s, g = _prepare_region(probs, target_onehot, classes, validate)
    m = _prepare_mask(mask, probs, s.dtype, validate)
    if m is not None:
        s, g = s * m, g * m
    dims = tuple(range(2, s.ndim))
    inter = (s * g).sum(dim=dims)
    total = s.sum(dim=dims) + g.sum(dim=dims)
    dice = (2.0 * inter + DICE_EPSILON) / (total + DICE_EPSILON)
    if m is None:
        return 1.0 - dice.mean()
    return 1.0 - _image_mean(dice.mean(dim=1), m)


def cross_entropy(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    classes: ClassesArg = None,
    *,
    validate: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy on probabilities.

    ``-mean over b and voxels q of sum_{c in classes} g_c(q) log(max(s_c(q), floor))``,
    with ``floor = max(1e-8, smallest normal number of the dtype)`` so that the
    log stays finite (no gradient flows below the floor).

    Parameters
    ----------
    probs
        ``(B, C, *spatial)`` softmax probabilities.
    target_onehot
        ``(B, C, *spatial)`` one-hot ground truth.
    classes
        Class indices to include; ``None`` means all classes.
    validate
        Check values (finite, simplex, target in ``[0, 1]``).
    mask
        0/1 verified voxels: the mean runs over them only (0 without any);
        ``None``: every voxel.

    Returns
    -------
    torch.Tensor
        0-dim tensor, in nats.
    """
    s, g = _prepare_region(probs, target_onehot, classes, validate)
    m = _prepare_mask(mask, probs, s.dtype, validate)
    floor = max(1e-8, torch.finfo(s.dtype).tiny)
    per_voxel = -(g * torch.log(s.clamp_min(floor))).sum(dim=1)
    if m is None:
        return per_voxel.mean()
    return (per_voxel * m[:, 0]).sum() / m.sum().clamp_min(1.0)


def gdl_ce_loss(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    classes: ClassesArg = None,
    *,
    validate: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalized Dice loss plus cross-entropy, weight 1 each (nnU-Net's
    compound of an overlap and a voxel-wise term): the arguments of
    :func:`generalized_dice_loss` and :func:`cross_entropy`, checked once."""
    if validate:
        _prepare_region(probs, target_onehot, classes, True)
        _prepare_mask(mask, probs, probs.dtype, True)
    gdl = generalized_dice_loss(probs, target_onehot, classes, validate=False, mask=mask)
    return gdl + cross_entropy(probs, target_onehot, classes, validate=False, mask=mask)


_REGION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "gdl": generalized_dice_loss,
    "dice": dice_loss,
    "ce": cross_entropy,
    "gdl+ce": gdl_ce_loss,
}


def _check_weight(value: float, name: str) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        w = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, got {value!r}") from err
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return w


def combined_loss(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    dist_maps: torch.Tensor | None,
    w_region: float,
    w_boundary: float,
    region: str = "gdl",
    *,
    region_classes: ClassesArg = None,
    boundary_classes: ClassesArg = None,
    validate: bool = True,
    mask: torch.Tensor | None = None,
) -> LossParts:
    """Weighted sum of a regional loss and the boundary loss (paper's Eq. 6).

    ``total = w_region * region + w_boundary * boundary``; with ``(alpha, 1 - alpha)``
    this is ``alpha * L_GD + (1 - alpha) * L_B``. Both terms are reported; a term
    whose weight is 0 is computed without a graph and left out of ``total``.

    Parameters
    ----------
    probs
        ``(B, C, *spatial)`` softmax probabilities.
    target_onehot
        ``(B, C, *spatial)`` one-hot ground truth.
    dist_maps
        ``(B, C, *spatial)`` signed distance maps (mm), or ``None`` when
        ``w_boundary == 0`` (the boundary part is then NaN).
    w_region, w_boundary
        Non-negative finite weights, not both 0.
    region
        Regional loss: ``"gdl"``, ``"dice"``, ``"ce"`` or ``"gdl+ce"``.
    region_classes, boundary_classes
        ``classes`` of each term (defaults: all classes; all but background).
    validate
        Check values once for both terms.
    mask
        0/1 verified voxels, for both terms (see :func:`generalized_dice_loss`
        and :func:`boundary_loss`); ``None``: every voxel.

    Returns
    -------
    LossParts
        ``(total, region, boundary)`` 0-dim tensors.
    """
    if region not in _REGION_LOSSES:
        raise ValueError(f"unknown region loss {region!r}; choose one of {sorted(_REGION_LOSSES)}")
    w_region = _check_weight(w_region, "w_region")
    w_boundary = _check_weight(w_boundary, "w_boundary")
    if w_region == 0 and w_boundary == 0:
        raise ValueError("w_region and w_boundary are both 0: nothing to train")
    _check_probs_shape(probs)
    _check_same_shape(probs, target_onehot, "target_onehot")
    if dist_maps is None:
        if w_boundary != 0:
            raise ValueError(f"dist_maps is None but w_boundary = {w_boundary} (must be 0)")
    else:
        _check_same_shape(probs, dist_maps, "dist_maps")
    if validate:
        checks = _Checks()
        _add_probs_checks(checks, probs)
        _add_target_checks(checks, target_onehot, "target_onehot")
        if dist_maps is not None:
            _add_finite_check(checks, dist_maps, "dist_maps")
        checks.raise_if_failed()
    _prepare_mask(mask, probs, probs.dtype, validate)  # its shape and values, once

    region_fn = _REGION_LOSSES[region]
    with torch.set_grad_enabled(torch.is_grad_enabled() and w_region != 0):
        region_value = region_fn(probs, target_onehot, region_classes, validate=False, mask=mask)
    if dist_maps is None:
        boundary_value = torch.full((), math.nan, dtype=region_value.dtype, device=probs.device)
    else:
        with torch.set_grad_enabled(torch.is_grad_enabled() and w_boundary != 0):
            boundary_value = boundary_loss(
                probs, dist_maps, boundary_classes, validate=False, mask=mask
            )

    return _weighted(w_region, region_value, w_boundary, boundary_value)


def _weighted(
    w_region: float, region: torch.Tensor, w_boundary: float, boundary: torch.Tensor
) -> LossParts:
    """``LossParts`` with ``total = w_region * region + w_boundary * boundary``, a
    term of weight 0 left out (its value may be NaN)."""
    if w_boundary == 0:
        total = w_region * region
    elif w_region == 0:
        total = w_boundary * boundary
    else:
        total = w_region * region + w_boundary * boundary
    return LossParts(total, region, boundary)


def loss_for_kind(
    kind: LossKind | str,
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    dist_maps: torch.Tensor | None,
    weights: tuple[float, float] = (1.0, 0.0),
    *,
    validate: bool = True,
    mask: torch.Tensor | None = None,
) -> LossParts:
    """The trainer's one call: the loss of a :class:`LossKind`, with its parts.

    - ``gdl``: total = GDL; the boundary part is reported without a graph.
    - ``bl``: total = BL (weight 1); the GDL part is reported without a graph.
    - ``gdl+bl``: total = ``weights[0] * GDL + weights[1] * BL``.
    - ``ce``: total = CE; the boundary part is reported without a graph.
    - ``dice``: total = soft Dice loss; the boundary part is reported without a graph.
    - ``gdl+ce``: total = GDL + CE; the boundary part is reported without a graph.
    - ``gdl+monai-bl``: as ``gdl+bl`` with MONAI's ``BoundaryLoss`` (foreground
      classes, φ of each batch item in voxels; ``dist_maps`` unused), the peer arm.

    Parameters
    ----------
    kind
        A :class:`LossKind` or its value (``"gdl"``, ``"bl"``, ``"gdl+bl"``,
        ``"ce"``, ``"dice"``, ``"gdl+ce"``).
    probs, target_onehot, dist_maps
        As in :func:`combined_loss`; ``dist_maps`` may be ``None`` for the kinds
        without a boundary term (the boundary part is then NaN).
    weights
        ``(w_region, w_boundary)`` from a schedule; used by ``gdl+bl`` only.
    validate
        Check values once.
    mask
        0/1 verified voxels (see :func:`combined_loss`); ``None``: every voxel.

    Returns
    -------
    LossParts
    """
    try:
        kind = LossKind(kind)
    except ValueError as err:
        raise ValueError(
            f"unknown loss kind {kind!r}; choose one of {[k.value for k in LossKind]}"
        ) from err
    w_region, w_boundary = loss_weights(kind, weights)
    if kind is LossKind.GDL_MONAI_BL:
        return _gdl_monai_boundary(probs, target_onehot, w_region, w_boundary, validate, mask)
    region = "gdl" if kind in (LossKind.GDL_BL, LossKind.BL) else kind.value
    return combined_loss(
        probs,
        target_onehot,
        dist_maps,
        w_region,
        w_boundary,
        region,
        validate=validate,
        mask=mask,
    )


def _gdl_monai_boundary(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    w_region: float,
    w_boundary: float,
    validate: bool,
    mask: torch.Tensor | None,
) -> LossParts:
    """``w_region * GDL + w_boundary * MONAI BoundaryLoss`` (the peer arm): MONAI
    builds φ from the batch's one-hot target, per item and class, in voxels
    (``EDT(outside)`` outside, ``-(EDT(inside) - 1)`` inside), and averages
    ``probs * φ`` over voxels, foreground classes and items."""
    if mask is not None:
        raise ValueError("loss 'gdl+monai-bl' takes no mask of verified voxels (a fine-tune's)")
    try:
        from monai.losses import BoundaryLoss as MonaiBoundaryLoss
    except ImportError:
        raise ModuleNotFoundError(MONAI_MISSING) from None
    parts = combined_loss(probs, target_onehot, None, 1.0, 0.0, "gdl", validate=validate)
    region_value = parts.region
    with torch.set_grad_enabled(torch.is_grad_enabled() and w_boundary != 0):
        boundary_value = MonaiBoundaryLoss(include_background=False)(probs, target_onehot)
    return _weighted(w_region, region_value, w_boundary, boundary_value)


# ---------------------------------------------------------------------------
# modules


class _ProbLoss(nn.Module):
    def __init__(
        self, classes: ClassesArg = None, from_logits: bool = False, validate: bool = True
    ) -> None:
        super().__init__()
        self.classes = classes if classes is None or isinstance(classes, int) else tuple(classes)
        self.from_logits = bool(from_logits)
        self.validate = bool(validate)

    def _probs(self, input: torch.Tensor) -> torch.Tensor:
        if self.from_logits:
            _check_probs_shape(input)
            return torch.softmax(input, dim=1)
        return input

    def extra_repr(self) -> str:
        return f"classes={self.classes}, from_logits={self.from_logits}"


class BoundaryLoss(_ProbLoss):
    """Module form of :func:`boundary_loss`.

    ``forward(input, dist_maps)``: ``input`` is ``(B, C, *spatial)`` probabilities,
    or logits when ``from_logits=True`` (softmax over dim 1); ``dist_maps`` is
    ``(B, C, *spatial)`` in mm. ``classes=None``: all classes but background.
    """

    def forward(self, input: torch.Tensor, dist_maps: torch.Tensor) -> torch.Tensor:
        return boundary_loss(self._probs(input), dist_maps, self.classes, validate=self.validate)


class GeneralizedDiceLoss(_ProbLoss):
    """Module form of :func:`generalized_dice_loss` (``classes=None``: all classes).

    ``forward(input, target_onehot)`` with ``(B, C, *spatial)`` tensors; ``input``
    are probabilities, or logits when ``from_logits=True``.
    """

    def forward(self, input: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
        return generalized_dice_loss(
            self._probs(input), target_onehot, self.classes, validate=self.validate
        )


class DiceLoss(_ProbLoss):
    """Module form of :func:`dice_loss` (``classes=None``: all classes).

    ``forward(input, target_onehot)`` with ``(B, C, *spatial)`` tensors; ``input``
    are probabilities, or logits when ``from_logits=True``.
    """

    def forward(self, input: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
        return dice_loss(self._probs(input), target_onehot, self.classes, validate=self.validate)


class CrossEntropyLoss(_ProbLoss):
    """Module form of :func:`cross_entropy` (``classes=None``: all classes).

    ``forward(input, target_onehot)`` with ``(B, C, *spatial)`` tensors. With
    ``from_logits=True`` it uses ``log_softmax`` directly (no clamping needed),
    which equals the function on ``softmax(input)`` wherever no probability is
    below the clamp floor.
    """

    def forward(self, input: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
        if not self.from_logits:
            return cross_entropy(input, target_onehot, self.classes, validate=self.validate)
        _check_probs_shape(input)
        _check_same_shape(input, target_onehot, "target_onehot")
        sel = _class_selection(self.classes, input.shape[1], default_start=0)
        if self.validate:
            checks = _Checks()
            _add_finite_check(checks, input, "logits")
            _add_target_checks(checks, target_onehot, "target_onehot")
            checks.raise_if_failed()
        dtype = _compute_dtype(input)
        logp = _select(F.log_softmax(input.to(dtype), dim=1), sel)
        return -(_select(target_onehot, sel).to(dtype) * logp).sum(dim=1).mean()
