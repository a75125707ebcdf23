"""The paper's mode: 2D slices of the volumes (:class:`SliceMode`).

Training: the training cases are cached as slices (resampled, resized, with
φ of the whole volume or of each slice,
:class:`~napari_boundary_seg.core.patches.DiskSliceDataset`); the slice order
of epoch ``e`` is a permutation seeded by ``(seed, e)`` (:func:`epoch_order`),
with a share of foreground slices when ``slice_oversample`` is set; augmented
slices are keyed by ``(epoch, index)``. Prediction and validation: every slice
of a volume through the network in batches, the softmax probabilities resized
back to the native slice size (bilinear) and restacked. Fine-tuning: the
corrected slices, with slices of the original cases (:class:`SliceSubset`).
See ``docs/DESIGN.md``, "The modes".
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_boundary_seg.core.checkpoint import InferenceSettings
from napari_boundary_seg.core.events import InfoEvent
from napari_boundary_seg.core.modes.base import (
    FinetuneRequest,
    FinetuneSamples,
    PredictOptions,
    TrainingData,
    TrainingMode,
    as_channels,
    case_scores,
    iter_mix_sources,
    model_device,
    preprocess_config,
    slab_distance_maps,
    slabs,
    softmax_probs,
    target_device,
    val_summary,
)
from napari_boundary_seg.core.progress import Progress, run_to_end

logger = logging.getLogger(__name__)

__all__ = [
    "SliceMode",
    "SliceSubset",
    "collate",
    "epoch_order",
    "foreground_items",
    "iter_batches",
]


def epoch_order(
    num_items: int,
    seed: int,
    epoch: int,
    foreground: np.ndarray | None = None,
    share: float = 0.0,
) -> torch.Tensor:
    """The slice order of an epoch: a permutation seeded by ``(seed, epoch)``.

    With ``share > 0`` and the indices of the ``foreground`` items, that share
    of the positions (evenly spread) holds a foreground item drawn at random
    instead (same generator: a pure function of ``(seed, epoch)``).
    """
    from napari_boundary_seg.core.patches import takes_share

    generator = torch.Generator()
    generator.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    order = torch.randperm(num_items, generator=generator)
    if share > 0 and foreground is not None and len(foreground) > 0:
        draws = torch.randint(len(foreground), (num_items,), generator=generator)
        for position in range(num_items):
            if takes_share(position, share):
                order[position] = int(foreground[int(draws[position])])
    return order


def foreground_items(dataset: Any) -> np.ndarray:
    """Indices of a 2D slice data set's items whose labels hold foreground."""
    if hasattr(dataset, "entries") and hasattr(dataset, "_position"):  # DiskSliceDataset
        flags = [
            dataset.entries[int(c)].nonempty[int(k)]
            for c, k in zip(dataset.case_index, dataset._position, strict=True)
        ]
    elif hasattr(dataset, "labels"):  # in-memory SliceDataset
        flags = dataset.labels.reshape(len(dataset.labels), -1).any(dim=1).tolist()
    else:
        flags = [bool(dataset[i][1].any()) for i in range(len(dataset))]
    return np.flatnonzero(np.asarray(flags, dtype=bool))


def collate(dataset: Any, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Stack the items ``indices`` of a slice dataset into a batch.

    Returns
    -------
    tuple
        ``(images (B, M, H, W) float32, labels (B, H, W) int64, dist (B, C, H, W)
        float32)``.
    """
    tensors = [getattr(dataset, name, None) for name in ("images", "labels", "dist")]
    if all(isinstance(t, torch.Tensor) for t in tensors):  # SliceDataset: one gather each
        index = torch.as_tensor(indices, dtype=torch.long)
        images, labels, dist = (t.index_select(0, index) for t in tensors)
        return images, labels.long(), dist  # labels are stored as uint8
    items = [dataset[int(i)] for i in indices]
    return tuple(torch.stack([torch.as_tensor(item[k]) for item in items]) for k in range(3))


def iter_batches(
    dataset: Any,
    order: torch.Tensor,
    batch_size: int,
    start_step: int,
    stop_step: int,
    num_workers: int = 0,
) -> Generator[tuple[torch.Tensor, ...], None, None]:
    """The CPU batches of steps ``start_step .. stop_step - 1`` of an epoch.

    Step ``k`` holds the items ``order[k * batch_size : (k + 1) * batch_size]``.
    With ``num_workers == 0`` they are gathered in this process by
    :func:`collate` (the fastest for an in-memory data set); otherwise a
    :class:`torch.utils.data.DataLoader` with that many workers loads them.
    """
    steps = [
        order[k * batch_size : (k + 1) * batch_size].tolist() for k in range(start_step, stop_step)
    ]
    if num_workers == 0:
        for indices in steps:
            yield collate(dataset, indices)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_sampler=steps, num_workers=num_workers)
    for batch in loader:
        yield tuple(batch)


class SliceSubset:
    """Some slices of slice data sets, as one data set the trainer can index.

    Attributes ``images (N, M, H, W)``, ``labels (N, H, W)``, ``dist (N, C, H, W)``
    (tensors, as :class:`~napari_boundary_seg.core.data.SliceDataset`) and
    ``sources``: ``(case_id, slice)`` per item.
    """

    def __init__(self, parts: Sequence[tuple[Any, Sequence[int]]]) -> None:
        images, labels, dist, sources = [], [], [], []
        for dataset, indices in parts:
            if len(indices) == 0:
                continue
            index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
            images.append(dataset.images.index_select(0, index))
            labels.append(dataset.labels.index_select(0, index))
            dist.append(dataset.dist.index_select(0, index))
            for i in np.asarray(indices):
                case = dataset.case_ids[int(dataset.case_index[i])]
                sources.append((str(case), int(dataset.slice_index[i])))
        if not images:
            raise ValueError("no slices to fine-tune on")
        shapes = {tuple(t.shape[1:]) for t in images}
        if len(shapes) != 1:
            raise ValueError(
                f"slices of different sizes cannot be mixed: {sorted(shapes)} "
                "(the checkpoint was trained without a fixed slice_size)"
            )
        self.images = torch.cat(images)
        self.labels = torch.cat(labels)
        self.dist = torch.cat(dist)
        self.sources = sources

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index].long(), self.dist[index]


def _mix_indices(
    dataset: Any, n_wanted: int, seed: int, train_ids: Sequence[str] | None
) -> list[int]:
    """Deterministic choice of ``n_wanted`` slices of ``dataset`` (cases of the
    parent's training set when the folder holds them), foreground slices first."""
    candidates = np.arange(len(dataset))
    if train_ids:
        wanted = {str(c) for c in train_ids}
        keep = np.array([dataset.case_ids[int(c)] in wanted for c in dataset.case_index])
        if keep.any():
            candidates = candidates[keep]
    rng = np.random.default_rng(seed)
    order = rng.permutation(candidates)
    has_fg = (dataset.labels[torch.as_tensor(order)] > 0).flatten(1).any(dim=1).numpy()
    order = np.concatenate([order[has_fg], order[~has_fg]])
    return sorted(int(i) for i in order[:n_wanted])


def _slab_phi(subset: SliceSubset, corrected: Any, indices: Sequence[int], classes: int) -> None:
    """Replace φ of the subset's first ``len(indices)`` items (the verified slices of
    ``corrected``, in slice order) by the 3D maps of their slabs of contiguous slices."""
    if not len(indices):
        return
    index = np.asarray(indices, dtype=np.int64)
    spacing = tuple(corrected.case_spacing[int(corrected.case_index[index[0]])])
    labels = subset.labels[: len(index)].numpy()  # (n, H, W), the verified slices in order
    for run in slabs([int(corrected.slice_index[i]) for i in index]):
        first = int(np.flatnonzero(corrected.slice_index[index] == run[0])[0])
        stack = range(first, first + len(run))  # contiguous slices sit side by side
        phi = slab_distance_maps(labels, classes, spacing, 0, stack)
        subset.dist[first : first + len(run)] = torch.from_numpy(np.stack([phi[k] for k in stack]))


class SliceMode(TrainingMode):
    """The paper's 2D slices: one network input is one slice of a volume."""

    dims: ClassVar[int] = 2
    items: ClassVar[str] = "slices"
    shares_dataset: ClassVar[bool] = True
    ignores: ClassVar[tuple[str, ...]] = ("steps_per_epoch",)  # an epoch is every slice once

    def __repr__(self) -> str:
        return "SliceMode()"

    def __eq__(self, other: object) -> bool:
        return type(other) is SliceMode

    def __hash__(self) -> int:
        return hash(SliceMode)

    def items_text(self, config: Any) -> str:
        return "slices"

    def check_config(self, config: Any, depth_name: str = "depth") -> None:
        """Slices of a fixed ``slice_size`` must take the network's poolings."""
        if config.slice_size:
            from napari_boundary_seg.core.validate import check_unet_fits

            check_unet_fits(config.depth, config.slice_size, depth_name)

    # -- preparation --------------------------------------------------------

    def iter_settle(
        self, config: Any, train_cases: Sequence[Any]
    ) -> Generator[Any, None, tuple[Any, Any]]:
        """``slice_spacing="auto"`` (without a ``slice_size``) resolved to the
        training cases' median in-plane spacing."""
        if config.slice_size is not None or config.slice_spacing != "auto":
            return config, None
        from napari_boundary_seg.core.data import median_slice_spacing

        resolved = median_slice_spacing(train_cases, preprocess_config(config))
        if resolved is not None:
            config = dataclasses.replace(config, slice_spacing=resolved)
            yield InfoEvent(
                "slices resampled to {:.3g} x {:.3g} mm (the training cases' median)".format(
                    *resolved
                )
            )
        return config, resolved

    def iter_cache_training(
        self, config: Any, cases: list[Any], cache_dir: Path
    ) -> Generator[Any, None, list[Any]]:
        """The training cases cached as the paper's slices (the same slices and φ as
        the in-memory :class:`~napari_boundary_seg.core.data.SliceDataset`)."""
        from napari_boundary_seg.core.patches import iter_cache_slices

        return (
            yield from iter_cache_slices(
                cases,
                cache_dir,
                config.num_classes,
                preprocess_config(config),
                config.distance,
                config.phi_units,
                config.empty_slice_phi,
            )
        )

    def training_dataset(self, config: Any, entries: Sequence[Any]) -> Any:
        from napari_boundary_seg.core.patches import DiskSliceDataset

        return DiskSliceDataset(entries, config.skip_empty_slices, config.distance)

    def training_items(self, config: Any, data: TrainingData) -> TrainingData:
        """The foreground slices (``slice_oversample``) and the augmented slices
        (``augment``, off by default: the paper trains without)."""
        if config.slice_oversample > 0:
            data.foreground = foreground_items(data.dataset)
        data.items = data.dataset
        if config.augment_enabled:
            from napari_boundary_seg.core.augment import AugmentConfig
            from napari_boundary_seg.core.patches import AugmentedSlices

            data.items = AugmentedSlices(data.dataset, AugmentConfig(), seed=config.seed)
        return data

    def check_network(self, hparams: Mapping[str, Any], data: TrainingData) -> None:
        """The network's depth must fit the slices."""
        from napari_boundary_seg.core.validate import check_unet_fits

        check_unet_fits(int(hparams["depth"]), tuple(data.dataset[0][0].shape[-2:]))

    # -- an epoch -------------------------------------------------------------

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
        """The rank's shard of the epoch's slice order (:func:`epoch_order`), gathered
        by :func:`iter_batches`, or keyed by ``(epoch, index)`` when augmented."""
        from napari_boundary_seg.core import distributed

        order = distributed.shard_indices(
            epoch_order(
                len(data.dataset), config.seed, epoch, data.foreground, config.slice_oversample
            ),
            rank,
            world_size,
        )
        if data.items is data.dataset:
            return iter_batches(
                data.dataset, order, config.batch_size, start_step, stop_step, config.num_workers
            )
        from napari_boundary_seg.core.patches import epoch_batches, iter_keyed_batches

        keys = epoch_batches(epoch, config.batch_size, start_step, stop_step, order.tolist())
        return iter_keyed_batches(data.items, keys, config.num_workers, config.seed)

    def validate(
        self, model: nn.Module, cases: Sequence[Any], config: Any, device: torch.device
    ) -> dict[str, float]:
        """Each case predicted slice by slice (:meth:`iter_predict`, the inference
        path, at the case's own geometry); a cached case is read one at a time."""
        scores = []
        preprocess = preprocess_config(config)
        for case in cases:
            if hasattr(case, "open"):  # a cached case: images already scaled
                images = np.asarray(case.open("image"))
                labels = np.asarray(case.open("labels"))
                case_preprocess = dataclasses.replace(preprocess, scale=False)
            else:
                images, labels, case_preprocess = case.images, case.labels, preprocess
                if getattr(case, "normalized", False):  # part of a volume normalised as a whole
                    case_preprocess = dataclasses.replace(preprocess, scale=False)
            _, pred = run_to_end(
                self.iter_predict(
                    model,
                    images,
                    case.spacing,
                    InferenceSettings(self.dims, None, case_preprocess),
                    PredictOptions(
                        batch_size=config.batch_size,
                        device=device,
                        affine=np.asarray(case.affine, dtype=float),
                    ),
                )
            )
            scores.append(case_scores(pred, labels, case.spacing, config.num_classes))
            del images, labels, pred
        return val_summary(scores)

    # -- inference -----------------------------------------------------------

    def iter_predict(
        self,
        model: nn.Module,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        settings: Any,
        options: PredictOptions,
    ) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
        """Slice by slice: the training preprocessing (intensity scaling, slicing
        axis, slice size), the slices through the network in batches, the
        probabilities resized back to the native slice size (bilinear) and
        restacked in the stored order."""
        from napari_boundary_seg.core.data import case_from_arrays, preprocess_case
        from napari_boundary_seg.core.orientation import canonical_orientation

        prep, axis, affine = settings.preprocess, options.axis, options.affine
        slice_size, batch_size = options.slice_size, options.batch_size
        if slice_size is not None:
            prep = dataclasses.replace(prep, slice_size=slice_size)
        in_channels = int(getattr(model, "in_channels", 1))
        images = as_channels(volume, in_channels, spacing)
        spatial = images.shape[1:]
        if spacing is None:
            spacing = (1.0,) * len(spatial)
        orientation = canonical_orientation(affine if prep.canonical else None, len(spatial))
        if axis is not None:  # a stored axis of ``volume``: the same axis in the working order
            axis = int(axis) % len(spatial)
            prep = dataclasses.replace(prep, axis=orientation.perm.index(axis))
        target = target_device(model, options.device)
        original_device = model_device(model)
        was_training = model.training
        case = case_from_arrays(list(images), None, spacing, affine, case_id="predict")
        prepared = preprocess_case(case, prep)
        slices = prepared.images  # (D, M, h, w)
        native = tuple(prepared.native_hw)  # (H, W) of the slices before resizing
        n = slices.shape[0]
        total = -(-n // batch_size)
        out = np.empty((0,), dtype=np.float32)
        yield Progress(0, total, "predicting slices")
        try:
            model.to(target).eval()
            for b, start in enumerate(range(0, n, batch_size)):
                # inference mode only around the forward pass: never across a yield, where
                # the caller's thread would otherwise run in inference mode too
                with torch.inference_mode():
                    chunk = torch.from_numpy(slices[start : start + batch_size]).to(target)
                    probs = softmax_probs(model, chunk, options.flips)
                    if tuple(probs.shape[-2:]) != native:
                        # bilinear weights are convex: the channels still sum to 1
                        probs = F.interpolate(
                            probs, size=native, mode="bilinear", align_corners=False
                        )
                    probs_np = probs.cpu().numpy()
                if b == 0:
                    out = np.empty((n, probs_np.shape[1], *native), dtype=np.float32)
                out[start : start + len(probs_np)] = probs_np
                yield Progress(b + 1, total, f"slices {start + len(probs_np)}/{n}")
        finally:
            model.to(original_device)
            model.train(was_training)
        # (D, C, H, W) -> (C, *spatial) in the working order -> the stored order
        probs_vol = np.moveaxis(out, 0, 1)  # (C, D, H, W)
        if prepared.axis is None:
            probs_vol = probs_vol[:, 0]
        else:
            probs_vol = np.moveaxis(prepared.paste(probs_vol), 1, 1 + prepared.axis)
            if prepared.orientation is not None:
                probs_vol = prepared.orientation.from_canonical(probs_vol, lead=1)
        probs_vol = np.ascontiguousarray(probs_vol, dtype=np.float32)
        labels = probs_vol.argmax(axis=0).astype(np.int64)
        return probs_vol, labels

    def preview(
        self, model: nn.Module, preview: Any, axis: int, index: int, overlap: float
    ) -> np.ndarray:
        """The one-slice slab of the volume, reoriented with the affine as in
        training, through :meth:`iter_predict`."""
        slab = np.take(preview.images, [index], axis=1 + axis)
        _, labels = run_to_end(
            self.iter_predict(
                model,
                slab,
                preview.spacing,
                InferenceSettings(self.dims, None, preview.preprocess),
                PredictOptions(axis=axis, affine=preview.affine),
            )
        )
        return np.take(labels, 0, axis=axis)

    # -- fine-tuning ---------------------------------------------------------

    def iter_finetune_samples(
        self,
        request: FinetuneRequest,
    ) -> Generator[Any, None, FinetuneSamples]:
        """The verified slices (and mixed-in slices) as a :class:`SliceSubset`;
        their φ per slice (``distance="2d"``) or of each slab of contiguous
        verified slices (``distance="3d"``, :func:`slab_distance_maps` on the
        prepared slices), never from the unverified slices. Every item is a
        whole verified or original slice: no loss mask is needed."""
        from napari_boundary_seg.core.data import iter_build_dataset

        base, source, case, slices = request.base, request.source, request.case, request.slices
        axis, mix_cases, mix_ratio = request.axis, request.mix_cases, request.mix_ratio

        num_classes = int(source["model"].get("num_classes", base.num_classes))
        prep = dataclasses.replace(preprocess_config(base), axis=axis, skip_empty_slices=False)
        yield InfoEvent(f"preparing {len(slices)} corrected slice(s) along axis {axis}")
        corrected = yield from iter_build_dataset(
            [case], num_classes, prep, distance=request.distance
        )
        parts: list[tuple[Any, Sequence[int]]] = [
            (
                corrected,
                [i for i in range(len(corrected)) if int(corrected.slice_index[i]) in slices],
            )
        ]
        n_mix = int(round(mix_ratio * len(slices)))
        mix_list: list[Any] = []
        if mix_cases is not None and n_mix > 0:
            mix_list = yield from iter_mix_sources(mix_cases, source, load=True)
            yield InfoEvent(f"preparing {len(mix_list)} case(s) of the original training set")
            mix_set = yield from iter_build_dataset(
                mix_list,
                num_classes,
                preprocess_config(base),
                distance=base.distance,
                cache_dir=base.cache_dir,
            )
            chosen = _mix_indices(mix_set, n_mix, request.seed, source.get("train_cases"))
            parts.append((mix_set, chosen))
        elif mix_ratio > 0 and mix_cases is None:
            logger.info("mix_ratio %s ignored: no original training cases given", mix_ratio)
        subset = SliceSubset(parts)
        if request.distance == "3d":  # φ of the verified slabs, from their labels alone
            _slab_phi(subset, corrected, parts[0][1], num_classes)
        return FinetuneSamples(
            subset,
            [case, *mix_list],
            tuple(subset.sources[len(parts[0][1]) :]),
            [str(getattr(c, "case_id", c)) for c in mix_list],
            request.distance,
        )
