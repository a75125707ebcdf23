"""The built-in benchmark: a deterministic, highly unbalanced lesion data set.

Each case is a brain-like volume with small white-matter-hyperintensity-like
lesions (0.1–1 % of the voxels, several lesions, some of only a few voxels) and
two modalities, in the generic layout's channel order:

- ``FLAIR``: cerebrospinal fluid dark, grey matter slightly brighter than white
  matter, lesions bright (each lesion with its own contrast, some faint);
- ``T1``: white matter brightest, grey matter darker, fluid dark, lesions
  slightly dark.

Anatomy (``anatomy=``):

- ``"mni"``: the MNI152 2009c symmetric T1, grey- and white-matter templates that
  the ``nilearn`` wheel ships (read with nibabel; nilearn itself is not imported),
  resampled to the requested grid in MNI world coordinates;
- ``"phantom"``: a procedural head (ellipsoids for the scalp, skull, a folded
  cortex, white matter and the lateral ventricles);
- ``"auto"``: ``"mni"`` when the templates are found, else ``"phantom"``.

Per case (all drawn from ``numpy.random.default_rng(seed)``): an affine jitter
(rotation, scale, shift) and a smooth random displacement field; contrast
jitter; lesions grown in white matter, more likely near the ventricles
(periventricular, as WMH are); a smooth multiplicative bias field per modality;
Rician noise. The same seed gives identical arrays.

Presets
-------
``easy`` (:func:`make_case`, the default and the sample data, generator
version :data:`GENERATOR_VERSION`) has high-contrast lesions on one 2 mm grid: plain
generalized Dice already reaches DSC 0.98 on it. ``wmh`` (:func:`make_wmh_case`,
:class:`WMHConfig`) imitates what makes the WMH 2017 challenge data hard:

- several simulated sites (:data:`WMH_SITES`), each with its own grid, lesion
  contrast, noise, bias field and grey/white ratio; the site of each case is
  recorded in ``dataset.json`` so that a study can hold one out;
- partial volume: tissue and lesions are drawn on a grid twice as fine per axis
  and box-averaged; a voxel is labelled when more than half of it is lesion;
- a heavy-tailed lesion load, many punctate lesions of 1-10 voxels, larger deep
  lesions, confluent periventricular caps and bands with ragged boundaries;
- lesion contrast that varies per case and per lesion and fades towards the
  rim (rim voxels overlap normal white matter), a slightly dark T1;
- hyperintense mimics that are not labelled: the normal bright lining along
  the ventricles, bright cortical spots, and (in half the cases) a flow
  artefact: bright spots in the ventricles plus a faint phase-direction ghost.


Modules: :mod:`~napari_boundary_seg.core.synthetic_anatomy` (the reference
heads and what both presets share), :mod:`~napari_boundary_seg.core.synthetic_easy`
(the ``easy`` preset), :mod:`~napari_boundary_seg.core.synthetic_wmh` (the
``wmh`` preset); this one writes the benchmark on disk in the generic layout
(:func:`iter_write_benchmark`, :func:`read_sites`), and every public name of
the others is importable from here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg.core.cases import Case
from napari_boundary_seg.core.io import write_nifti, write_text_atomic
from napari_boundary_seg.core.progress import Progress, blocking
from napari_boundary_seg.core.synthetic_anatomy import (
    ANATOMIES,
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    MODALITIES,
    Anatomy,
    _check_grid,
    load_anatomy,
    mni_template_paths,
)
from napari_boundary_seg.core.synthetic_easy import GENERATOR_VERSION, LesionConfig, make_case
from napari_boundary_seg.core.synthetic_wmh import (
    WMH_GENERATOR_VERSION,
    WMH_SITES,
    SiteConfig,
    WMHConfig,
    _block_mean,  # noqa: F401 (tests read it from here)
    load_wmh_anatomy,
    make_wmh_case,
    wmh_load_config,
)
from napari_boundary_seg.core.validate import check_int

logger = logging.getLogger(__name__)

__all__ = [
    "ANATOMIES",
    "DATASET_NAME",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "GENERATOR_VERSION",
    "MODALITIES",
    "PRESETS",
    "WMH_GENERATOR_VERSION",
    "WMH_SITES",
    "Anatomy",
    "LesionConfig",
    "SiteConfig",
    "WMHConfig",
    "iter_write_benchmark",
    "load_anatomy",
    "load_wmh_anatomy",
    "make_case",
    "make_wmh_case",
    "wmh_load_config",
    "mni_template_paths",
    "read_sites",
    "write_benchmark",
]

PRESETS = ("easy", "wmh")
"""Generator presets: ``easy`` (the default) and ``wmh``."""


def _case_names(n_cases: int) -> list[str]:
    width = max(3, len(str(n_cases - 1)))
    return [f"case_{i:0{width}d}" for i in range(n_cases)]


def _prepare_out(out: Path, names: Sequence[str], overwrite: bool) -> Path:
    """Refuse (FileExistsError, naming the first file) to replace any file of the
    data set unless ``overwrite``, then make its folders; returns the
    ``dataset.json`` path."""
    targets = []
    for name in names:
        targets += [out / "imagesTr" / f"{name}_{m:04d}.nii.gz" for m in range(len(MODALITIES))]
        targets.append(out / "labelsTr" / f"{name}.nii.gz")
    meta_path = out / "dataset.json"
    if not overwrite:
        for path in [*targets, meta_path]:
            if path.exists():
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    return meta_path


def _write_case(out: Path, name: str, case: Case, overwrite: bool) -> list[Path]:
    """One case's modality images and labels in the generic layout; the written paths."""
    written = [
        write_nifti(
            out / "imagesTr" / f"{name}_{m:04d}.nii.gz",
            case.images[m],
            affine=case.affine,
            overwrite=overwrite,
        )
        for m in range(len(MODALITIES))
    ]
    written.append(
        write_nifti(
            out / "labelsTr" / f"{name}.nii.gz",
            case.labels,
            affine=case.affine,
            overwrite=overwrite,
        )
    )
    return written


def iter_write_benchmark(
    out_dir: str | os.PathLike,
    n_cases: int = 20,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    anatomy: str = "auto",
    overwrite: bool = False,
    lesions: LesionConfig = LesionConfig(),  # noqa: B008
    preset: str = "easy",
    wmh: WMHConfig | None = None,
) -> Generator[Progress, None, list[Path]]:
    """Write the benchmark in the generic layout, yielding ``Progress`` per case.

    Writes ``imagesTr/case_000_0000.nii.gz`` (FLAIR), ``imagesTr/case_000_0001.nii.gz``
    (T1), ``labelsTr/case_000.nii.gz`` and ``dataset.json`` (modalities, labels,
    generator parameters). Case ``i`` is ``make_case(seed=(seed, i), ...)``.
    Returns the written paths (dataset.json last). Refuses (FileExistsError,
    naming the first file) to replace existing files unless ``overwrite=True``;
    nothing is written in that case.

    ``preset="wmh"`` writes the harder WMH-2017-like preset instead
    (:func:`make_wmh_case` with ``wmh`` or ``WMHConfig()``; case ``i`` on site
    ``i % len(sites)``; ``shape``, ``spacing`` and ``lesions`` do not apply, each
    site has its own grid); ``dataset.json`` then also records each case's
    ``site`` (in ``training`` and ``generator.sites_by_case``).
    """
    check_int(n_cases, "n_cases", 1)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if preset == "wmh":
        return (
            yield from _iter_write_wmh(
                Path(out_dir), n_cases, seed, anatomy, overwrite, wmh or WMHConfig()
            )
        )
    shape, spacing = _check_grid(shape, spacing)
    out = Path(out_dir)
    names = _case_names(n_cases)
    meta_path = _prepare_out(out, names, overwrite)
    yield Progress(0, n_cases + 1, "building the anatomy")
    ref = load_anatomy(shape, spacing, anatomy)
    written: list[Path] = []
    fractions = []
    for i, name in enumerate(names):
        case = make_case((seed, i), anatomy=ref, lesions=lesions, case_id=name)
        written += _write_case(out, name, case, overwrite)
        fractions.append(float(case.labels.mean()))
        yield Progress(i + 1, n_cases + 1, f"wrote {name}")
    meta = _dataset_meta(
        DATASET_NAME,
        "Brain-like volumes with small white-matter-hyperintensity-like lesions "
        "(0.1-1 % of voxels), FLAIR-like and T1-like contrasts.",
        [{} for _ in names],
        names,
    )
    meta.update(
        generator={
            "version": GENERATOR_VERSION,
            "seed": seed,
            "case_seeds": [[seed, i] for i in range(n_cases)],
            "shape": list(shape),
            "spacing": list(spacing),
            "anatomy": ref.kind,
            "lesions": {
                "fraction": list(lesions.fraction),
                "count": list(lesions.count),
                "tiny": list(lesions.tiny),
                "min_fraction": lesions.min_fraction,
                "periventricular": lesions.periventricular,
            },
            "foreground_fraction": fractions,
        }
    )
    written.append(write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n"))
    yield Progress(n_cases + 1, n_cases + 1, "done")
    logger.info("wrote %d synthetic cases (%s anatomy) to %s", n_cases, ref.kind, out)
    return written


def _iter_write_wmh(
    out: Path, n_cases: int, seed: int, anatomy: str, overwrite: bool, config: WMHConfig
) -> Generator[Progress, None, list[Path]]:
    """The ``wmh`` preset on disk (see :func:`iter_write_benchmark`)."""
    names = _case_names(n_cases)
    meta_path = _prepare_out(out, names, overwrite)
    anatomies: dict[str, Anatomy] = {}
    written: list[Path] = []
    fractions, loads, sites, brain_shares = [], [], [], []
    for i, name in enumerate(names):
        site = config.site_of(i)
        if site.name not in anatomies:
            yield Progress(i, n_cases + 1, f"building the anatomy of site {site.name}")
            anatomies[site.name] = load_wmh_anatomy(site, config, anatomy)
        case = make_wmh_case((seed, i), site, config, anatomies[site.name], case_id=name)
        written += _write_case(out, name, case, overwrite)
        fractions.append(float(case.labels.mean()))
        loads.append(float(case.labels.sum()) * float(np.prod(case.spacing)) / 1000.0)
        if config.load_share is not None:  # the brain of the site's (undeformed) anatomy
            ref = anatomies[site.name]
            brain_ml = float((ref.gm + ref.wm).sum()) * float(np.prod(ref.spacing)) / 1000.0
            brain_shares.append(loads[-1] / brain_ml)
        sites.append(site.name)
        yield Progress(i + 1, n_cases + 1, f"wrote {name} (site {site.name})")
    meta = _dataset_meta(
        f"{DATASET_NAME}, wmh preset",
        "WMH-2017-like synthetic FLAIR/T1 volumes: several simulated sites, "
        "partial volume, punctate and confluent periventricular lesions, hyperintense mimics.",
        [{"site": site_name} for site_name in sites],
        names,
    )
    meta.update(
        generator={
            "preset": "wmh",
            "version": WMH_GENERATOR_VERSION,
            "seed": seed,
            "case_seeds": [[seed, i] for i in range(n_cases)],
            "anatomy": next(iter(anatomies.values())).kind,
            "sites_by_case": dict(zip(names, sites, strict=True)),
            "config": config.to_dict(),
            "foreground_fraction": fractions,
            "lesion_ml": loads,
            **({"brain_share": brain_shares} if brain_shares else {}),
        }
    )
    written.append(write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n"))
    yield Progress(n_cases + 1, n_cases + 1, "done")
    logger.info("wrote %d wmh-preset cases to %s", n_cases, out)
    return written


write_benchmark = blocking(iter_write_benchmark)


DATASET_NAME = "napari-boundary-seg synthetic lesions"
"""Start of the ``name`` in every ``dataset.json`` this module writes (both presets);
``synth`` writes into a non-empty folder only when its ``dataset.json`` says so."""


def _dataset_meta(
    name: str, description: str, extra: Sequence[dict[str, Any]], names: Sequence[str]
) -> dict[str, Any]:
    """The ``dataset.json`` fields both presets share (nnU-Net style), ``extra`` keys
    added to each case's ``training`` entry; the caller adds ``generator``."""
    return {
        "name": name,
        "description": description,
        "channel_names": {str(m): mod for m, mod in enumerate(MODALITIES)},
        "modality": {str(m): mod for m, mod in enumerate(MODALITIES)},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(names),
        "file_ending": ".nii.gz",
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz", **more}
            for n, more in zip(names, extra, strict=True)
        ],
    }


def read_sites(data_dir: str | os.PathLike) -> dict[str, str]:
    """``{case_id: site}`` from a data set's ``dataset.json`` (empty without sites)."""
    path = Path(data_dir) / "dataset.json"
    if not path.is_file():
        return {}
    meta = json.loads(path.read_text())
    sites = (meta.get("generator") or {}).get("sites_by_case")
    if isinstance(sites, dict):
        return {str(k): str(v) for k, v in sites.items()}
    out = {}
    for entry in meta.get("training", []):
        if isinstance(entry, dict) and "site" in entry and "label" in entry:
            out[Path(str(entry["label"])).name.split(".")[0]] = str(entry["site"])
    return out
