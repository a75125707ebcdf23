"""The interface of a training mode and what both modes share.

A :class:`TrainingMode` is everything that differs between training on the
paper's 2D slices (:class:`~napari_boundary_seg.core.modes.slices.SliceMode`)
and on 3D patches (:class:`~napari_boundary_seg.core.modes.patches.PatchMode`):
how the training cases are cached and turned into a data set, the network's
extra hyper-parameters, the batches of an epoch, how a volume is predicted
(slice by slice or by Gaussian sliding windows), validation, the live preview
and the samples of a fine-tune. The trainer, prediction, the preview and
fine-tuning ask the mode; none of them tests the number of dimensions. See
``docs/DESIGN.md``, "The modes".

The preparation of the training data (:meth:`TrainingMode.iter_prepare`) is
written once here, with the steps a mode fills in (``check_shapes``,
``iter_settle``, ``iter_cache_training``, ``check_entries``,
``training_dataset``).
"""

from __future__ import annotations

import itertools
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from napari_boundary_seg.core.device import resolve_device
from napari_boundary_seg.core.distributed import shard_length
from napari_boundary_seg.core.events import InfoEvent
from napari_boundary_seg.core.validate import check_int

__all__ = [
    "FinetuneRequest",
    "FinetuneSamples",
    "PredictOptions",
    "TrainingData",
    "TrainingMode",
    "as_channels",
    "check_count",
    "check_patch",
    "epoch_steps",
    "preprocess_config",
    "slab_distance_maps",
    "slabs",
    "softmax_probs",
]


def preprocess_config(config: Any) -> Any:
    """The :class:`~napari_boundary_seg.core.data.PreprocessConfig` of a training config."""
    from napari_boundary_seg.core.data import PreprocessConfig

    spacing = config.slice_spacing
    return PreprocessConfig(
        scale=config.scale,
        percentiles=config.percentiles,
        slice_size=config.slice_size,
        axis=config.axis,
        skip_empty_slices=config.skip_empty_slices,
        normalize=config.normalize,
        canonical=config.canonical,
        slice_spacing=None if spacing in (None, "auto") else spacing,
        crop=config.crop_to_head,
    )


# ---------------------------------------------------------------------------
# the prepared data


@dataclass
class TrainingData:
    """The prepared training run: cases, the training data set and what the steps read.

    ``dataset`` holds the training items (slices or patches); ``items`` is what
    the batches are drawn from (``dataset``, or it augmented) and
    ``foreground`` the indices of the items with foreground (2D oversampling),
    both set by :meth:`TrainingMode.training_items`. ``keep_alive`` is a
    temporary cache folder removed with this object; ``slice_spacing`` the
    ``"auto"`` in-plane spacing resolved on the training cases.
    """

    train_cases: list[Any]
    val_cases: list[Any]
    dataset: Any
    in_channels: int
    modalities: list[str]
    keep_alive: Any = None
    slice_spacing: tuple[float, float] | None = None
    items: Any = None
    foreground: np.ndarray | None = None


@dataclass(frozen=True)
class FinetuneSamples:
    """What a fine-tune trains on: the data set, the trainer's cases, the lineage facts.

    ``mix_sources`` are ``(case_id, slice)`` of mixed-in original slices (2D);
    ``mix_ids`` the original cases mixed in; ``distance`` how φ of the
    corrected data was computed; ``settings`` the mode's own lineage settings.
    """

    dataset: Any
    train_cases: list[Any]
    mix_sources: tuple[tuple[str, int], ...] = ()
    mix_ids: list[str] = field(default_factory=list)
    distance: str = "3d"
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictOptions:
    """How a volume is predicted, beyond the checkpoint's settings (see
    :func:`~napari_boundary_seg.core.predict.iter_predict_volume`): each mode
    reads the options it has (slices: ``axis``, ``slice_size``,
    ``batch_size``; patches: ``overlap``, ``sw_batch_size``; both: ``flips``,
    test-time mirroring, :func:`softmax_probs`)."""

    axis: int | None = None
    slice_size: int | None = None
    batch_size: int = 8
    device: str | torch.device | None = None
    overlap: float = 0.5
    sw_batch_size: int = 2
    affine: np.ndarray | None = None
    flips: bool = False


def softmax_probs(model: nn.Module, batch: torch.Tensor, flips: bool = False) -> torch.Tensor:
    """``softmax(model(batch))`` over the class axis (float32); with ``flips``,
    averaged over the batch mirrored along every combination of its spatial
    axes (4 passes in 2D, 8 in 3D), each result mirrored back: nnU-Net's
    test-time mirroring, for models trained with flip augmentation."""
    probs = torch.softmax(model(batch).float(), dim=1)
    if not flips:
        return probs
    axes = range(2, batch.ndim)
    combos = [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]
    for dims in combos:
        probs += torch.softmax(model(batch.flip(dims)).float(), dim=1).flip(dims)
    return probs / (len(combos) + 1)


@dataclass(frozen=True)
class FinetuneRequest:
    """A fine-tune's corrected data, in the order the checkpoint was trained in.

    ``base``: the parent's training config; ``source``: the parent checkpoint;
    ``case``: the corrected case; ``slices`` along ``axis``: the verified
    slices (corrected, or marked checked without painting), the only ones that
    teach; ``mix_cases`` / ``mix_ratio``: original cases to mix in;
    ``distance``: φ of the verified slices (``"2d"``: per slice, ``"3d"``: per
    slab of contiguous verified slices, :func:`slab_distance_maps`); ``out``:
    the fine-tune's folder; ``seed``: of the order and the mix choice.
    """

    base: Any
    source: Mapping[str, Any]
    case: Any
    slices: tuple[int, ...]
    axis: int
    mix_cases: Any
    mix_ratio: float
    distance: str
    out: Path
    seed: int


def split_train_val(
    config: Any, cases: list[Any], val_cases: Sequence[Any] | None
) -> tuple[list[Any], list[Any]]:
    """The training and validation cases: ``cases`` and ``val_cases`` when those are
    given, else ``config.val_fraction`` of ``cases`` split off with the run's split
    seed (no validation cases when the fraction is 0 or there is a single case)."""
    from napari_boundary_seg.core.data import split_cases

    if val_cases is not None:
        return cases, list(val_cases)
    if config.val_fraction > 0 and len(cases) > 1:
        train_cases, val_list = split_cases(cases, config.val_fraction, config.effective_split_seed)
        return list(train_cases), list(val_list)
    return cases, []


def config_case_files(config: Any) -> list[Any]:
    """The cases of ``config.data`` (files, not loaded); an error naming the
    folder when it is unset or holds none."""
    from napari_boundary_seg.core import data as data_mod

    if config.data is None:
        raise ValueError("TrainConfig.data is not set and no cases were given to train()")
    files = data_mod.find_cases(config.data)
    if not files:
        raise ValueError(f"no cases found in {config.data}")
    return files


def cache_settings(config: Any, cache_dir: Path) -> tuple[Any, ...]:
    """The arguments of :func:`~napari_boundary_seg.core.patches.iter_cache_cases`
    after the cases: the volume cache settings of a run."""
    return (
        cache_dir,
        config.num_classes,
        config.scale,
        config.percentiles,
        config.normalize,
        config.canonical,
    )


def iter_mix_sources(
    mix_cases: Sequence[Any] | str | os.PathLike, source: Mapping[str, Any], load: bool
) -> Generator[Any, None, list[Any]]:
    """The original training cases a fine-tune mixes in: a list as given, or the
    folder's cases (only the parent's training cases when the folder holds them),
    loaded if ``load``."""
    from napari_boundary_seg.core.data import find_cases, iter_load_cases

    if not isinstance(mix_cases, str | os.PathLike):
        return list(mix_cases)
    files = find_cases(mix_cases)
    if not files:
        raise ValueError(f"no cases found in {mix_cases}")
    wanted = set(source.get("train_cases") or [])
    chosen = [f for f in files if f.case_id in wanted] or files
    if not load:
        return chosen
    return (yield from iter_load_cases(chosen))


def check_axis(axis: Any, ndim: int) -> int:
    """An axis of ``ndim`` spatial axes (negative counts from the end), or an error."""
    axis = check_int(axis, "axis")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {ndim} spatial axes")
    return axis % ndim


def check_slices(slices: Any, depth: int, axis: int, allow_empty: bool = False) -> tuple[int, ...]:
    """Sorted distinct slice indices in ``[0, depth)`` along ``axis`` (at least one
    unless ``allow_empty``)."""
    if isinstance(slices, str | bytes) or not isinstance(slices, Sequence | np.ndarray):
        raise TypeError(f"slices must be a list of slice indices, got {slices!r}")
    out: list[int] = []
    for s in slices:
        s = check_int(s, "a slice index")
        if not 0 <= s < depth:
            raise ValueError(f"slice {s} is out of range: axis {axis} has {depth} slices")
        out.append(s)
    if not out and not allow_empty:
        raise ValueError("no corrected slices given: edit at least one slice")
    return tuple(sorted(set(out)))


def slabs(slices: Sequence[int]) -> list[list[int]]:
    """The runs of contiguous indices of ``slices`` (sorted, distinct)."""
    runs: list[list[int]] = []
    for s in sorted({int(i) for i in slices}):
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def slab_distance_maps(
    labels: np.ndarray,
    num_classes: int,
    spacing: Sequence[float],
    axis: int,
    slices: Sequence[int],
) -> dict[int, np.ndarray]:
    """φ of each verified slice from the verified labels alone: ``{slice: (C, *plane)}``.

    Each slab of contiguous ``slices`` along ``axis`` (:func:`slabs`) is cut out
    of ``labels`` and its class maps computed in 3D with ``spacing``
    (:func:`~napari_boundary_seg.core.distance.class_distance_maps`), as if the
    slab were the whole image: the slices beyond it (unverified) are beyond the
    image edge, neither neighbours nor boundary, so no unverified voxel shapes
    φ. A slab of one slice gives the 2D map of that slice (in-plane spacing).
    """
    from napari_boundary_seg.core.distance import class_distance_maps

    out: dict[int, np.ndarray] = {}
    for run in slabs(slices):
        slab = np.take(labels, np.arange(run[0], run[-1] + 1), axis=axis)
        maps = class_distance_maps(slab, num_classes, spacing=tuple(spacing))
        for k, s in enumerate(run):
            out[s] = np.ascontiguousarray(np.take(maps, k, axis=1 + axis), dtype=np.float32)
    return out


# ---------------------------------------------------------------------------
# validation figures


def nanmean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN (NaN when there are none)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def case_scores(
    pred: np.ndarray, labels: np.ndarray, spacing: Sequence[float], num_classes: int
) -> tuple[float, float, float, bool]:
    """One case's DSC, HD and HD95 (mm), each the mean over the foreground classes
    (an infinite distance replaced by the image diagonal), and whether an HD was
    infinite."""
    from napari_boundary_seg.core.metrics import replace_inf, surface_metrics

    per_class = [surface_metrics(pred == c, labels == c, spacing) for c in range(1, num_classes)]
    case_hd = [m["hd"] for m in per_class]
    shape = labels.shape
    return (
        nanmean([m["dice"] for m in per_class]),
        nanmean([replace_inf(v, shape, spacing) for v in case_hd]),
        nanmean([replace_inf(m["hd95"], shape, spacing) for m in per_class]),
        any(math.isinf(v) for v in case_hd),
    )


def val_summary(scores: Sequence[tuple[float, float, float, bool]]) -> dict[str, float]:
    """The validation figures: means of :func:`case_scores` over the cases (NaN
    without cases) and the number of cases whose HD was infinite."""
    return {
        "val_dice": nanmean([s[0] for s in scores]),
        "val_hd": nanmean([s[1] for s in scores]),
        "val_hd95": nanmean([s[2] for s in scores]),
        "val_hd_inf": sum(1 for s in scores if s[3]),
    }


# ---------------------------------------------------------------------------
# inference helpers


def epoch_steps(num_slices: int, batch_size: int, cap: int | None) -> int:
    """Optimizer steps in one epoch: every slice once, at most ``cap`` steps."""
    steps = math.ceil(num_slices / batch_size)
    return steps if cap is None else min(steps, cap)


def check_count(name: str, value: Any) -> None:
    """A positive integer (a batch size), or an error naming ``name``."""
    check_int(value, name, 1)


def check_patch(patch_size: Sequence[int], ndim: int) -> tuple[int, ...]:
    """``ndim`` positive integers (a window in voxels), or ValueError."""
    patch = tuple(patch_size)
    try:
        if len(patch) != ndim:
            raise ValueError
        return tuple(check_int(p, "patch_size", 1) for p in patch)
    except (TypeError, ValueError):
        raise ValueError(
            f"patch_size must be {ndim} positive integers (voxels per axis), got {patch_size!r}"
        ) from None


def as_channels(
    volume: np.ndarray,
    in_channels: int,
    spacing: Sequence[float] | None,
    spatial_only: bool = False,
) -> np.ndarray:
    """``volume`` as ``(M, *spatial)``: add the channel axis when it is missing.

    A 3-axis array is 3 spatial axes when ``spatial_only`` (a 3D model), else
    ``(M, H, W)`` when ``spacing`` has 2 values, else decided by ``in_channels``.
    """
    volume = np.asarray(volume)
    if volume.ndim == 4:
        has_channels = True
    elif volume.ndim == 2:
        has_channels = False
    elif volume.ndim == 3:
        if spatial_only:
            has_channels = False
        elif spacing is not None:
            has_channels = len(spacing) == 2
        else:
            has_channels = in_channels > 1
    else:
        raise ValueError(
            f"volume must be (*spatial) or (M, *spatial) with 2 or 3 spatial axes, "
            f"got shape {volume.shape}"
        )
    if not has_channels:
        volume = volume[None]
    if volume.shape[0] != in_channels:
        raise ValueError(
            f"volume of shape {volume.shape} has {volume.shape[0]} channel(s) but the model "
            f"takes {in_channels} (modalities stacked on axis 0)"
        )
    if spacing is not None and len(spacing) != volume.ndim - 1:
        raise ValueError(
            f"spacing {tuple(spacing)} does not have one value per spatial axis of "
            f"{volume.shape[1:]}"
        )
    return volume.astype(np.float32, copy=False)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def target_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Where to predict: ``device`` resolved, or the model's own device."""
    if device is None:
        return model_device(model)
    return device if isinstance(device, torch.device) else resolve_device(device)


# ---------------------------------------------------------------------------
# the interface


class TrainingMode(ABC):
    """How a network is trained, validated, applied and fine-tuned: slices or patches.

    Chosen once by :func:`~napari_boundary_seg.core.modes.mode_for` from a
    config, a checkpoint, inference settings or a model.
    """

    dims: ClassVar[int]
    """Spatial axes of the network's input (2: slices, 3: patches)."""
    items: ClassVar[str]
    """What an epoch is made of, for messages (``"slices"``, ``"patches"``)."""
    shares_dataset: ClassVar[bool]
    """Whether runs over the same cases (the study's arms) share one prebuilt
    in-memory data set (``train(dataset=...)``); otherwise they share the cache."""
    ignores: ClassVar[tuple[str, ...]] = ()
    """``TrainConfig`` settings this mode does not read: a resumed run may differ in them."""

    @classmethod
    def of(cls, patch_size: Sequence[int] | None) -> TrainingMode:
        """The mode of a config or checkpoint whose patch is ``patch_size``."""
        return cls()

    @property
    def patch_size(self) -> tuple[int, ...] | None:
        """The training patch (voxels, numpy axis order); None for slices."""
        return None

    @abstractmethod
    def items_text(self, config: Any) -> str:
        """What an epoch's items are, for people (``"slices"``,
        ``"augmented 3D patches of 96×96×32"``)."""

    def check_config(self, config: Any, depth_name: str = "depth") -> None:
        """Refuse a network depth the configured inputs cannot take, before any
        data is read (``depth_name``: the setting as the user gave it)."""
        return None

    # -- preparation --------------------------------------------------------

    def iter_prepare(
        self,
        config: Any,
        cases: Sequence[Any] | None,
        val_cases: Sequence[Any] | None,
        out_dir: Path | None,
        writer: bool = True,
        source: Mapping[str, Any] | None = None,
    ) -> Generator[Any, None, TrainingData]:
        """Every case (training and validation) prepared in the cache, one at a time.

        ``source``: the checkpoint the run starts from (resume or fine-tune), whose
        input channels every case must fit.

        Cases are read from ``config.data`` one by one (never all held), or taken
        from ``cases``, and checked before the first cache entry is written. The
        training cases are cached as the mode's items (slices, or volumes read
        by patches, with the whole-volume φ); validation cases as volumes,
        read one at a time. The cache is ``config.cache_dir``, else
        ``<out_dir>/cache`` (ranks > 0 of a distributed run read it once rank 0
        has prepared it, and use a temporary folder of their own when it is not
        there), else a temporary folder removed with the returned object.
        """
        import tempfile

        from napari_boundary_seg.core.data import iter_check_cases
        from napari_boundary_seg.core.patches import iter_cache_cases

        if cases is None:
            cases = config_case_files(config)
        cases = list(cases)
        if not cases:
            raise ValueError("no training cases given")
        unlabelled = [c.case_id for c in cases if getattr(c, "label_path", True) is None]
        unlabelled += [c.case_id for c in cases if getattr(c, "labels", 0) is None]
        if unlabelled:
            raise ValueError(f"cases without labels cannot be used for training: {unlabelled}")
        train_src, val_src = split_train_val(config, cases, val_cases)
        expected = None
        saved = (source or {}).get("model") or {}
        if "in_channels" in saved:
            expected = (
                int(saved["in_channels"]),
                str(config.resume_from or config.init_checkpoint),
            )
        shapes = yield from iter_check_cases(
            [*train_src, *val_src], config.num_classes, config.canonical, expected
        )
        self.check_shapes([*train_src, *val_src], shapes)
        config, resolved_spacing = yield from self.iter_settle(config, train_src)
        keep_alive = None
        if config.cache_dir is not None:
            cache_dir = Path(config.cache_dir)
        elif out_dir is not None and (writer or (out_dir / "cache").is_dir()):
            cache_dir = out_dir / "cache"  # ranks > 0 read the one rank 0 prepared
        else:
            keep_alive = tempfile.TemporaryDirectory(prefix="nbs-cache-")
            cache_dir = Path(keep_alive.name)
        yield InfoEvent(f"preparing {len(train_src) + len(val_src)} cases in the cache {cache_dir}")
        train_entries = yield from self.iter_cache_training(config, list(train_src), cache_dir)
        val_entries = yield from iter_cache_cases(list(val_src), *cache_settings(config, cache_dir))
        channels = {len(e.modalities) for e in [*train_entries, *val_entries]}
        if len(channels) != 1:
            raise ValueError(f"cases have different numbers of modalities: {sorted(channels)}")
        self.check_entries([*train_entries, *val_entries])
        return TrainingData(
            train_entries,
            val_entries,
            self.training_dataset(config, train_entries),
            channels.pop(),
            list(train_entries[0].modalities),
            keep_alive,
            resolved_spacing,
        )

    def iter_prepare_prebuilt(
        self,
        config: Any,
        cases: Sequence[Any] | None,
        val_cases: Sequence[Any] | None,
        dataset: Any,
    ) -> Generator[Any, None, TrainingData]:
        """A prebuilt training data set (the study shares one between runs) and
        its in-memory cases (``cases`` loaded from ``config.data`` when None)."""
        from napari_boundary_seg.core import data as data_mod

        if cases is None:
            cases = yield from data_mod.iter_load_cases(config_case_files(config))
        cases = list(cases)
        if not cases:
            raise ValueError("no training cases given")
        unlabelled = [c.case_id for c in cases if c.labels is None]
        if unlabelled:
            raise ValueError(f"cases without labels cannot be used for training: {unlabelled}")
        train_cases, val_list = split_train_val(config, cases, val_cases)
        channels = {c.images.shape[0] for c in [*train_cases, *val_list]}
        if len(channels) != 1:
            raise ValueError(f"cases have different numbers of modalities: {sorted(channels)}")
        modalities = list(getattr(train_cases[0], "modalities", None) or [])
        return TrainingData(train_cases, val_list, dataset, channels.pop(), modalities)

    def check_shapes(self, cases: Sequence[Any], shapes: Sequence[tuple[int, ...]]) -> None:
        """Refuse cases the mode cannot train on (their spatial ``shapes``)."""
        return None

    def iter_settle(
        self, config: Any, train_cases: Sequence[Any]
    ) -> Generator[Any, None, tuple[Any, Any]]:
        """The config with what depends on the training cases resolved, and the
        resolved in-plane spacing (or None)."""
        return config, None
        yield  # a generator that yields nothing

    @abstractmethod
    def iter_cache_training(
        self, config: Any, cases: list[Any], cache_dir: Path
    ) -> Generator[Any, None, list[Any]]:
        """The training cases in the cache, as the entries the training data set reads."""

    def check_entries(self, entries: Sequence[Any]) -> None:
        """Refuse cached cases the mode cannot train on."""
        return None

    @abstractmethod
    def training_dataset(self, config: Any, entries: Sequence[Any]) -> Any:
        """The training data set of the cached training cases."""

    def check_prebuilt(self, dataset: Any) -> None:
        """Refuse a prebuilt ``train(dataset=...)`` the mode cannot read."""
        return None

    @abstractmethod
    def training_items(self, config: Any, data: TrainingData) -> TrainingData:
        """``data`` with ``items`` (what the batches read) and ``foreground`` set."""

    # -- the network ----------------------------------------------------------

    def network(self, config: Any, data: TrainingData) -> dict[str, Any]:
        """The UNet hyper-parameters of a run from scratch."""
        return {
            "in_channels": data.in_channels,
            "num_classes": config.num_classes,
            "depth": config.depth,
            "base_channels": config.base_channels,
        }

    def check_network(self, hparams: Mapping[str, Any], data: TrainingData) -> None:
        """Refuse a network that cannot take the training items (before allocating it)."""
        return None

    # -- an epoch -------------------------------------------------------------

    def epoch_size(self, config: Any, num_items: int, world_size: int = 1) -> tuple[int, int]:
        """``(steps, items)`` of an epoch: every one of the ``num_items`` items
        once, the shard of each of ``world_size`` processes in batches, at most
        ``config.max_steps_per_epoch`` steps."""
        shard = shard_length(num_items, world_size)  # items per process
        return epoch_steps(shard, config.batch_size, config.max_steps_per_epoch), num_items

    @abstractmethod
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
        """The CPU batches ``(images, labels, dist)`` of steps ``start_step ..
        stop_step - 1`` of ``epoch`` for process ``rank`` of ``world_size``."""

    @abstractmethod
    def validate(
        self, model: nn.Module, cases: Sequence[Any], config: Any, device: torch.device
    ) -> dict[str, float]:
        """Mean DSC, HD and HD95 (mm) of ``model`` over ``cases``, in 3D with spacing:
        ``val_dice``, ``val_hd``, ``val_hd95`` (NaN without cases) and ``val_hd_inf``."""

    # -- inference -----------------------------------------------------------

    def inference_settings(self, settings: Any, patch_size: Sequence[int] | None) -> Any:
        """``settings`` completed for this mode (``patch_size``: an override)."""
        return settings

    @abstractmethod
    def iter_predict(
        self,
        model: nn.Module,
        volume: np.ndarray,
        spacing: Sequence[float] | None,
        settings: Any,
        options: PredictOptions,
    ) -> Generator[Any, None, tuple[np.ndarray, np.ndarray]]:
        """The predictor: ``(probs (C, *spatial), labels (*spatial))`` of a raw
        volume at its own geometry (``settings``: how the model was trained), yielding
        ``Progress`` per batch."""

    @abstractmethod
    def preview(
        self, model: nn.Module, preview: Any, axis: int, index: int, overlap: float
    ) -> np.ndarray:
        """Labels of slice ``index`` along ``axis`` of a
        :class:`~napari_boundary_seg.core.preview.SlicePreview`'s volume: that
        slice of the whole volume's prediction."""

    # -- fine-tuning ---------------------------------------------------------

    def check_finetune_images(self, shape: tuple[int, ...], parent: str) -> None:
        """Refuse images of ``shape`` ``(M, *spatial)`` that the checkpoint ``parent``
        cannot be fine-tuned on."""
        return None

    @abstractmethod
    def iter_finetune_samples(
        self,
        request: FinetuneRequest,
    ) -> Generator[Any, None, FinetuneSamples]:
        """The fine-tune's training data: the corrected slices of the request's
        case, mixed with original cases."""
