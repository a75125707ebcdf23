"""Tests of core.losses: hand-computed values, gradients, Eq. 4, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_boundary_seg.core.losses import (
    GDL_EPSILON,
    BoundaryLoss,
    CrossEntropyLoss,
    DiceLoss,
    GeneralizedDiceLoss,
    LossKind,
    LossParts,
    boundary_loss,
    combined_loss,
    cross_entropy,
    dice_loss,
    generalized_dice_loss,
    loss_for_kind,
    one_hot,
)

EPS = GDL_EPSILON
F64 = torch.float64


def two_class(fg: list) -> torch.Tensor:
    """(1, 2, *spatial) probabilities from a foreground probability array."""
    p1 = torch.tensor(fg, dtype=F64)
    return torch.stack([1 - p1, p1])[None]


# ---------------------------------------------------------------------------
# hand-computed cases
#
# 2D: g_fg = [[1, 0], [0, 0]], s_fg = [[.5, .5], [0, 0]]  (s_bg = [[.5, .5], [1, 1]])
#   GDL: w_fg = 1, w_bg = 1/9; sum(s g): fg 0.5, bg 2.5; sum(s + g): fg 2, bg 6
#        num = 2 (0.5 + 2.5/9) = 14/9, den = 2 + 6/9 = 8/3
#   Dice: fg (1 + eps)/(2 + eps), bg (5 + eps)/(6 + eps)
#   CE: voxels 0 and 1 cost -log 0.5, voxels 2 and 3 cost 0 -> log(2) / 2
# 3D: g_fg = voxel (0, 0, 0), s_fg = 0.5 there and 0 elsewhere
#   GDL: w_fg = 1, w_bg = 1/49; sum(s g): fg 0.5, bg 7; sum(s + g): fg 1.5, bg 14.5
#        num = 2 (0.5 + 7/49) = 9/7, den = 1.5 + 14.5/49 = 88/49
#   Dice: fg (1 + eps)/(1.5 + eps), bg (14 + eps)/(14.5 + eps)
#   CE: one voxel costs -log 0.5 -> log(2) / 8


def hand_case(ndim: int):
    if ndim == 2:
        g = two_class([[1, 0], [0, 0]])
        s = two_class([[0.5, 0.5], [0, 0]])
        gdl = 1 - (14 / 9 + EPS) / (8 / 3 + EPS)
        dice = 1 - ((1 + EPS) / (2 + EPS) + (5 + EPS) / (6 + EPS)) / 2
        ce = math.log(2) / 2
    else:
        fg = np.zeros((2, 2, 2))
        fg[0, 0, 0] = 1
        g = two_class(fg.tolist())
        s = two_class((fg * 0.5).tolist())
        gdl = 1 - (9 / 7 + EPS) / (88 / 49 + EPS)
        dice = 1 - ((1 + EPS) / (1.5 + EPS) + (14 + EPS) / (14.5 + EPS)) / 2
        ce = math.log(2) / 8
    return s, g, {"gdl": gdl, "dice": dice, "ce": ce}


@pytest.mark.parametrize("ndim", [2, 3])
def test_region_losses_hand_values(ndim):
    s, g, expected = hand_case(ndim)
    assert generalized_dice_loss(s, g).item() == pytest.approx(expected["gdl"], rel=1e-12)
    assert dice_loss(s, g).item() == pytest.approx(expected["dice"], rel=1e-12)
    assert cross_entropy(s, g).item() == pytest.approx(expected["ce"], rel=1e-12)


def test_boundary_loss_hand_value_2d():
    # phi_fg = [[-1, 1], [2, 0]], s_fg = [[.5, .25], [1, 0]]:
    # sum s phi = -0.5 + 0.25 + 2 + 0 = 1.75 over N = 1 * 1 * 4 voxels
    s = two_class([[0.5, 0.25], [1, 0]])
    phi = torch.zeros_like(s)
    phi[0, 1] = torch.tensor([[-1.0, 1.0], [2.0, 0.0]])
    phi[0, 0] = 100.0  # background is not supervised by default
    assert boundary_loss(s, phi).item() == 1.75 / 4
    # both classes: background adds sum(s_bg * 100) = (0.5 + 0.75 + 0 + 1) * 100
    assert boundary_loss(s, phi, classes=[0, 1]).item() == pytest.approx((1.75 + 225) / 8)


def test_boundary_loss_hand_value_3d():
    # s_fg = 0.5 everywhere, phi_fg = -3..4: sum s phi = 0.5 * 4 = 2 over 8 voxels
    s = two_class(np.full((2, 2, 2), 0.5).tolist())
    phi = torch.zeros_like(s)
    phi[0, 1] = torch.arange(-3.0, 5.0, dtype=F64).reshape(2, 2, 2)
    assert boundary_loss(s, phi).item() == 0.25


@pytest.mark.parametrize("ndim", [2, 3])
def test_boundary_loss_negative_at_good_solution(ndim):
    shape = (6,) * ndim
    g = np.zeros(shape, bool)
    g[(slice(1, 4),) * ndim] = True
    # a hand-made level set: -1 inside, +1 outside (its sign is what matters)
    phi_fg = np.where(g, -1.0, 1.0)
    phi = torch.tensor(np.stack([-phi_fg, phi_fg])[None])
    good = one_hot(torch.tensor(g[None].astype(np.int64)), 2, dtype=F64)
    assert boundary_loss(good, phi).item() < 0
    assert boundary_loss(good.flip(1), phi).item() > 0


# ---------------------------------------------------------------------------
# generalized Dice: empty-class rule, batch averaging, perfect prediction


def test_gdl_absent_class_gets_largest_finite_weight():
    # g_fg empty, g_bg = all 4 voxels: w_bg = 1/16 and w_fg takes 1/16 (not inf, not 0)
    # s_fg = [[.5, .5], [0, 0]]: sum(s g): fg 0, bg 3; sum(s + g): fg 1, bg 7
    # num = 2 * 3/16 = 3/8, den = 1/16 + 7/16 = 1/2
    g = two_class([[0, 0], [0, 0]])
    s = two_class([[0.5, 0.5], [0, 0]])
    expected = 1 - (3 / 8 + EPS) / (1 / 2 + EPS)
    assert generalized_dice_loss(s, g).item() == pytest.approx(expected, rel=1e-12)
    # a zero weight for the absent class would give 1 - 6/7 instead
    assert expected != pytest.approx(1 - 6 / 7, rel=1e-3)


def test_gdl_every_class_absent_uses_weight_one():
    # only class 1 supervised and absent: weight 1, num = eps, den = 1 * sum(s_fg) + eps
    g = two_class([[0, 0], [0, 0]])
    s = two_class([[0.5, 0.5], [0, 0]])
    got = generalized_dice_loss(s, g, classes=[1]).item()
    assert got == pytest.approx(1 - EPS / (1 + EPS), rel=1e-14)
    assert got < 1 - 1e-6  # an infinite or huge weight would give exactly 1


def test_gdl_weights_are_per_image_and_batch_is_averaged():
    s1, g1, expected = hand_case(2)
    g2 = two_class([[0, 0], [0, 0]])
    s2 = two_class([[0.5, 0.5], [0, 0]])
    second = 1 - (3 / 8 + EPS) / (1 / 2 + EPS)
    got = generalized_dice_loss(torch.cat([s1, s2]), torch.cat([g1, g2])).item()
    assert got == pytest.approx((expected["gdl"] + second) / 2, rel=1e-12)


@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 4, 3, 5)])
def test_gdl_and_dice_of_perfect_prediction_are_zero(shape):
    labels = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(0))
    labels[0] = labels[0].clamp(max=1)  # class 2 absent from image 0
    g = one_hot(labels, 3)
    assert generalized_dice_loss(g, g).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(g, g).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_entropy(g, g).item() == pytest.approx(0.0, abs=1e-6)


def test_half_precision_sums_do_not_overflow():
    # 300 x 300 = 90000 voxels: a float16 sum over one image would overflow (max 65504)
    g = one_hot(torch.zeros((1, 300, 300), dtype=torch.long), 2)
    s = torch.full_like(g, 0.5)
    expected = generalized_dice_loss(s, g).item()
    got = generalized_dice_loss(s.half(), g.half())
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------------------
# gradients


def random_probs(shape, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape, generator=gen, dtype=dtype), dim=1)


def random_onehot(shape, seed=1, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    return one_hot(labels, shape[1], dtype=dtype)


@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (2, 3, 2, 3, 2)])
@pytest.mark.parametrize("fn", [generalized_dice_loss, dice_loss, cross_entropy])
def test_gradcheck_region_losses(fn, shape):
    s = random_probs(shape).requires_grad_(True)
    g = random_onehot(shape)
    g[0, 1] = 0  # class 1 absent from image 0, exercising the empty-class rule
    g[0, 0] = 1 - g[0, 2]
    assert torch.autograd.gradcheck(lambda x: fn(x, g), (s,))
    assert torch.autograd.gradcheck(lambda x: fn(x, g, classes=[2, 0]), (s,))


@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (2, 3, 2, 3, 2)])
def test_gradcheck_boundary_loss(shape):
    s = random_probs(shape).requires_grad_(True)
    phi = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(lambda x: boundary_loss(x, phi), (s,))


@pytest.mark.parametrize(
    ("shape", "classes", "n_sup"),
    [
        ((2, 3, 2, 2), None, 2),  # N = 2 * 2 * 4 = 16
        ((2, 2, 2, 2, 2), None, 1),  # N = 2 * 1 * 8 = 16
        ((2, 3, 2, 2), [2, 0], 2),  # non-contiguous selection
    ],
)
def test_boundary_loss_gradient_is_phi_over_n_exactly(shape, classes, n_sup):
    s = random_probs(shape).requires_grad_(True)
    phi = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    boundary_loss(s, phi, classes).backward()
    n = shape[0] * n_sup * math.prod(shape[2:])
    sup = list(range(1, shape[1])) if classes is None else classes
    mask = torch.zeros(shape[1], dtype=torch.bool)
    mask[sup] = True
    assert torch.equal(s.grad[:, mask], phi[:, mask] / n)  # N is a power of two: exact
    assert torch.equal(s.grad[:, ~mask], torch.zeros_like(s.grad[:, ~mask]))


@pytest.mark.parametrize("shape", [(3, 3, 5, 3), (1, 2, 3, 3, 3)])
def test_boundary_loss_gradient_is_phi_over_n(shape):
    s = random_probs(shape).requires_grad_(True)
    phi = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    boundary_loss(s, phi).backward()
    n = shape[0] * (shape[1] - 1) * math.prod(shape[2:])
    torch.testing.assert_close(s.grad[:, 1:], phi[:, 1:] / n, rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------
# the paper's Eq. 4 identity with the real signed distance maps


def face_boundary(g: np.ndarray) -> np.ndarray:
    """Voxels of G with a face neighbour outside G (beyond the edge does not count)."""
    structure = ndi.generate_binary_structure(g.ndim, 1)
    return g & ~ndi.binary_erosion(g, structure, border_value=1)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((12, 11), None), ((12, 11), (1.0, 2.5)), ((8, 9, 7), None), ((8, 9, 7), (1.0, 1.0, 3.0))],
)
def test_eq4_identity(shape, spacing):
    from napari_boundary_seg.core.distance import signed_distance_map

    rng = np.random.default_rng(0)
    g = np.zeros(shape, bool)
    g[(slice(2, 7),) * len(shape)] = True
    g[(slice(5, 8),) + (slice(4, 6),) * (len(shape) - 1)] = True  # a non-convex blob
    g[(0,) * len(shape)] = True  # a single voxel in a corner
    phi = signed_distance_map(g, spacing=spacing).astype(np.float64)
    boundary = face_boundary(g)
    assert np.all(phi[boundary] == 0)
    assert np.all(phi[g & ~boundary] < 0) and np.all(phi[~g] > 0)

    def bl(mask: np.ndarray) -> float:
        s = one_hot(torch.from_numpy(mask[None].astype(np.int64)), 2, dtype=F64)
        phis = torch.from_numpy(np.stack([np.zeros_like(phi), phi])[None])
        return boundary_loss(s, phis).item() * mask.size  # = sum phi * s

    base = float((phi * g).sum())
    assert bl(g) == pytest.approx(base, rel=1e-12)
    for _ in range(10):  # random binary s: never below the ground truth
        s = rng.random(shape) < rng.random()
        assert float((phi * s).sum()) - base >= 0
        near = g ^ (rng.random(shape) < 0.05)
        assert bl(near) - bl(g) >= 0
    for _ in range(10):  # s and g differ only on the boundary: exactly equal
        s = g ^ (boundary & (rng.random(shape) < 0.5))
        assert float((phi * s).sum()) - base == 0
        assert bl(s) == bl(g)
    off = np.argwhere(~boundary)
    for idx in off[rng.choice(len(off), 10, replace=False)]:  # one voxel off the boundary
        s = g.copy()
        s[tuple(idx)] ^= True
        assert float((phi * s).sum()) - base > 0


# ---------------------------------------------------------------------------
# one_hot


@pytest.mark.parametrize("spatial", [(2, 3), (2, 2, 2)])
def test_one_hot(spatial):
    labels = torch.arange(math.prod(spatial)).reshape(1, *spatial) % 3
    out = one_hot(labels, 3)
    assert out.shape == (1, 3, *spatial) and out.dtype == torch.float32
    assert torch.equal(out.argmax(1), labels)
    assert torch.equal(out.sum(1), torch.ones_like(labels, dtype=torch.float32))


def test_one_hot_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\].*\[0, 2\]"):
        one_hot(torch.tensor([[0, 3]]), 3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        one_hot(torch.tensor([[-1, 1]]), 3)
    with pytest.raises(TypeError, match="integer"):
        one_hot(torch.tensor([[0.0, 1.0]]), 3)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        one_hot(torch.tensor([0, 1, 2, 0]), 3)


# ---------------------------------------------------------------------------
# validation

REGION_FUNCS = [generalized_dice_loss, dice_loss, cross_entropy]
ALL_FUNCS = [boundary_loss, *REGION_FUNCS]


def good_inputs(shape=(2, 3, 4, 4)):
    return random_probs(shape, dtype=torch.float32), random_onehot(shape, dtype=torch.float32)


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_too_few_dims_raise(fn):
    s = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        fn(s, s)


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize(
    ("other_shape", "what"),
    [((3, 3, 4, 4), "batch size differs"), ((2, 2, 4, 4), "class count differs")],
)
def test_mismatched_shapes_raise(fn, other_shape, what):
    s, _ = good_inputs()
    other = torch.zeros(other_shape)
    with pytest.raises(ValueError, match=rf"\(2, 3, 4, 4\).*{what}") as info:
        fn(s, other)
    assert str(other_shape) in str(info.value)


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize("classes", [[3], [-1], [1, 1], []])
def test_bad_classes_raise(fn, classes):
    s, g = good_inputs()
    with pytest.raises(ValueError, match=r"classes"):
        fn(s, g, classes=classes)


def test_classes_type_errors():
    s, g = good_inputs()
    with pytest.raises(TypeError):
        dice_loss(s, g, classes=[1.5])
    with pytest.raises(TypeError):
        dice_loss(s, g, classes=True)


def test_boundary_loss_needs_a_foreground_class():
    s = torch.ones((1, 1, 2, 2))
    with pytest.raises(ValueError, match="1 class"):
        boundary_loss(s, torch.zeros_like(s))


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_probs_raise(fn, bad):
    s, g = good_inputs()
    s[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match=r"probs of shape \(2, 3, 4, 4\) contains NaN or inf"):
        fn(s, g)


@pytest.mark.parametrize("fn", REGION_FUNCS)
def test_non_finite_target_raises(fn):
    s, g = good_inputs()
    g[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"target_onehot of shape \(2, 3, 4, 4\) contains NaN"):
        fn(s, g)


@pytest.mark.parametrize("bad", [math.nan, -math.inf])
def test_non_finite_dist_maps_raise(bad):
    s, _ = good_inputs()
    phi = torch.zeros_like(s)
    phi[0, 0, 1, 1] = bad  # even in the unsupervised background channel
    with pytest.raises(ValueError, match=r"dist_maps of shape \(2, 3, 4, 4\) contains NaN or inf"):
        boundary_loss(s, phi)


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_non_simplex_probs_raise(fn):
    s, g = good_inputs()
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\) is not a probability simplex"):
        fn(s * 0.9, g)
    logits = torch.zeros_like(s)
    logits[:, 0] = 1.5
    logits[:, 1] = -0.5  # sums to 1, but outside [0, 1]
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\) has values in \[-0.5, 1.5\]"):
        fn(logits, g)


@pytest.mark.parametrize("fn", REGION_FUNCS)
def test_target_outside_unit_interval_raises(fn):
    s, g = good_inputs()
    with pytest.raises(ValueError, match=r"target_onehot of shape \(2, 3, 4, 4\) has values"):
        fn(s, g * 2)


def test_integer_dist_maps_raise():
    s, g = good_inputs()
    with pytest.raises(TypeError, match="int64"):
        boundary_loss(s, g.long())


def test_validate_false_skips_value_checks_only():
    s, g = good_inputs()
    s[0, 0, 0, 0] = math.nan
    assert math.isnan(dice_loss(s, g, validate=False).item())
    with pytest.raises(ValueError, match="batch size"):
        dice_loss(s[:1], g, validate=False)


# ---------------------------------------------------------------------------
# modules


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 3, 2, 4)])
@pytest.mark.parametrize(
    ("module", "fn", "classes"),
    [
        (BoundaryLoss, boundary_loss, None),
        (BoundaryLoss, boundary_loss, [2]),
        (GeneralizedDiceLoss, generalized_dice_loss, None),
        (DiceLoss, dice_loss, [0, 2]),
        (CrossEntropyLoss, cross_entropy, None),
        (CrossEntropyLoss, cross_entropy, [1]),
    ],
)
def test_modules_match_functions(module, fn, classes, shape):
    logits = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(5))
    target = torch.randn(shape, dtype=F64) if fn is boundary_loss else random_onehot(shape, seed=6)
    probs = torch.softmax(logits, dim=1)
    expected = fn(probs, target, classes)
    torch.testing.assert_close(module(classes=classes)(probs, target), expected)
    torch.testing.assert_close(module(classes=classes, from_logits=True)(logits, target), expected)


def test_module_without_from_logits_rejects_logits():
    logits = torch.randn((1, 2, 3, 3)) * 3
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 3\)"):
        GeneralizedDiceLoss()(logits, random_onehot((1, 2, 3, 3), dtype=torch.float32))


@pytest.mark.parametrize("module", [GeneralizedDiceLoss, DiceLoss, CrossEntropyLoss])
def test_from_logits_module_gradcheck(module):
    logits = torch.randn((2, 3, 3, 2), dtype=F64).requires_grad_(True)
    g = random_onehot((2, 3, 3, 2))
    assert torch.autograd.gradcheck(lambda x: module(from_logits=True)(x, g), (logits,))


# ---------------------------------------------------------------------------
# combined loss and loss kinds


def combined_inputs(shape=(2, 3, 4, 4)):
    s = random_probs(shape).requires_grad_(True)
    g = random_onehot(shape)
    phi = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    return s, g, phi


@pytest.mark.parametrize("region", ["gdl", "dice", "ce", "gdl+ce"])
def test_combined_loss_is_weighted_sum(region):
    s, g, phi = combined_inputs()
    parts = combined_loss(s, g, phi, 0.3, 0.7, region=region)
    assert isinstance(parts, LossParts)
    region_fn = {
        "gdl": generalized_dice_loss,
        "dice": dice_loss,
        "ce": cross_entropy,
        "gdl+ce": lambda s, g: generalized_dice_loss(s, g) + cross_entropy(s, g),
    }[region]
    torch.testing.assert_close(parts.region, region_fn(s, g))
    torch.testing.assert_close(parts.boundary, boundary_loss(s, phi))
    torch.testing.assert_close(parts.total, 0.3 * parts.region + 0.7 * parts.boundary)


def test_combined_loss_zero_weight_term_reported_without_gradient():
    s, g, phi = combined_inputs()
    parts = combined_loss(s, g, phi, 1.0, 0.0)
    assert not parts.boundary.requires_grad
    torch.testing.assert_close(parts.boundary, boundary_loss(s, phi))
    parts.total.backward()
    expected = torch.autograd.grad(generalized_dice_loss(s, g), s)[0]
    torch.testing.assert_close(s.grad, expected)


def test_combined_loss_without_dist_maps():
    s, g, _ = combined_inputs()
    parts = combined_loss(s, g, None, 1.0, 0.0, region="ce")
    assert math.isnan(parts.boundary.item())
    torch.testing.assert_close(parts.total, cross_entropy(s, g))
    with pytest.raises(ValueError, match="dist_maps is None"):
        combined_loss(s, g, None, 0.5, 0.5)


@pytest.mark.parametrize(
    ("w_region", "w_boundary", "error"),
    [
        (0.0, 0.0, ValueError),
        (-0.1, 1.0, ValueError),
        (1.0, math.nan, ValueError),
        ("a", 1, TypeError),
    ],
)
def test_combined_loss_bad_weights(w_region, w_boundary, error):
    s, g, phi = combined_inputs()
    with pytest.raises(error):
        combined_loss(s, g, phi, w_region, w_boundary)


def test_combined_loss_validates_every_input():
    s, g, phi = combined_inputs()
    phi = phi.clone()
    phi[0, 1, 0, 0] = math.inf
    with pytest.raises(ValueError, match="dist_maps of shape"):
        combined_loss(s, g, phi, 0.5, 0.5)
    with pytest.raises(ValueError, match="unknown region loss 'bce'"):
        combined_loss(s, g, phi, 0.5, 0.5, region="bce")


@pytest.mark.parametrize(
    ("kind", "total"),
    [
        (LossKind.GDL, lambda s, g, phi: generalized_dice_loss(s, g)),
        ("bl", lambda s, g, phi: boundary_loss(s, phi)),
        (
            LossKind.GDL_BL,
            lambda s, g, phi: 0.25 * generalized_dice_loss(s, g) + 0.75 * boundary_loss(s, phi),
        ),
        ("ce", lambda s, g, phi: cross_entropy(s, g)),
        (LossKind.DICE, lambda s, g, phi: dice_loss(s, g)),
        ("gdl+ce", lambda s, g, phi: generalized_dice_loss(s, g) + cross_entropy(s, g)),
    ],
)
def test_loss_for_kind(kind, total):
    s, g, phi = combined_inputs()
    parts = loss_for_kind(kind, s, g, phi, (0.25, 0.75))
    torch.testing.assert_close(parts.total, total(s, g, phi))
    torch.testing.assert_close(parts.boundary, boundary_loss(s, phi))
    parts.total.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_loss_for_kind_rejects_unknown_kind():
    s, g, phi = combined_inputs()
    with pytest.raises(ValueError, match=r"'gdl\+bl'"):
        loss_for_kind("boundary", s, g, phi, (0.5, 0.5))


def test_loss_kind_values():
    assert [k.value for k in LossKind] == [
        "gdl", "bl", "gdl+bl", "ce", "dice", "gdl+ce", "gdl+monai-bl"
    ]  # fmt: skip


@pytest.mark.parametrize("fn", ["boundary_loss", "generalized_dice_loss"])
def test_empty_batch_raises_value_error_naming_it(fn):
    import napari_boundary_seg.core.losses as losses

    empty = torch.zeros(0, 2, 4, 4)
    with pytest.raises(ValueError, match="empty batch"):
        getattr(losses, fn)(empty, empty)


# ---------------------------------------------------------------------------
# the loss mask (only verified voxels teach)

MASKED_LOSSES = {
    "gdl": lambda p, g, d, m: generalized_dice_loss(p, g, mask=m),
    "dice": lambda p, g, d, m: dice_loss(p, g, mask=m),
    "ce": lambda p, g, d, m: cross_entropy(p, g, mask=m),
    "gdl+ce": lambda p, g, d, m: loss_for_kind("gdl+ce", p, g, d, mask=m).total,
    "bl": lambda p, g, d, m: boundary_loss(p, d, mask=m),
    "gdl+bl": lambda p, g, d, m: loss_for_kind("gdl+bl", p, g, d, (0.5, 0.5), mask=m).total,
}


def _masked_batch(ndim: int, seed: int = 0):
    """Logits, one-hot target, φ-like maps and a half mask of a 2-image batch."""
    gen = torch.Generator().manual_seed(seed)
    spatial = (6, 5) if ndim == 2 else (4, 5, 3)
    logits = torch.randn((2, 3, *spatial), generator=gen, dtype=F64, requires_grad=True)
    labels = torch.randint(0, 3, (2, *spatial), generator=gen)
    dist = torch.randn((2, 3, *spatial), generator=gen, dtype=F64)
    mask = torch.zeros((2, 1, *spatial), dtype=F64)
    mask[:, :, : spatial[0] // 2] = 1  # the first slices along axis 0 are verified
    return logits, one_hot(labels, 3, F64), dist, mask


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", sorted(MASKED_LOSSES))
def test_an_unverified_voxel_has_exactly_zero_gradient(name, ndim):
    logits, g, d, mask = _masked_batch(ndim)
    loss = MASKED_LOSSES[name](torch.softmax(logits, dim=1), g, d, mask)
    (grad,) = torch.autograd.grad(loss, logits)
    unverified = (mask == 0).expand_as(grad)
    assert torch.all(grad[unverified] == 0)
    assert grad[~unverified].abs().sum() > 0  # the verified voxels do teach


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", sorted(MASKED_LOSSES))
def test_a_full_mask_equals_no_mask(name, ndim):
    logits, g, d, _ = _masked_batch(ndim, seed=1)
    probs = torch.softmax(logits, dim=1)
    full = torch.ones((probs.shape[0], *probs.shape[2:]), dtype=torch.bool)  # (B, *spatial)
    unmasked = MASKED_LOSSES[name](probs, g, d, None)
    assert MASKED_LOSSES[name](probs, g, d, full).item() == pytest.approx(
        unmasked.item(), rel=1e-12, abs=1e-12
    )


@pytest.mark.parametrize("name", sorted(MASKED_LOSSES))
def test_masked_loss_is_the_loss_of_the_verified_voxels(name):
    """The masked value is the value of the verified part alone (an image without a
    verified voxel contributes nothing)."""
    logits, g, d, mask = _masked_batch(3, seed=2)
    probs = torch.softmax(logits, dim=1).detach()
    mask[1] = 0  # the second image has no verified voxel
    part = (slice(0, 1), slice(None), slice(0, 2))
    expected = MASKED_LOSSES[name](probs[part], g[part], d[part], None)
    got = MASKED_LOSSES[name](probs, g, d, mask)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)


def test_mask_none_is_bit_for_bit_the_unmasked_loss():
    logits, g, d, _ = _masked_batch(3, seed=3)
    probs = torch.softmax(logits, dim=1).float()
    g, d = g.float(), d.float()
    for kind in ("gdl", "bl", "gdl+bl", "ce", "dice", "gdl+ce"):
        a = loss_for_kind(kind, probs, g, d, (0.3, 0.7))
        b = loss_for_kind(kind, probs, g, d, (0.3, 0.7), mask=None)
        assert torch.equal(a.total, b.total) and torch.equal(a.region, b.region)


def test_mask_of_the_wrong_shape_or_values_is_refused():
    logits, g, d, mask = _masked_batch(2)
    probs = torch.softmax(logits, dim=1)
    with pytest.raises(ValueError, match="mask shape"):
        generalized_dice_loss(probs, g, mask=mask[:, :, :2])
    with pytest.raises(ValueError, match=r"mask .*outside \[0, 1\]"):
        boundary_loss(probs, d, mask=mask * 2)
