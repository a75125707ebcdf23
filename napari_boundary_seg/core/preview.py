"""Live preview: one slice of a volume predicted by the model being trained.

The Train widget calls :meth:`SlicePreview.predict` after each epoch, in its
worker thread, for the slice the viewer shows. The volume is scaled to [0, 1]
once, as a whole (as :func:`napari_boundary_seg.core.predict.predict_volume`
scales it), so that a slice is scaled the way the full prediction will scale
it. The model's mode (:func:`~napari_boundary_seg.core.modes.mode_for`, from
its ``spatial_dims``) predicts the slice: a 2D model's slice goes through the
slice predictor (resizing to the training slice size and back); a 3D model
sees the slab of the volume that the full prediction's windows covering that
slice span (:func:`covering_slab`), through the sliding window with the same
patch size and overlap: the same windows, the same Gaussian weights, at a
fraction of the cost of the whole volume. Either way the preview is that slice
of the prediction the run would give at this epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_boundary_seg.core.modes import mode_for
from napari_boundary_seg.core.modes.patches import covering_slab

__all__ = ["SlicePreview", "covering_slab"]


class SlicePreview:
    """Predict single slices of one volume with a model, cheaply and repeatedly.

    Parameters
    ----------
    images
        ``(M, *spatial)`` float32 modalities, 2 or 3 spatial axes.
    spacing
        Voxel size per spatial axis (mm, numpy axis order).
    preprocess
        The run's :class:`~napari_boundary_seg.core.data.PreprocessConfig`
        (scaling, percentiles, slice size).
    """

    def __init__(
        self,
        images: np.ndarray,
        spacing: Sequence[float],
        preprocess: Any,
        affine: np.ndarray | None = None,
    ) -> None:
        from napari_boundary_seg.core.data import normalize_volume

        images = np.asarray(images, dtype=np.float32)
        if images.ndim not in (3, 4):
            raise ValueError(f"images must be (M, *spatial) with 2 or 3 axes, got {images.shape}")
        if len(spacing) != images.ndim - 1:
            raise ValueError(f"spacing {tuple(spacing)} does not fit images {images.shape}")
        if preprocess.scale:  # the whole volume once, by the run's rule
            images = np.stack(
                [normalize_volume(m, preprocess.normalize, preprocess.percentiles) for m in images]
            )
        self.images = images
        self.spacing = tuple(float(s) for s in spacing)
        self.affine = None if affine is None else np.asarray(affine, dtype=float)
        # normalised above; no crop of a one-slice slab (its head was found on the whole)
        self.preprocess = dataclasses.replace(preprocess, scale=False, crop=False)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The volume's spatial shape."""
        return tuple(self.images.shape[1:])

    def predict(
        self,
        model: Any,
        axis: int,
        index: int,
        patch_size: Sequence[int] | None = None,
        overlap: float = 0.5,
    ) -> np.ndarray:
        """The predicted labels of slice ``index`` along ``axis``.

        Parameters
        ----------
        model
            A 2D network mapping ``(B, M, H, W)`` to ``(B, C, H, W)`` logits, or a
            3D one (``spatial_dims`` 3) mapping ``(B, M, *patch_size)`` to
            ``(B, C, *patch_size)`` (left on its device and in its train/eval mode).
        axis, index
            The slice (numpy axis order); ignored for a 2D image.
        patch_size
            3D model: the sliding window (the checkpoint's training patch size).
        overlap
            3D model: the sliding window's overlap (as ``predict_volume``).

        Returns
        -------
        numpy.ndarray
            ``(*slice shape)`` int64 labels (the whole image in 2D).
        """
        from napari_boundary_seg.core.predict import predict_volume

        if self.images.ndim == 3:
            _, labels = predict_volume(model, self.images, self.spacing, preprocess=self.preprocess)
            return labels
        if not 0 <= axis < 3:
            raise ValueError(f"axis must be 0, 1 or 2 for a 3D volume, got {axis}")
        n = self.images.shape[1 + axis]
        if not 0 <= index < n:
            raise ValueError(f"slice {index} is outside the {n} slices of axis {axis}")
        return mode_for(model, patch_size).preview(model, self, axis, index, overlap)
