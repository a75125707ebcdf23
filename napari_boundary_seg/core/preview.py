"""Live preview: one slice of a volume predicted by the model being trained.

The Train widget calls :meth:`SlicePreview.predict` after each epoch, in its
worker thread, for the slice the viewer shows. The volume is scaled to [0, 1]
once, as a whole (as :func:`napari_boundary_seg.core.predict.predict_volume`
scales it), so that a slice is scaled the way the full prediction will scale
it; the slice then goes through ``predict_volume`` itself (resizing to the
training slice size and back), so the preview is exactly that slice of the
prediction the run would give at this epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SlicePreview"]


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

    def __init__(self, images: np.ndarray, spacing: Sequence[float], preprocess: Any) -> None:
        from napari_boundary_seg.core.data import _scale_unit

        images = np.asarray(images, dtype=np.float32)
        if images.ndim not in (3, 4):
            raise ValueError(f"images must be (M, *spatial) with 2 or 3 axes, got {images.shape}")
        if len(spacing) != images.ndim - 1:
            raise ValueError(f"spacing {tuple(spacing)} does not fit images {images.shape}")
        if preprocess.scale:
            images = np.stack([_scale_unit(m, preprocess.percentiles) for m in images])
        self.images = images
        self.spacing = tuple(float(s) for s in spacing)
        self.preprocess = dataclasses.replace(preprocess, scale=False)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The volume's spatial shape."""
        return tuple(self.images.shape[1:])

    def predict(self, model: Any, axis: int, index: int) -> np.ndarray:
        """The predicted labels of slice ``index`` along ``axis``.

        Parameters
        ----------
        model
            A network mapping ``(B, M, H, W)`` to ``(B, C, H, W)`` logits (left
            on its device and in its train/eval mode).
        axis, index
            The slice (numpy axis order); ignored for a 2D image.

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
        plane = np.take(self.images, index, axis=1 + axis)
        spacing = tuple(s for k, s in enumerate(self.spacing) if k != axis)
        _, labels = predict_volume(model, plane, spacing, preprocess=self.preprocess)
        return labels
