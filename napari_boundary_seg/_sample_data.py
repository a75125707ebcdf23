"""npe2 sample data: one case of the built-in lesion benchmark.

The case (``core.synthetic.make_case``, seed 0, the benchmark's default grid
96 x 112 x 96 at 2 mm) is generated on first use (about 2 s) and cached as NIfTI
files in the user cache folder (``platformdirs.user_cache_dir``, overridden by
the environment variable ``NAPARI_BOUNDARY_SEG_CACHE``), in a sub-folder named
after the generator version, seed and grid, so that a new generator never
serves stale files. The layers are read back through the plugin's own reader:
FLAIR and T1 Image layers and a ``lesions`` Labels layer, with the case's
spacing as ``scale`` and its affine as ``translate``.

Its Image layers name the starter model (a bioimage.io package shipped in
``napari_boundary_seg/models/``, built by ``benchmarks/starter_model.py``) in
their metadata under :data:`MODEL_METADATA_KEY`, so that the Predict and
Finetune widgets take it when no model is chosen. The sample menu has two
entries: the lesion case (:func:`make_lesion_sample`) and the starter model
(:func:`make_starter_sample`: the same case, refused with a one-line error when
the model is not built).

Each entry has its own command, whose id is not ``<plugin>.<key>``: napari
registers the menu item of sample ``key`` under that id, next to the manifest's
commands, and an equal id that is not the entry's own command is a "Command
already registered" error when napari starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from napari_boundary_seg._reader import LayerData, read_volume, volume_to_layer_data
from napari_boundary_seg.core.io import write_nifti
from napari_boundary_seg.core.synthetic import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    GENERATOR_VERSION,
    make_case,
)

logger = logging.getLogger(__name__)

CACHE_ENV = "NAPARI_BOUNDARY_SEG_CACHE"
MODEL_METADATA_KEY = "napari_boundary_seg_model"
"""Layer metadata key naming a model (checkpoint or package) to predict the layer with."""
SAMPLE_SEED = 0
SAMPLE_SHAPE = DEFAULT_SHAPE
SAMPLE_SPACING = DEFAULT_SPACING
LABELS_NAME = "lesions"


def cache_dir() -> Path:
    """The plugin's cache folder (``$NAPARI_BOUNDARY_SEG_CACHE`` or the user cache)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-boundary-seg"))


def sample_case_files(seed: int = SAMPLE_SEED) -> dict[str, Path]:
    """Paths of the cached sample case, generating it on first use.

    Returns
    -------
    dict
        ``{"FLAIR": path, "T1": path, "lesions": path}`` (``.nii.gz`` files).
    """
    shape = "x".join(str(s) for s in SAMPLE_SHAPE)
    spacing = "x".join(f"{s:g}" for s in SAMPLE_SPACING)
    folder = cache_dir() / f"sample-v{GENERATOR_VERSION}-seed{seed}-{shape}-{spacing}mm"
    names = ("FLAIR", "T1", LABELS_NAME)
    files = {name: folder / f"{name}.nii.gz" for name in names}
    if all(f.exists() for f in files.values()):
        return files
    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.info("generating the sample case in %s", folder)
    case = make_case(seed, shape=SAMPLE_SHAPE, spacing=SAMPLE_SPACING)
    tmp = Path(tempfile.mkdtemp(prefix=".sample-", dir=folder.parent))
    try:
        for modality, image in zip(case.modalities, case.images, strict=True):
            write_nifti(tmp / f"{modality}.nii.gz", image, affine=case.affine)
        write_nifti(tmp / f"{LABELS_NAME}.nii.gz", case.labels.astype("uint8"), affine=case.affine)
        if folder.exists():  # an incomplete earlier attempt
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            if not all(f.exists() for f in files.values()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def starter_model_path() -> Path | None:
    """The starter model shipped with the plugin, a bioimage.io package of a small 2D
    UNet trained on the synthetic wmh preset (``benchmarks/starter_model.py``); None
    when it is not there (a checkout that has not built it)."""
    path = Path(__file__).resolve().parent / "models" / "starter_model.zip"
    return path if path.is_file() else None


def make_starter_sample() -> list[LayerData]:
    """npe2 sample-data command "Starter model": the lesion case whose Image layers
    name the shipped starter model, so that Predict works on the first click.

    Raises
    ------
    FileNotFoundError
        The starter model is not in the package (a checkout that has not run
        ``benchmarks/starter_model.py``).
    """
    if starter_model_path() is None:
        raise FileNotFoundError(
            "The starter model is not built: run 'python benchmarks/starter_model.py'"
        )
    return make_lesion_sample()


def make_lesion_sample() -> list[LayerData]:
    """npe2 sample-data command: FLAIR and T1 Image layers (naming the starter model
    in their metadata), ``lesions`` Labels layer."""
    layers: list[LayerData] = []
    for name, path in sample_case_files().items():
        volume, _ = read_volume(path)
        data, kwargs, kind = volume_to_layer_data(path, volume, labels=name == LABELS_NAME)
        extra: dict[str, Any] = {"name": name}
        if kind == "image":
            extra.update(colormap="gray", visible=name == "FLAIR")
            model = starter_model_path()
            if model is not None:
                extra["metadata"] = {**kwargs.get("metadata", {}), MODEL_METADATA_KEY: str(model)}
        else:
            extra.update(opacity=0.7)
        kwargs.update(extra)
        layers.append((data, kwargs, kind))
    return layers
