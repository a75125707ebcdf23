"""An N-dimensional UNet (Ronneberger et al., 2015), the network of the boundary-loss paper.

Each resolution level has two ``3×3(×3) conv → BatchNorm → ReLU`` blocks; the
encoder max-pools between levels (by 2 along every axis by default, or by the
per-level ``strides``) and doubles the width, the decoder upsamples by the same
strides (transposed convolution, or linear interpolation followed by a ``1×1``
convolution), concatenates the skip connection of the same level and applies
two blocks again; a ``1×1`` convolution gives the class logits.
``spatial_dims=2`` builds it with 2D layers (the paper's setting, the default),
``spatial_dims=3`` with 3D layers, from the same code.

Input of any spatial size is accepted: the network pads the input (zeros, at the
end of each axis) up to a multiple of the product of that axis's strides
(:attr:`UNet.size_multiples`) and crops the logits back, so the output always
has the input's spatial shape.

Anisotropic pooling: :func:`pooling_strides` gives per-level strides from the
voxel spacing and the patch size with nnU-Net's rule (Isensee et al. 2021): at
each level, an axis is pooled only while its spacing is less than twice the
finest spacing of that level and its feature size stays at least
``2 * min_size``; a thick-slice axis (e.g. 1×1×3 mm) is then not pooled until
the in-plane axes have caught up.

Why our own UNet and not MONAI's ``DynUNet``: DynUNet is the nnU-Net design
(strided-convolution downsampling, instance norm, leaky ReLU, deep supervision)
and names its layers differently; the checkpoints of version 0.1 hold this
UNet's ``state_dict`` (max pooling, batch norm, ``encoders``/``decoders``/
``head``), which must keep loading and predicting identically. Making the few
layer classes depend on ``spatial_dims`` and the pooling on ``strides`` keeps
every parameter name and every operation of the 2D network (a 2D UNet with the
default strides is the 0.1 network, bit for bit), for about forty lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_boundary_seg.core.validate import check_unet_size

__all__ = ["UPSAMPLE_MODES", "UNet", "pooling_strides"]

UPSAMPLE_MODES = ("transpose", "bilinear")
"""``"transpose"``: transposed convolution; ``"bilinear"``: linear interpolation
(bilinear in 2D, trilinear in 3D) followed by a 1×1 convolution."""

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_LINEAR = {2: "bilinear", 3: "trilinear"}


def pooling_strides(
    spacing: Sequence[float],
    patch_size: Sequence[int] | None,
    depth: int,
    min_size: int = 4,
) -> tuple[tuple[int, ...], ...]:
    """Per-level pooling strides for a voxel spacing, nnU-Net's rule.

    Parameters
    ----------
    spacing
        Voxel size per spatial axis (mm, numpy axis order).
    patch_size
        Network input size per axis (voxels); None: no size limit.
    depth
        Resolution levels of the UNet (``depth - 1`` poolings).
    min_size
        An axis is pooled only while its feature size is at least
        ``2 * min_size`` (nnU-Net: 4).

    Returns
    -------
    tuple of tuples
        ``depth - 1`` strides, each with one value (1 or 2) per axis. At each
        level an axis is pooled (2) when it is large enough and its current
        spacing is less than twice the finest current spacing among the axes
        large enough (as nnU-Net's ``get_pool_and_conv_props``); pooling
        doubles its spacing and halves its size (rounded up). A level where no
        axis qualifies has strides of 1 (no pooling).

    Examples
    --------
    >>> pooling_strides((3.0, 1.0, 1.0), (32, 128, 128), 4)
    ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    """
    spacing = [float(s) for s in spacing]
    if not spacing or any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing must be positive numbers, got {tuple(spacing)}")
    for name, value in (("depth", depth), ("min_size", min_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if patch_size is not None:
        sizes = [int(p) for p in patch_size]
        if len(sizes) != len(spacing) or any(p < 1 for p in sizes):
            raise ValueError(
                f"patch_size {tuple(patch_size)} must have one positive size per axis of "
                f"spacing {tuple(spacing)}"
            )
    else:
        sizes = [None] * len(spacing)
    strides = []
    for _ in range(depth - 1):
        large = [a for a in range(len(spacing)) if sizes[a] is None or sizes[a] >= 2 * min_size]
        finest = min((spacing[a] for a in large), default=math.inf)
        level = tuple(
            2 if a in large and spacing[a] / finest < 2 else 1 for a in range(len(spacing))
        )
        for a, s in enumerate(level):
            if s == 2:
                spacing[a] *= 2
                sizes[a] = None if sizes[a] is None else -(-sizes[a] // 2)
        strides.append(level)
    return tuple(strides)


def _check_strides(strides: Any, depth: int, spatial_dims: int) -> tuple[tuple[int, ...], ...]:
    if strides is None:
        return ((2,) * spatial_dims,) * (depth - 1)
    if isinstance(strides, str | bytes) or not isinstance(strides, Sequence):
        raise ValueError(f"UNet strides must be a sequence of per-level strides, got {strides!r}")
    if len(strides) != depth - 1:
        raise ValueError(
            f"UNet strides must have depth - 1 = {depth - 1} levels, got {len(strides)}: "
            f"{strides!r}"
        )
    out = []
    for level in strides:
        values = (level,) * spatial_dims if isinstance(level, int) else level
        if (
            isinstance(values, str | bytes)
            or not isinstance(values, Sequence)
            or len(values) != spatial_dims
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
        ):
            raise ValueError(
                f"UNet strides: each level must be a positive integer or {spatial_dims} of "
                f"them, got {level!r}"
            )
        out.append(tuple(int(v) for v in values))
    return tuple(out)


class ConvBlock(nn.Sequential):
    """Two ``3×3(×3) conv → BatchNorm → ReLU`` layers, ``(B, in, *S) → (B, out, *S)``."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2) -> None:
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample by ``stride``, concatenate the skip connection, apply a :class:`ConvBlock`.

    ``(B, in, *S), skip (B, skip, *S·stride) → (B, out, *S·stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        mode: str,
        spatial_dims: int = 2,
        stride: int | tuple[int, ...] = 2,
    ) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = _CONV_T[spatial_dims](
                in_channels, out_channels, kernel_size=stride, stride=stride
            )
        else:
            factor = stride if isinstance(stride, int) else tuple(float(s) for s in stride)
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=factor, mode=_LINEAR[spatial_dims], align_corners=False),
                _CONV[spatial_dims](in_channels, out_channels, kernel_size=1),
            )
        self.block = ConvBlock(out_channels + skip_channels, out_channels, spatial_dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """2D or 3D UNet returning class logits.

    Parameters
    ----------
    in_channels
        Number of input channels (stacked modalities), ``M``.
    num_classes
        Number of output classes ``C`` (background included).
    depth
        Number of resolution levels, bottleneck included (``depth - 1`` poolings).
        The paper's UNet has 5; the default 4 is lighter and trains as well on
        the small lesions of the benchmark.
    base_channels
        Width of the first level; each level below doubles it.
    upsample
        ``"transpose"`` (transposed convolution, as in the original UNet) or
        ``"bilinear"`` (linear interpolation, trilinear in 3D, followed by a
        1×1 convolution).
    spatial_dims
        2 (slices, the default) or 3 (volumes or patches).
    strides
        Pooling (and upsampling) factor of each of the ``depth - 1`` levels,
        top first: each an integer or one integer per spatial axis, e.g.
        ``((1, 2, 2), (2, 2, 2))`` from :func:`pooling_strides`. None: 2 along
        every axis at every level.

    Notes
    -----
    ``forward`` takes ``(B, M, *spatial)`` float with ``spatial_dims`` spatial
    axes and returns ``(B, C, *spatial)`` logits (apply ``softmax(dim=1)`` for
    probabilities). Any spatial size works: the input is zero-padded at the end
    of each axis to a multiple of :attr:`size_multiples` and the logits are
    cropped back.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 4,
        base_channels: int = 64,
        upsample: str = "transpose",
        spatial_dims: int = 2,
        strides: Sequence[int | Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("num_classes", num_classes, 2),
            ("depth", depth, 1),
            ("base_channels", base_channels, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"UNet {name} must be an integer >= {low}, got {value!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"UNet upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
            raise ValueError(f"UNet spatial_dims must be 2 or 3, got {spatial_dims!r}")
        # bound what may be allocated (an edited checkpoint, an absurd argument)
        check_unet_size(
            depth,
            base_channels,
            in_channels,
            num_classes,
            ("UNet depth", "UNet base_channels"),
            spatial_dims=spatial_dims,
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.base_channels = base_channels
        self.upsample = upsample
        self.spatial_dims = spatial_dims
        self.strides = _check_strides(strides, depth, spatial_dims)

        widths = [base_channels * 2**level for level in range(depth)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoders.append(ConvBlock(previous, width, spatial_dims))
            previous = width
        # max pooling has no parameters: the state_dict keys are those of the 0.1 UNet
        self.pools = nn.ModuleList(_POOL[spatial_dims](s, stride=s) for s in self.strides)
        self.decoders = nn.ModuleList(
            Up(
                widths[level + 1],
                widths[level],
                widths[level],
                upsample,
                spatial_dims,
                self.strides[level],
            )
            for level in reversed(range(depth - 1))
        )
        self.head = _CONV[spatial_dims](widths[0], num_classes, kernel_size=1)

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the network (stored in checkpoints)."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "depth": self.depth,
            "base_channels": self.base_channels,
            "upsample": self.upsample,
            "spatial_dims": self.spatial_dims,
            "strides": [list(s) for s in self.strides],
        }

    @property
    def size_multiples(self) -> tuple[int, ...]:
        """Per spatial axis, inputs are padded internally to a multiple of this size."""
        return tuple(
            math.prod(level[a] for level in self.strides) for a in range(self.spatial_dims)
        )

    @property
    def size_multiple(self) -> int:
        """One size that is a multiple of every axis's :attr:`size_multiples` (their lcm).

        ``2 ** (depth - 1)`` with the default strides, as in version 0.1.
        """
        return math.lcm(*self.size_multiples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, *spatial)`` of an input ``(B, M, *spatial)``."""
        if x.ndim != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            axes = ", ".join("DHW"[-self.spatial_dims :])
            raise ValueError(
                f"UNet expects input of shape (B, {self.in_channels}, {axes}), got {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        pads = [-size % m for size, m in zip(spatial, self.size_multiples, strict=True)]
        if any(pads):
            # F.pad takes (last axis before, after, previous axis ...)
            x = F.pad(x, [v for p in reversed(pads) for v in (0, p)])
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pools[level - 1](x)
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        logits = self.head(x)
        if any(pads):
            logits = logits[(..., *(slice(0, s) for s in spatial))]
        return logits
