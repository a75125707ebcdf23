"""3D patches of the volumes, predicted by Gaussian sliding windows (:class:`PatchMode`).

Training: the cases are cached as whole volumes with the φ of the whole
volume (:func:`~napari_boundary_seg.core.patches.iter_cache_cases`, read
memory-mapped); an item is a patch keyed by ``(epoch, index)``
(:class:`~napari_boundary_seg.core.patches.PatchDataset`: a share centred on
foreground, augmentation that keeps φ exact), the UNet pools anisotropically
for the first training case's spacing. Prediction, validation and the
preview: :func:`iter_sliding_window`, windows of the training patch with
Gaussian weights. Fine-tuning: :class:`CorrectedPatches`, patches holding a
verified slice, with a loss mask of the verified slices. See
``docs/DESIGN.md``, "The modes" and "Fine-tuning".

MONAI pieces used: ``monai.data.utils.dense_patch_slices`` (the window grid,
the last window flush with the far edge) and
``compute_importance_map(mode="gaussian")`` (the nnU-Net-style Gaussian weight
map). Not ``monai.inferers.sliding_window_inference`` itself: it runs every
window in one call, so it could neither report progress per batch nor stop or
pause between batches, which the widgets need; the loop around the two pieces
is a dozen lines. Probabilities, not logits, are blended, so the channels of
the result sum to 1 like those of the slice mode.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from napari_boundary_seg.core import augment as _augment
from napari_boundary_seg.core.events import InfoEvent
from napari_boundary_seg.core.modes.base import (
    FinetuneRequest,
    FinetuneSamples,
    PredictOptions,
    TrainingData,
    TrainingMode,
    as_channels,
    cache_settings,
    case_scores,
    check_axis,
    check_count,
    check_patch,
    check_slices,
    iter_mix_sources,
    model_device,
    slab_distance_maps,
    softmax_probs,
    target_device,
    val_summary,
)
from napari_boundary_seg.core.patches import (
    PatchDataset,
    VolumeEntry,
    patch_start,
    sample_rng,
    takes_share,
)
from napari_boundary_seg.core.progress import Progress, run_to_end

logger = logging.getLogger(__name__)

__all__ = [
    "CorrectedPatches",
    "PatchMode",
    "covering_slab",
    "iter_sliding_window",
    "sliding_window_probs",
]


def covering_slab(size: int, patch: int, index: int, overlap: float = 0.5) -> slice:
    """The span, along one axis, of the sliding windows that cover voxel ``index``.

    The windows are those :func:`~napari_boundary_seg.core.predict.iter_sliding_window`
    lays along an axis of ``size`` voxels (``patch`` long, stepping
    ``int(patch * (1 - overlap))``, the last flush with the far edge: MONAI's
    ``dense_patch_slices``). Cropped to this span, the sliding window over the
    slab runs exactly those windows, so slice ``index`` of its result is slice
    ``index`` of the whole volume's. An axis no longer than the patch is
    returned whole.

    Examples
    --------
    >>> covering_slab(96, 32, 40)  # windows at 0, 16, ..., 64: those at 16 and 32
    slice(16, 64, None)
    """
    from monai.data.utils import dense_patch_slices

    if not 0 <= index < size:
        raise ValueError(f"index {index} is outside an axis of {size} voxels")
    if size <= patch:
        return slice(0, size)
    interval = max(int(patch * (1 - overlap)), 1)
    starts = [w[0].start for w in dense_patch_slices((size,), (patch,), (interval,))]
    covering = [s for s in starts if s <= index < s + patch]
    return slice(min(covering), max(covering) + patch)


def iter_sliding_window(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    sigma_scale: float = 0.125,
    flips: bool = False,
) -> Generator[Progress, None, torch.Tensor]:
    """Softmax probabilities of a whole image from overlapping windows, Gaussian-weighted.

    The windows (``patch_size``, stepping ``int(patch * (1 - overlap))`` voxels,
    the last one flush with the far edge: MONAI's ``dense_patch_slices``) run
    through ``model`` ``sw_batch_size`` at a time on the model's device; each
    window's softmax probabilities are weighted by a Gaussian centred on the
    window (sigma ``sigma_scale * patch`` per axis, floored at 1e-3 of its peak:
    MONAI's ``compute_importance_map(mode="gaussian")``) and the weighted sums
    are divided by the summed weights, so the channels still sum to 1. An axis
    shorter than the window is zero-padded on both sides (half each) and the
    result cropped back. The model is used as it is (call ``.eval()`` first).

    Parameters
    ----------
    model
        Takes ``(B, M, *patch_size)`` and returns ``(B, C, *patch_size)`` logits.
    image
        ``(M, *spatial)`` preprocessed input, any number of spatial axes.
    patch_size
        Window size per spatial axis (voxels).
    overlap
        Share of a window that overlaps the next one along each axis, in [0, 1).
    sw_batch_size
        Windows per forward pass.
    sigma_scale
        Gaussian sigma as a share of the window size.
    flips
        Test-time mirroring of each window
        (:func:`~napari_boundary_seg.core.modes.base.softmax_probs`).

    Yields
    ------
    Progress
        Once before the first batch, then after each batch of windows.

    Returns
    -------
    torch.Tensor
        ``(C, *spatial)`` float32 probabilities on the model's device.
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices

    if not isinstance(overlap, int | float) or not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a number in [0, 1), got {overlap!r}")
    check_count("sw_batch_size", sw_batch_size)
    spatial = tuple(image.shape[1:])
    patch = check_patch(patch_size, len(spatial))
    target = model_device(model)
    with torch.inference_mode():
        x = torch.as_tensor(image, dtype=torch.float32).to(target)[None]  # (1, M, *spatial)
        pads = [
            (max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2)
            for s, p in zip(spatial, patch, strict=True)
        ]
        if any(b or a for b, a in pads):
            x = F.pad(x, [v for pair in reversed(pads) for v in pair])
        padded = tuple(x.shape[2:])
        interval = [
            p if p == s else max(int(p * (1 - overlap)), 1)
            for s, p in zip(padded, patch, strict=True)
        ]
        windows = dense_patch_slices(padded, patch, interval)
        weight = compute_importance_map(
            patch, mode="gaussian", sigma_scale=sigma_scale, device=target
        )
    total = -(-len(windows) // sw_batch_size)
    yield Progress(0, total, f"predicting {len(windows)} windows")
    out: torch.Tensor | None = None
    norm: torch.Tensor | None = None
    for b, start in enumerate(range(0, len(windows), sw_batch_size)):
        chunk = windows[start : start + sw_batch_size]
        with torch.inference_mode():
            batch = torch.cat([x[(slice(None), slice(None), *w)] for w in chunk])
            probs = softmax_probs(model, batch, flips) * weight
            if out is None:
                out = torch.zeros((probs.shape[1], *padded), device=target)
                norm = torch.zeros(padded, device=target)
            for k, w in enumerate(chunk):
                out[(slice(None), *w)] += probs[k]
                norm[w] += weight
        yield Progress(b + 1, total, f"windows {start + len(chunk)}/{len(windows)}")
    with torch.inference_mode():
        result = out / norm
        crop = tuple(slice(b, b + s) for (b, _), s in zip(pads, spatial, strict=True))
        return result[(slice(None), *crop)].contiguous()


def sliding_window_probs(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    batch_size: int = 2,
    overlap: float = 0.5,
) -> torch.Tensor:
    """Probabilities ``(C, *V)`` of ``image (M, *V)``: :func:`iter_sliding_window`
    run to its end (``batch_size`` windows per pass); the model is used as it is."""
    return run_to_end(
        iter_sliding_window(model, image, patch_size, overlap=overlap, sw_batch_size=batch_size)
    )


class PatchMode(TrainingMode):
    """3D patches of ``patch_size`` voxels (numpy axis order); whole volumes are
    predicted by Gaussian-weighted sliding windows of that size.

    ``patch_size`` may be None where it is not known yet (a bare 3D model
    before :meth:`inference_settings` is given one).
    """

    dims: ClassVar[int] = 3
    items: ClassVar[str] = "patches"
    shares_dataset: ClassVar[bool] = False

    def __init__(self, patch_size: Sequence[int] | None = None) -> None:
        self._patch = None if patch_size is None else tuple(patch_size)

    @classmethod
    def of(cls, patch_size: Sequence[int] | None) -> PatchMode:
        return cls(patch_size)

    @property
    def patch_size(self) -> tuple[int, ...] | None:
        return self._patch

    def __repr__(self) -> str:
        return f"PatchMode({self._patch!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PatchMode) and other._patch == self._patch

    def __hash__(self) -> int:
        return hash((PatchMode, self._patch))

    def items_text(self, config: Any) -> str:
        augmented = "augmented " if config.augment_enabled else ""
        return f"{augmented}3D patches of {'×'.join(map(str, self._patch))}"

    # -- preparation --------------------------------------------------------

    def check_shapes(self, cases: Sequence[Any], shapes: Sequence[tuple[int, ...]]) -> None:
        """Every volume at least as large as the patch along each axis."""
        for source, shape in zip(cases, shapes, strict=True):
            if len(shape) == 3 and any(s < p for s, p in zip(shape, self._patch, strict=True)):
                raise ValueError(
                    f"case {source.case_id} of shape {shape} is smaller than the patch "
                    f"{self._patch}; choose a patch_size no larger than every volume"
                )

    def iter_cache_training(
        self, config: Any, cases: list[Any], cache_dir: Path
    ) -> Generator[Any, None, list[Any]]:
        """The training cases in the volume cache (scaled images, labels, φ of the
        whole volume with its spacing)."""
        from napari_boundary_seg.core.patches import iter_cache_cases

        return (yield from iter_cache_cases(cases, *cache_settings(config, cache_dir)))

    def check_entries(self, entries: Sequence[Any]) -> None:
        dims = {len(e.shape) for e in entries}
        if dims != {3}:
            raise ValueError(f"dims=3 needs 3D volumes, got cases with {sorted(dims)} spatial axes")

    def training_dataset(self, config: Any, entries: Sequence[Any]) -> Any:
        """Patches keyed by ``(epoch, index)``, a share ``oversample`` centred on
        foreground, augmented unless ``augment=False``."""
        from napari_boundary_seg.core.augment import AugmentConfig

        return PatchDataset(
            entries,
            self._patch,
            oversample=config.oversample,
            seed=config.seed,
            augment=AugmentConfig() if config.augment_enabled else None,
        )

    def check_prebuilt(self, dataset: Any) -> None:
        if not hasattr(dataset, "patch_size"):
            raise ValueError(
                "train(dataset=...) with dims=3 needs a patch data set keyed by (epoch, index) "
                "(with a patch_size, as core.patches.PatchDataset), not a 2D slice data set"
            )

    def training_items(self, config: Any, data: TrainingData) -> TrainingData:
        data.items = data.dataset  # augmented inside the patch data set
        return data

    def network(self, config: Any, data: TrainingData) -> dict[str, Any]:
        """A 3D UNet with nnU-Net's anisotropic pooling for the first training
        case's spacing and the patch."""
        from napari_boundary_seg.core.unet import pooling_strides

        hparams = super().network(config, data)
        hparams["spatial_dims"] = 3
        hparams["strides"] = [
            list(s) for s in pooling_strides(data.train_cases[0].spacing, self._patch, config.depth)
        ]
        return hparams

    # -- an epoch -------------------------------------------------------------

    def epoch_size(self, config: Any, num_items: int, world_size: int = 1) -> tuple[int, int]:
        """``config.steps_per_epoch`` steps (capped by ``max_steps_per_epoch``), each
        drawing ``batch_size`` fresh patches per process; ``None``: one tiling of
        the training volumes (``num_items`` patches) as the base mode counts it."""
        steps = config.steps_per_epoch
        if steps is None:
            return super().epoch_size(config, num_items, world_size)
        if config.max_steps_per_epoch is not None:
            steps = min(steps, config.max_steps_per_epoch)
        return steps, steps * config.batch_size * world_size

    def batches(
        self,
        data: TrainingData,
        config: Any,
        epoch: int,
        start_step: int,
        stop_step: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """The epoch's patch indices interleaved over the ranks, keyed by ``(epoch, index)``."""
        from napari_boundary_seg.core.patches import epoch_batches, iter_keyed_batches

        keys = epoch_batches(
            epoch,
            config.batch_size,
            start_step,
            stop_step,
            None,
            rank=rank,
            world_size=world_size,
        )
        return iter_keyed_batches(data.items, keys, config.num_workers, config.seed)

    def validate(
        self, model: nn.Module, cases: Sequence[Any], config: Any, device: torch.device
    ) -> dict[str, float]:
        """Each cached validation case read one at a time (memory-mapped) and
        predicted by sliding windows of the patch (``config.batch_size`` per pass)."""
        scores = []
        was_training = model.training
        model.eval()
        try:
            for entry in cases:
                image = np.array(entry.open("image"), dtype=np.float32)
                probs = sliding_window_probs(model, image, self._patch, config.batch_size)
                pred = probs.argmax(0).cpu().numpy()
                del image, probs
                labels = np.asarray(entry.open("labels"))
                scores.append(case_scores(pred, labels, entry.spacing, config.num_classes))
        finally:
            model.train(was_training)
        return val_summary(scores)

    # -- inference -----------------------------------------------------------

    def inference_settings(self, settings: Any, patch_size: Sequence[int] | None) -> Any:
        """The window: ``patch_size`` if given, else the training patch; required."""
        if patch_size is not None:
            settings = settings.replace(patch_size=tuple(patch_size))
        if settings.patch_size is None:
            raise ValueError("a 3D model needs a patch_size (the sliding window's size)")
        return settings.replace(patch_size=check_patch(settings.patch_size, 3))

    def iter_predict(
        self,
        model: nn.Module,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        settings: Any,
        options: PredictOptions,
    ) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
        """Orientation and intensity scaling as in training (no slicing, no
        resizing: the volume stays at its own spacing), then
        :func:`iter_sliding_window` with ``settings.patch_size``, then back to the
        stored order."""
        from napari_boundary_seg.core.data import case_from_arrays, preprocess_case
        from napari_boundary_seg.core.orientation import canonical_orientation

        in_channels = int(getattr(model, "in_channels", 1))
        images = as_channels(volume, in_channels, spacing, spatial_only=True)
        if images.ndim != 4:
            raise ValueError(
                f"a 3D model needs a volume with 3 spatial axes, got shape {np.shape(volume)}"
            )
        if spacing is None:
            spacing = (1.0,) * 3
        affine = options.affine if settings.preprocess.canonical else None
        orientation = canonical_orientation(affine)
        images = np.ascontiguousarray(orientation.to_canonical(images, lead=1))
        prep = dataclasses.replace(
            settings.preprocess,
            slice_size=None,
            slice_spacing=None,
            axis=0,
            canonical=False,
            crop=False,
        )
        case = case_from_arrays(list(images), None, orientation.spacing(spacing), case_id="predict")
        scaled = np.swapaxes(preprocess_case(case, prep).images, 0, 1)  # (M, *spatial)
        target = target_device(model, options.device)
        original_device = model_device(model)
        was_training = model.training
        model.to(target).eval()
        try:
            probs = yield from iter_sliding_window(
                model,
                scaled,
                settings.patch_size,
                overlap=options.overlap,
                sw_batch_size=options.sw_batch_size,
                flips=options.flips,
            )
        finally:
            model.to(original_device)
            model.train(was_training)
        probs_vol = orientation.from_canonical(probs.cpu().numpy(), lead=1)
        probs_vol = np.ascontiguousarray(probs_vol, dtype=np.float32)
        labels = probs_vol.argmax(axis=0).astype(np.int64)
        return probs_vol, labels

    def preview(
        self, model: nn.Module, preview: Any, axis: int, index: int, overlap: float
    ) -> np.ndarray:
        """The sliding window over the slab of the windows covering the slice
        (:func:`covering_slab`): the same windows and weights as the whole volume's."""
        patch_size = self._patch
        if patch_size is None or len(tuple(patch_size)) != 3:
            raise ValueError(f"a 3D model needs a 3-axis patch_size, got {patch_size!r}")
        patch = tuple(int(p) for p in patch_size)
        images = preview.images
        slab = covering_slab(images.shape[1 + axis], patch[axis], index, overlap)
        crop = [slice(None)] * 4
        crop[1 + axis] = slab
        was_training = model.training
        model.eval()
        try:
            probs = run_to_end(
                iter_sliding_window(model, images[tuple(crop)], patch, overlap=overlap)
            )
        finally:
            model.train(was_training)
        labels = probs.cpu().numpy().argmax(axis=0).astype(np.int64)
        return np.take(labels, index - slab.start, axis=axis)

    # -- fine-tuning ---------------------------------------------------------

    def check_finetune_images(self, shape: tuple[int, ...], parent: str) -> None:
        if len(shape) != 4:
            raise ValueError(
                f"{parent} was trained in 3D (patches); fine-tuning it needs a 3D volume, "
                f"got images {shape}"
            )

    def iter_finetune_samples(
        self,
        request: FinetuneRequest,
    ) -> Generator[Any, None, FinetuneSamples]:
        """:class:`CorrectedPatches` of the checkpoint's patch: a loss mask of the
        verified slices, φ of each verified slab (``distance`` is ignored)."""
        if request.distance == "2d":
            logger.info("distance='2d' ignored: a 3D checkpoint trains on φ of the verified slabs")
        dataset, train_cases, mix_ids = yield from iter_corrected_patches(request)
        settings = {
            "patch_size": list(dataset.patch_size),
            "patches": {"corrected": dataset.n_corrected, "mix": dataset.n_mix},
        }
        return FinetuneSamples(dataset, train_cases, (), mix_ids, "3d", settings)


class _SlicePatches(PatchDataset):
    """Patches of one cached volume, each holding one of ``slices`` along ``axis``,
    with the loss mask of those slices and φ of their slabs (:func:`slab_distance_maps`)."""

    def __init__(
        self, entry: VolumeEntry, slices: Sequence[int], axis: int, patch_size: Sequence[int], **kw
    ) -> None:
        super().__init__([entry], patch_size, **kw)
        self.slices = tuple(int(s) for s in slices)
        self.axis = int(axis)
        fg = np.asarray(entry.open("fg"), dtype=np.int64)
        self.slice_fg = {s: fg[fg[:, self.axis] == s] for s in self.slices}
        labels = np.asarray(entry.open("labels"))
        self.phi = slab_distance_maps(labels, self.num_classes, entry.spacing, self.axis, slices)

    def locate(self, epoch: int, index: int) -> tuple[int, tuple[slice, ...], bool]:
        rng = sample_rng(self.seed, epoch, index, stream=1)
        shape = self.entries[0].shape
        chosen = self.slices[int(rng.integers(len(self.slices)))]
        fg = self.slice_fg[chosen]
        foreground = takes_share(index, self.oversample) and len(fg) > 0
        if foreground:  # the centre lies on the slice, so the clipped patch still holds it
            start = patch_start(rng, shape, self.patch_size, fg[int(rng.integers(len(fg)))])
        else:
            start = patch_start(rng, shape, self.patch_size)
            p, n = self.patch_size[self.axis], shape[self.axis]
            start[self.axis] = int(rng.integers(max(0, chosen - p + 1), min(chosen, n - p) + 1))
        patch = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size, strict=True))
        return 0, patch, foreground

    def masked_sample(self, epoch: int, index: int) -> tuple[_augment.Sample, np.ndarray]:
        """Item ``(epoch, index)`` and its mask ``(*P)``: 1 on the verified slices
        of the patch, 0 on the others, where φ is 0 too (never warped: a warp
        would blend verified and unverified slices; flips, rotations and
        intensity transforms as :class:`PatchDataset`)."""
        _, patch, _ = self.locate(epoch, index)
        arrays = self.arrays(0)
        axis, first = self.axis, patch[self.axis].start
        plane = tuple(p for k, p in enumerate(patch) if k != axis)
        dist = np.zeros((self.num_classes, *self.patch_size), dtype=np.float32)
        mask = np.zeros(self.patch_size, dtype=np.float32)
        for s in self.slices:
            if first <= s < patch[axis].stop:
                at = tuple(s - first if k == axis else slice(None) for k in range(3))
                dist[(slice(None), *at)] = self.phi[s][(slice(None), *plane)]
                mask[at] = 1.0
        sample = _augment.Sample(
            np.array(arrays["image"][(slice(None), *patch)], dtype=np.float32),
            np.array(arrays["labels"][patch], dtype=np.int64),
            np.concatenate([dist, mask[None]]),  # the mask moves with φ
        )
        if self.augment is not None:
            rng = sample_rng(self.seed, epoch, index, stream=2)
            sample = _augment.augment_sample(sample, self.entries[0].spacing, self.augment, rng)
        return _augment.Sample(sample.image, sample.labels, sample.dist[:-1]), sample.dist[-1]

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, ...]:
        epoch, index = (0, key) if isinstance(key, int | np.integer) else key
        sample, mask = self.masked_sample(int(epoch), int(index))
        return (
            torch.from_numpy(np.ascontiguousarray(sample.image)),
            torch.from_numpy(np.ascontiguousarray(sample.labels, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(sample.dist)),
            torch.from_numpy(np.ascontiguousarray(mask)),
        )


class CorrectedPatches(Dataset):
    """3D patches for the fine-tune of a 3D checkpoint, keyed by ``(epoch, index)``.

    Parameters
    ----------
    corrected
        The corrected volume's entry in the volume cache
        (:func:`~napari_boundary_seg.core.patches.iter_cache_cases`: scaled
        images, labels).
    slices, axis
        The verified slices (corrected or checked; indices along ``axis``).
    patch_size
        The checkpoint's patch (voxels, numpy axis order).
    mix
        Cache entries of original training cases (may be empty).
    mix_ratio
        Ordinary patches of ``mix`` per corrected patch.
    oversample, seed, augment
        As :class:`~napari_boundary_seg.core.patches.PatchDataset`.

    One epoch holds ``n_corrected`` patches of the corrected volume, one
    in-plane tiling per corrected slice (``ceil(plane voxels / patch plane
    voxels)`` each), and ``n_mix = round(mix_ratio · n_corrected)`` ordinary
    patches of the ``mix`` cases (:class:`PatchDataset`'s sampling). Item ``i``
    is a mix patch when ``floor((i + 1) q) > floor(i q)`` with ``q = n_mix /
    len``. A corrected patch is placed for a corrected slice drawn uniformly:
    along ``axis`` it starts where it still holds that slice; for a share
    ``oversample`` of the items it is centred on a foreground voxel of that
    slice (when it has any), else placed uniformly. Items are pure functions of
    ``(seed, epoch, index)``, like the trainer's other keyed data sets.

    Items are ``(image, labels, dist, mask (*P) float32)``. Only verified
    voxels teach: the mask of a corrected patch is 1 on the verified slices it
    holds and 0 on the others (the prediction nobody checked), and φ there is
    the 3D map of each slab of contiguous verified slices computed from their
    labels alone (:func:`~napari_boundary_seg.core.modes.base.slab_distance_maps`;
    the 2D map for a lone slice), never from unverified slices. A mix patch of
    an original case is fully labelled: mask all ones, φ of its whole volume.
    """

    def __init__(
        self,
        corrected: VolumeEntry,
        slices: Sequence[int],
        axis: int,
        patch_size: Sequence[int],
        *,
        mix: Sequence[VolumeEntry] = (),
        mix_ratio: float = 0.0,
        oversample: float = 1 / 3,
        seed: int = 0,
        augment: Any = None,
    ) -> None:
        patch_size = tuple(int(p) for p in patch_size)
        if len(corrected.shape) != 3 or len(patch_size) != 3:
            raise ValueError(
                f"3D patches need a 3D volume and patch, got {corrected.shape} and {patch_size}"
            )
        if any(n < p for n, p in zip(corrected.shape, patch_size, strict=True)):
            raise ValueError(
                f"the corrected volume {corrected.shape} is smaller than the checkpoint's "
                f"patch {patch_size}: a 3D model is fine-tuned on volumes at least that large"
            )
        axis = check_axis(axis, 3)
        slices = check_slices(list(slices), corrected.shape[axis], axis)
        plane = [k for k in range(3) if k != axis]
        per_slice = math.ceil(
            math.prod(corrected.shape[k] for k in plane) / math.prod(patch_size[k] for k in plane)
        )
        kw = {"oversample": oversample, "seed": seed, "augment": augment}
        self.corrected = _SlicePatches(corrected, slices, axis, patch_size, **kw)
        self.n_corrected = max(1, per_slice * len(slices))
        self.n_mix = int(round(float(mix_ratio) * self.n_corrected)) if mix else 0
        self.mix = PatchDataset(list(mix), patch_size, **kw) if self.n_mix else None
        self.patch_size = patch_size
        self.slices, self.axis = slices, axis
        self.num_classes = corrected.num_classes
        self.length = self.n_corrected + self.n_mix
        self._mix_share = self.n_mix / self.length

    def __len__(self) -> int:
        return self.length

    def is_mix(self, index: int) -> bool:
        """Whether item ``index`` is an ordinary patch of an original case."""
        return self.mix is not None and takes_share(int(index), self._mix_share)

    def locate(self, epoch: int, index: int) -> tuple[str, tuple[slice, ...]]:
        """The case id and patch (slices, numpy axis order) of item ``(epoch, index)``."""
        part = self.mix if self.is_mix(index) else self.corrected
        case, patch, _ = part.locate(int(epoch), int(index))
        return part.entries[case].case_id, patch

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, ...]:
        epoch, index = (0, key) if isinstance(key, int | np.integer) else key
        if not self.is_mix(int(index)):
            return self.corrected[(int(epoch), int(index))]
        image, labels, dist = self.mix[(int(epoch), int(index))]
        return image, labels, dist, torch.ones(labels.shape, dtype=torch.float32)


@dataclass(frozen=True)
class _CachedCase:
    """A cached original case as the trainer's bookkeeping sees it (id, modalities,
    spacing, channel count); its voxels are read from the cache by the patch data set,
    so ``images`` and ``labels`` are empty arrays of the right rank."""

    case_id: str
    modalities: tuple[str, ...]
    spacing: tuple[float, ...]
    images: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, entry: VolumeEntry) -> _CachedCase:
        return cls(
            entry.case_id,
            entry.modalities,
            entry.spacing,
            np.empty((len(entry.modalities), 0, 0, 0), np.float32),
            np.empty((0, 0, 0), np.uint8),
        )


def iter_corrected_patches(
    request: FinetuneRequest,
) -> Generator[Any, None, tuple[CorrectedPatches, list[Any], list[str]]]:
    """3D: the corrected volume (and the original cases) in the volume cache, as
    :class:`CorrectedPatches` of the checkpoint's patch size.

    The corrected volume goes to ``<out>/cache``; the original cases to the
    parent's ``cache_dir`` when it had one (entries already there are reused),
    else to ``<out>/cache`` too.
    """
    from napari_boundary_seg.core.augment import AugmentConfig
    from napari_boundary_seg.core.patches import iter_cache_cases

    base, source, case, slices = request.base, request.source, request.case, request.slices
    axis, mix_cases, mix_ratio, out = (
        request.axis,
        request.mix_cases,
        request.mix_ratio,
        request.out,
    )
    num_classes = int(source["model"].get("num_classes", base.num_classes))
    scale, percentiles = base.scale, base.percentiles
    own_cache = out / "cache"
    yield InfoEvent(
        f"preparing the corrected volume ({len(slices)} verified slice(s) along axis {axis}) "
        f"for 3D patches of {tuple(base.patch_size)} in {own_cache}"
    )
    # the corrected case is already in the checkpoint's voxel order (finetune
    # reoriented it); its intensities follow the checkpoint's rule, as prediction's do
    (entry,) = yield from iter_cache_cases(
        [case], own_cache, num_classes, scale, percentiles, base.normalize, False
    )
    mix_entries: list[VolumeEntry] = []
    if mix_cases is not None and mix_ratio > 0:
        mix_list = yield from iter_mix_sources(mix_cases, source, load=False)
        mix_cache = Path(base.cache_dir) if base.cache_dir else own_cache
        yield InfoEvent(f"preparing {len(mix_list)} case(s) of the original training set")
        mix_entries = yield from iter_cache_cases(
            mix_list, mix_cache, num_classes, scale, percentiles, base.normalize, base.canonical
        )
    elif mix_ratio > 0:
        logger.info("mix_ratio %s ignored: no original training cases given", mix_ratio)
    dataset = CorrectedPatches(
        entry,
        slices,
        axis,
        base.patch_size,
        mix=mix_entries,
        mix_ratio=mix_ratio,
        oversample=base.oversample,
        seed=request.seed,
        augment=AugmentConfig() if base.augment_enabled else None,
    )
    mix_ids = [e.case_id for e in mix_entries] if dataset.n_mix else []
    train_cases = [case, *(_CachedCase.of(e) for e in mix_entries)] if dataset.n_mix else [case]
    return dataset, train_cases, mix_ids
