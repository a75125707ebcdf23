"""A 2D UNet (Ronneberger et al., 2015), the network of the boundary-loss paper.

Each resolution level has two ``3×3 conv → BatchNorm → ReLU`` blocks; the
encoder halves the resolution with ``2×2`` max pooling and doubles the width,
the decoder upsamples (transposed convolution, or bilinear interpolation followed
by a ``1×1`` convolution), concatenates the skip connection of the same level and
applies two blocks again; a ``1×1`` convolution gives the class logits.

Input of any height and width is accepted: the network pads the input (zeros,
bottom and right) up to a multiple of ``2 ** (depth - 1)`` and crops the logits
back, so the output always has the input's spatial shape.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_boundary_seg.core.validate import check_unet_size

UPSAMPLE_MODES = ("transpose", "bilinear")


class ConvBlock(nn.Sequential):
    """Two ``3×3 conv → BatchNorm → ReLU`` layers, ``(B, in, H, W) → (B, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample by 2, concatenate the skip connection, apply a :class:`ConvBlock`.

    ``(B, in, H, W), skip (B, skip, 2H, 2W) → (B, out, 2H, 2W)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size=2, stride=2
            )
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        self.block = ConvBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """2D UNet returning class logits.

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
        ``"transpose"`` (transposed 2×2 convolution, as in the original UNet) or
        ``"bilinear"`` (bilinear interpolation followed by a 1×1 convolution).

    Notes
    -----
    ``forward`` takes ``(B, M, H, W)`` float and returns ``(B, C, H, W)`` logits
    (apply ``softmax(dim=1)`` for probabilities). Any ``H, W`` work: the input is
    zero-padded to a multiple of ``2 ** (depth - 1)`` and the logits cropped back.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 4,
        base_channels: int = 64,
        upsample: str = "transpose",
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
        # bound what may be allocated (an edited checkpoint, an absurd argument)
        check_unet_size(
            depth, base_channels, in_channels, num_classes, ("UNet depth", "UNet base_channels")
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.base_channels = base_channels
        self.upsample = upsample

        widths = [base_channels * 2**level for level in range(depth)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoders.append(ConvBlock(previous, width))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.decoders = nn.ModuleList(
            Up(widths[level + 1], widths[level], widths[level], upsample)
            for level in reversed(range(depth - 1))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the network (stored in checkpoints)."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "depth": self.depth,
            "base_channels": self.base_channels,
            "upsample": self.upsample,
        }

    @property
    def size_multiple(self) -> int:
        """Inputs are padded internally to a multiple of this size."""
        return 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` of an input ``(B, M, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        multiple = self.size_multiple
        pad_h = -height % multiple
        pad_w = -width % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        logits = self.head(x)
        if pad_h or pad_w:
            logits = logits[..., :height, :width]
        return logits
