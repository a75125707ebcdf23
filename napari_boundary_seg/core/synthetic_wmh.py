"""The ``wmh`` preset of the built-in benchmark: harder, WMH-2017-like cases.

Several simulated sites (:data:`WMH_SITES`, :class:`SiteConfig`), partial
volume, punctate and confluent periventricular lesions and hyperintense mimics
on the anatomy of :mod:`~napari_boundary_seg.core.synthetic_anatomy`
(:mod:`~napari_boundary_seg.core.synthetic` lists what the preset imitates). :func:`make_wmh_case` draws one case.

What the ``wmh`` defaults rest on. Verified here from sources (read with the
project's search tool):

- Challenge site (wmh.isi.uu.nl, archived December 2022) and Kuijf et al.,
  "Standardized assessment of automatic segmentation of white matter
  hyperintensities and results of the WMH segmentation challenge", IEEE TMI
  2019 (abstract, arXiv 1904.00682): 60 training sets (T1 + FLAIR) from three
  institutes/scanners; a test set of 110 from five scanners, three of them in
  the training data (hence a held-out site); manual contours per the STRIVE
  criteria, converted to masks "including all voxels whose volume > 50 % was
  included" in the contour (our ``label_threshold``); ranked by DSC, HD95,
  AVD, lesion recall and lesion F1.
- Kervadec et al. (MIDL 2019, section 4): the WMH data are 3D T1 and "2D
  multi-slice FLAIR" from three hospitals; GDL reached DSC 0.727, GDL + BL
  0.748 (Table 1; 2 runs, 10 validation scans).
- A secondary summary (not the paper) says all FLAIR images were provided at a
  common 3 mm slice thickness.

From memory, NOT verified here (the paper's table of scanners could not be
retrieved): the site voxel sizes (Utrecht, 3T Philips Achieva, 2D FLAIR
0.96 x 0.95 x 3.00 mm; Singapore, 3T Siemens TrioTim, 2D FLAIR 1.00 x 1.00 x
3.00 mm; Amsterdam, 3T GE Signa HDxt, 3D FLAIR about 0.98 x 0.98 x 1.2 mm
before resampling); the lesion load range of roughly 0.6 to over 150 ml per
scan; punctate lesions being the majority of lesions by count; confluent
periventricular lesions in the scans with high load. The default sites double
the in-plane voxel size (about 2 mm, to fit a 2-core CPU budget) and keep each
site's slice thickness; the GE site keeps the thin slices of a 3D FLAIR (2.4 mm
here), and a fourth, 1.5T-like site (noisier, lower contrast, 3.6 mm slices)
stands in for the test set's unseen scanners.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_boundary_seg.core.cases import Case
from napari_boundary_seg.core.synthetic_anatomy import (
    Anatomy,
    _deform,
    _grow_lesion,
    _padded_box,
    _smooth_field,
    load_anatomy,
    synthetic_case,
)
from napari_boundary_seg.core.validate import check_int

WMH_GENERATOR_VERSION = 1
"""Version of the ``wmh`` preset (recorded in its ``dataset.json``)."""

__all__ = [
    "WMH_GENERATOR_VERSION",
    "WMH_SITES",
    "SiteConfig",
    "WMHConfig",
    "LOAD_SPREAD",
    "load_wmh_anatomy",
    "make_wmh_case",
    "wmh_load_config",
]


@dataclass(frozen=True)
class SiteConfig:
    """One simulated scanner/site of the ``wmh`` preset.

    Attributes
    ----------
    name
        Site id, recorded per case in ``dataset.json`` (a study can hold it out).
    spacing
        Voxel size in mm (numpy/RAS order, the slice axis last). The defaults
        are the challenge sites' in-plane sizes doubled (CPU budget: about
        2 mm in plane) with the slice thickness kept as acquired.
    contrast
        ``(low, high)``: a case's mean lesion/white-matter ratio on FLAIR is
        drawn uniformly in this range (each lesion varies around it, see
        :attr:`WMHConfig.lesion_sd`).
    noise
        Rician noise sigma as a fraction of the white-matter level (each case
        multiplies it by a factor in [0.8, 1.25]).
    bias
        Standard deviation of the log bias field (smooth, multiplicative).
    gm_wm
        FLAIR grey/white-matter ratio (grey matter is brighter on FLAIR).
    """

    name: str
    spacing: tuple[float, float, float]
    contrast: tuple[float, float] = (1.3, 1.9)
    noise: float = 0.04
    bias: float = 0.12
    gm_wm: float = 1.25

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"site name must be a non-empty string, got {self.name!r}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or any(not math.isfinite(s) or s <= 0 for s in spacing):
            raise ValueError(f"site {self.name}: spacing must be 3 positive mm, got {self.spacing}")
        object.__setattr__(self, "spacing", spacing)
        lo, hi = self.contrast
        if not 1.0 < lo <= hi:
            raise ValueError(
                f"site {self.name}: contrast must satisfy 1 < low <= high, got {self.contrast}"
            )
        if not 0 <= self.noise < 1 or not 0 <= self.bias < 1:
            raise ValueError(
                f"site {self.name}: noise and bias must be in [0, 1), got {self.noise}, {self.bias}"
            )


WMH_SITES: tuple[SiteConfig, ...] = (
    # Utrecht, 3T Philips Achieva, 2D FLAIR 0.96 x 0.95 x 3.00 mm
    SiteConfig(
        "utrecht", (1.92, 1.90, 3.0), contrast=(1.55, 2.2), noise=0.03, bias=0.10, gm_wm=1.22
    ),
    # Singapore, 3T Siemens TrioTim, 2D FLAIR 1.00 x 1.00 x 3.00 mm
    SiteConfig(
        "singapore", (2.0, 2.0, 3.0), contrast=(1.5, 2.1), noise=0.045, bias=0.16, gm_wm=1.3
    ),
    # Amsterdam, 3T GE Signa HDxt, 3D FLAIR 0.98 x 0.98 x 1.2 mm (thin slices)
    SiteConfig(
        "amsterdam-ge3t", (1.96, 1.96, 2.4), contrast=(1.5, 2.0), noise=0.04, bias=0.12, gm_wm=1.15
    ),
    # a 1.5T-like site (the challenge's test set had two scanners absent from training):
    # lower SNR and contrast, thicker slices
    SiteConfig("sim-1.5t", (2.1, 2.1, 3.6), contrast=(1.4, 1.9), noise=0.065, bias=0.2, gm_wm=1.35),
)
"""Default sites of the ``wmh`` preset (cases are assigned round-robin)."""


@dataclass(frozen=True)
class WMHConfig:
    """Parameters of the ``wmh`` preset (each default documented; see the module docstring
    for which published facts they follow).

    Attributes
    ----------
    sites
        The simulated sites; case ``i`` belongs to ``sites[i % len(sites)]``.
    fov_mm
        Field of view in mm (numpy/RAS order); each site's grid is
        ``round(fov_mm / spacing)``.
    supersample
        Partial volume: tissue and lesions are drawn on a grid ``supersample``
        times finer per axis, then box-averaged to the site's grid; a voxel is
        labelled lesion when more than ``label_threshold`` of it is lesion
        (the WMH challenge's rule for its manual contours: > 50 %).
    label_threshold
        See ``supersample``.
    load_ml
        ``(low, high)``: total lesion volume per case in ml, log-uniform
        (WMH 2017 spans roughly 0.6 to 150+ ml per scan; see the module docstring).
    periventricular_share
        ``(low, high)``: share of the load in confluent periventricular lesions
        (caps and bands along the ventricles with irregular boundaries).
    punctate
        ``(low, high)``: number of punctate lesions of ``punctate_voxels``
        site voxels each (capped so that they fit in the load).
    punctate_voxels
        ``(low, high)``: size of a punctate lesion in site voxels (before
        partial volume; a few fall below the label threshold and stay faint,
        unlabelled spots).
    deep
        ``(low, high)``: number of larger deep white-matter lesions that share
        the rest of the load.
    lesion_sd
        Standard deviation of a lesion's log contrast around its case's mean.
    rim_mm
        The lesion contrast ramps from ``rim_floor`` of its excess at the
        boundary to its full value at this depth (mm): rims overlap normal
        tissue in intensity.
    rim_floor
        See ``rim_mm``.
    cap_depth_mm
        Confluent periventricular lesions fill the white matter whose distance
        to the ventricles, minus ``cap_depth_mm`` times a smooth random field
        (plus a quarter of that of a finer one, for ragged borders), is lowest:
        caps and bands where the field is high, none where it is low.
    t1_contrast
        ``(low, high)``: lesion/white-matter ratio on T1 (slightly dark).
    cortical_mimics
        ``(low, high)``: number of hyperintense spots in the cortex (not lesions).
    mimic_contrast
        ``(low, high)``: their FLAIR ratio to white matter.
    ventricle_lining
        ``(low, high)``: FLAIR ratio of the thin normal hyperintense lining along
        the ventricles (not a lesion), per case.
    flow_artefact
        Probability that a case has a flow (CSF inflow/pulsation) artefact:
        bright spots in the ventricles and a faint ghost of the head shifted
        along the phase-encoding axis in a slab of slices.
    load_share
        ``None`` (the default: ``load_ml`` applies), or ``(low, high)``: the
        total lesion volume per case as a share of the case's brain (grey plus
        white matter of its deformed anatomy), log-uniform, in place of
        ``load_ml``: the lesion-load axis of the regimes map
        (:func:`wmh_load_config`). The rest of the preset is unchanged, so at
        lower loads the punctate lesions (``punctate_voxels``) make up more of
        the lesions.
    """

    sites: tuple[SiteConfig, ...] = WMH_SITES
    fov_mm: tuple[float, float, float] = (192.0, 224.0, 192.0)
    supersample: int = 2
    label_threshold: float = 0.5
    load_ml: tuple[float, float] = (0.6, 150.0)
    periventricular_share: tuple[float, float] = (0.3, 0.85)
    punctate: tuple[int, int] = (10, 40)
    punctate_voxels: tuple[int, int] = (1, 10)
    deep: tuple[int, int] = (2, 10)
    lesion_sd: float = 0.12
    rim_mm: float = 2.5
    rim_floor: float = 0.4
    cap_depth_mm: float = 8.0
    t1_contrast: tuple[float, float] = (0.75, 0.95)
    cortical_mimics: tuple[int, int] = (3, 10)
    mimic_contrast: tuple[float, float] = (1.25, 1.8)
    ventricle_lining: tuple[float, float] = (1.1, 1.35)
    flow_artefact: float = 0.5
    load_share: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("WMHConfig.sites must name at least one site")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"WMHConfig.sites repeat a name: {names}")
        check_int(self.supersample, "WMHConfig.supersample", 1, 4)
        if not 0 < self.label_threshold < 1:
            raise ValueError(
                f"WMHConfig.label_threshold must be in (0, 1), got {self.label_threshold}"
            )
        lo, hi = self.load_ml
        if not 0 < lo <= hi:
            raise ValueError(f"WMHConfig.load_ml must satisfy 0 < low <= high, got {self.load_ml}")
        for name in ("punctate", "punctate_voxels", "deep", "cortical_mimics"):
            a, b = getattr(self, name)
            if not 0 <= a <= b:
                raise ValueError(f"WMHConfig.{name} must satisfy 0 <= low <= high, got {(a, b)}")
        if self.punctate_voxels[0] < 1:
            raise ValueError(f"WMHConfig.punctate_voxels must be >= 1, got {self.punctate_voxels}")
        a, b = self.periventricular_share
        if not 0 <= a <= b <= 1:
            raise ValueError(f"WMHConfig.periventricular_share must be in [0, 1], got {(a, b)}")
        if self.load_share is not None:
            lo, hi = (float(v) for v in self.load_share)
            if not 0 < lo <= hi < 0.5:
                raise ValueError(
                    f"WMHConfig.load_share must satisfy 0 < low <= high < 0.5, got {self.load_share}"
                )
            object.__setattr__(self, "load_share", (lo, hi))
        if not 0 <= self.flow_artefact <= 1:
            raise ValueError(
                f"WMHConfig.flow_artefact must be a probability, got {self.flow_artefact}"
            )

    def site_of(self, index: int) -> SiteConfig:
        """The site of case ``index`` (round-robin)."""
        return self.sites[index % len(self.sites)]

    def grid(self, site: SiteConfig) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """``(shape, spacing)`` of a site's volumes."""
        shape = tuple(
            max(8, int(round(f / s))) for f, s in zip(self.fov_mm, site.spacing, strict=True)
        )
        return shape, site.spacing  # type: ignore[return-value]

    def fine_grid(
        self, site: SiteConfig
    ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """``(shape, spacing)`` of the finer grid the site's cases are drawn on."""
        shape, spacing = self.grid(site)
        k = self.supersample
        return tuple(n * k for n in shape), tuple(s / k for s in spacing)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (recorded in ``dataset.json``)."""
        out = dataclasses.asdict(self)
        out["sites"] = [dataclasses.asdict(s) for s in self.sites]
        if self.load_share is None:
            del out["load_share"]  # the preset's record without a load axis
        return json.loads(json.dumps(out))


LOAD_SPREAD = 1.25
"""A load of the regimes map spans ``share / LOAD_SPREAD .. share * LOAD_SPREAD``."""


def wmh_load_config(share: float, config: WMHConfig | None = None) -> WMHConfig:
    """The ``wmh`` preset at one lesion load: ``share`` (a fraction, 0.03 for 3 %)
    of each case's brain, log-uniform within a factor :data:`LOAD_SPREAD`; the
    rest of ``config`` (default ``WMHConfig()``) is kept."""
    share = float(share)
    if not 0 < share * LOAD_SPREAD < 0.5:
        raise ValueError(f"a lesion load must be a share of the brain in (0, 0.4), got {share}")
    base = config if config is not None else WMHConfig()
    return dataclasses.replace(base, load_share=(share / LOAD_SPREAD, share * LOAD_SPREAD))


def load_wmh_anatomy(
    site: SiteConfig, config: WMHConfig = WMHConfig(), anatomy: str = "auto"
) -> Anatomy:  # noqa: B008
    """The reference head on a site's fine grid (build once per site, pass to :func:`make_wmh_case`)."""
    shape, spacing = config.fine_grid(site)
    return load_anatomy(shape, spacing, anatomy)


def _block_mean(volume: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return volume.astype(np.float32)
    x, y, z = (n // k for n in volume.shape)
    v = volume[: x * k, : y * k, : z * k].reshape(x, k, y, k, z, k)
    return v.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def _pick_centres(weight: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    flat = weight.ravel().astype(np.float64)
    total = flat.sum()
    if n <= 0 or total <= 0:
        return np.zeros((0, 3), dtype=np.int64)
    idx = rng.choice(flat.size, size=n, p=flat / total)
    return np.stack(np.unravel_index(idx, weight.shape), axis=1)


def make_wmh_case(
    seed: int | Sequence[int] = 0,
    site: SiteConfig | None = None,
    config: WMHConfig = WMHConfig(),  # noqa: B008
    anatomy: str | Anatomy = "auto",
    case_id: str | None = None,
) -> Case:
    """Generate one case of the ``wmh`` preset.

    Parameters
    ----------
    seed
        Seed of ``numpy.random.default_rng``; the same seed, site, config and
        anatomy give identical arrays.
    site
        The simulated site (default: ``config.sites[0]``).
    config
        The preset's parameters (:class:`WMHConfig`).
    anatomy
        ``"auto"``, ``"mni"``, ``"phantom"`` or an :class:`Anatomy` built on the
        site's fine grid by :func:`load_wmh_anatomy` (reuse it for many cases).
    case_id
        Name of the case; default ``"wmh_<seed>"``.

    Returns
    -------
    Case
        ``images (2, X, Y, Z)`` float32 (FLAIR, T1) and ``labels (X, Y, Z)``
        int64 in {0, 1} on the site's grid, with its spacing and affine.
    """
    site = config.sites[0] if site is None else site
    fine_shape, fine_spacing = config.fine_grid(site)
    if not isinstance(anatomy, Anatomy):
        anatomy = load_anatomy(fine_shape, fine_spacing, anatomy)
    if anatomy.shape != fine_shape:
        raise ValueError(
            f"anatomy grid {anatomy.shape} is not site {site.name}'s fine grid {fine_shape}; "
            "build it with load_wmh_anatomy(site, config)"
        )
    k = config.supersample
    rng = np.random.default_rng(seed)
    t1_ref, gm, wm, csf, other, vdist = _deform(anatomy, rng)
    fine_ml = float(np.prod(fine_spacing)) / 1000.0
    site_voxel_ml = fine_ml * k**3
    wm_core = wm > 0.5
    if not wm_core.any():
        raise ValueError(f"no white matter on the fine grid {fine_shape}: use a larger grid")

    # --- the lesion load and its parts ---------------------------------------------
    lo, hi = config.load_ml
    if config.load_share is not None:  # a share of this case's brain (grey + white matter)
        brain_ml = float((gm + wm).sum()) * fine_ml
        lo, hi = (share * brain_ml for share in config.load_share)
    load_ml = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    load_ml = min(load_ml, 0.5 * float(wm_core.sum()) * fine_ml)
    pv_share = rng.uniform(*config.periventricular_share)
    n_punct = int(rng.integers(config.punctate[0], config.punctate[1] + 1))
    pmin, pmax = config.punctate_voxels
    punct_sizes = rng.integers(pmin, pmax + 1, size=n_punct)
    # fit the punctate lesions into the load (at least 3 when there are any)
    while len(punct_sizes) > 3 and punct_sizes.sum() * site_voxel_ml > 0.6 * load_ml:
        punct_sizes = punct_sizes[:-1]
    punct_ml = float(punct_sizes.sum()) * site_voxel_ml
    cap_ml = max(load_ml - punct_ml, 0.0) * pv_share
    deep_ml = max(load_ml - punct_ml - cap_ml, 0.0)
    n_deep = int(rng.integers(config.deep[0], config.deep[1] + 1))

    label_id = np.zeros(fine_shape, dtype=np.int32)  # 0 none, 1 caps, 2.. other lesions
    # confluent periventricular lesions: white matter nearest the ventricles, with a
    # smooth random distortion of the distance for irregular, lobulated boundaries
    field = _smooth_field(rng, fine_shape, 7, 1.0)
    ragged = _smooth_field(rng, fine_shape, 15, 1.0)
    n_cap = int(round(cap_ml / fine_ml))
    if n_cap > 0:
        # caps where the smooth field is high (a few mm to over a cm deep), none elsewhere
        score = vdist - config.cap_depth_mm * field - 0.25 * config.cap_depth_mm * ragged
        score = np.where(wm_core, score, np.inf).ravel()
        n_cap = min(n_cap, int(np.isfinite(score).sum()))
    if n_cap > 0:
        chosen = np.argpartition(score, n_cap - 1)[:n_cap]
        caps = np.zeros(fine_shape, dtype=bool)
        caps.ravel()[chosen] = True
        # drop speckle: fragments under 4 site voxels are not confluent lesions
        comp, n_comp = ndimage.label(caps)
        if n_comp:
            keep = np.bincount(comp.ravel()) >= 4 * k**3
            keep[0] = False
            caps = keep[comp]
        label_id[caps] = 1
    # deep lesions (irregular blobs, away from the ventricles) and punctate ones
    sizes: list[int] = []
    if n_deep > 0 and deep_ml > 0:
        shares = rng.lognormal(0.0, 1.0, size=n_deep)
        sizes += [max(int(round(deep_ml / fine_ml * s / shares.sum())), 2 * k**3) for s in shares]
    # a punctate lesion of n site voxels is drawn as n * k^3 fine voxels (+30 %: the
    # blob does not align with the site's voxels, partial volume trims it)
    sizes += [int(round(s * k**3 * 1.3)) for s in punct_sizes]
    deep_weight = wm * (wm_core & (vdist > 6.0))
    if not deep_weight.any():
        deep_weight = wm * wm_core
    centres = _pick_centres(deep_weight, len(sizes), rng)
    taken = label_id > 0
    for j, (size, centre) in enumerate(zip(sizes, centres, strict=False)):
        idx = _grow_lesion(centre, size, wm_core, taken, rng)
        idx = idx[~taken.ravel()[idx]]
        if idx.size:
            taken.ravel()[idx] = True
            label_id.ravel()[idx] = j + 2
    # round off ragged blob surfaces (a lesion is one compact region, not a sponge
    # that the site grid would split into face-disconnected fragments)
    closed = ndimage.binary_closing(label_id > 0, iterations=1) & (wm > 0.2)
    grown = closed & (label_id == 0)
    if grown.any():
        nearest = ndimage.grey_dilation(label_id, size=3)
        label_id[grown] = nearest[grown]
    mask = label_id > 0

    # --- FLAIR and T1 on the fine grid -----------------------------------------------
    jitter = rng.uniform(0.93, 1.07, size=3)
    wm_level = 0.5
    flair = (
        wm_level * site.gm_wm * jitter[0] * gm
        + wm_level * wm
        + 0.08 * jitter[1] * csf
        + 0.4 * jitter[2] * other * np.clip(t1_ref / 0.6, 0, 1.5)
    ).astype(np.float32)
    t1 = (np.clip(t1_ref, 0, None) ** rng.uniform(0.85, 1.15)).astype(np.float32)
    wm_t1 = float(np.median(t1[wm > 0.8])) if np.any(wm > 0.8) else float(t1.max())
    # normal hyperintense lining along the ventricles (not a lesion)
    lining = (vdist > 0) & (vdist <= 1.6 * max(fine_spacing)) & (wm > 0.2)
    lining_ratio = rng.uniform(*config.ventricle_lining)
    flair = np.where(lining, flair * np.float32(lining_ratio), flair)
    # hyperintense cortical spots (not lesions)
    n_mimic = int(rng.integers(config.cortical_mimics[0], config.cortical_mimics[1] + 1))
    cortex = gm > 0.5
    if n_mimic and cortex.any():
        free = np.zeros(fine_shape, dtype=bool)
        for centre in _pick_centres(gm * cortex * (csf + 0.05), n_mimic, rng):
            size = int(rng.integers(2 * k**3, 12 * k**3 + 1))
            idx = _grow_lesion(centre, size, cortex, free | mask, rng)
            free.ravel()[idx] = True
            flair.ravel()[idx] *= np.float32(rng.uniform(*config.mimic_contrast) / site.gm_wm)
    # lesions: per-lesion contrast around the case's mean, ramped from the rim inwards
    if mask.any():
        box = _padded_box(mask, 2)
        depth = ndimage.distance_transform_edt(mask[box], sampling=fine_spacing)
        ramp = config.rim_floor + (1.0 - config.rim_floor) * np.clip(depth / config.rim_mm, 0, 1)
        case_contrast = rng.uniform(*site.contrast)
        n_ids = int(label_id.max()) + 1
        per_lesion = case_contrast * np.exp(rng.normal(0.0, config.lesion_sd, size=n_ids))
        per_lesion = np.maximum(per_lesion, 1.02)
        ratio = per_lesion[label_id[box]]
        # caps: the contrast also drifts smoothly across the confluent lesion
        caps = label_id[box] == 1
        ratio = np.where(caps, 1.0 + (ratio - 1.0) * np.exp(0.25 * field[box]), ratio)
        excess = (ratio - 1.0) * ramp
        m = mask[box]
        sub = flair[box]
        sub[m] = (wm_level * (1.0 + excess[m])).astype(np.float32)
        flair[box] = sub
        t1_ratio = rng.uniform(*config.t1_contrast)
        t1_sub = t1[box]
        t1_sub[m] = np.float32(wm_t1) * np.float32(t1_ratio + (1 - t1_ratio) * (1 - ramp[m]) * 0.5)
        t1[box] = t1_sub
    texture = 1.0 + 0.12 * ndimage.gaussian_filter(
        rng.standard_normal(fine_shape).astype(np.float32), 1.0
    )
    flair *= texture
    t1 *= texture

    # --- partial volume: to the site's grid --------------------------------------------
    flair = _block_mean(flair, k)
    t1 = _block_mean(t1, k)
    labels = _block_mean(mask.astype(np.float32), k) > config.label_threshold
    wm_site = _block_mean(wm, k)
    csf_site = _block_mean(csf * (vdist < 1.0), k)
    shape = labels.shape
    # flow artefact: bright spots in the ventricles, a faint ghost along the phase axis
    if rng.uniform() < config.flow_artefact:
        z0 = int(rng.integers(0, shape[2]))
        z1 = min(shape[2], z0 + int(rng.integers(2, 6)))
        ghost = np.roll(flair[:, :, z0:z1], int(rng.integers(shape[1] // 6, shape[1] // 3)), axis=1)
        flair[:, :, z0:z1] += np.float32(rng.uniform(0.05, 0.12)) * ghost
        vent = csf_site > 0.5
        for centre in _pick_centres(vent.astype(np.float32), int(rng.integers(1, 4)), rng):
            spot = tuple(slice(max(c - 1, 0), c + 1) for c in centre)
            flair[spot] = np.maximum(flair[spot], np.float32(wm_level * rng.uniform(1.3, 1.9)))

    out = []
    noise = site.noise * rng.uniform(0.8, 1.25)
    for image in (flair, t1):
        bias = np.exp(_smooth_field(rng, shape, 4, site.bias))
        image = image * bias * rng.uniform(300.0, 600.0)
        level = (
            float(np.median(image[wm_site > 0.8])) if np.any(wm_site > 0.8) else float(image.max())
        )
        sigma = noise * max(level, 1e-3)
        real = image + sigma * rng.standard_normal(shape).astype(np.float32)
        imag = sigma * rng.standard_normal(shape).astype(np.float32)
        out.append(np.sqrt(real * real + imag * imag).astype(np.float32))  # Rician
    # the site grid's affine: the centre of a block of k fine voxels
    affine = anatomy.affine @ np.block(
        [
            [np.diag([float(k)] * 3), np.full((3, 1), (k - 1) / 2.0)],
            [np.zeros((1, 3)), np.ones((1, 1))],
        ]
    )
    return synthetic_case("wmh", seed, case_id, out, labels, site.spacing, affine)
