"""Simulated defocused windows for fitting and evaluating the defocus estimator.

Shared by ``benchmarks/defocus_fit.py`` (calibration) and
``benchmarks/defocus_accuracy.py`` (evaluation); nothing runs at import.

Sources and splits (in-focus material from ``../shared/data``):

=================  ============  =========================================================
source             modality      split
=================  ============  =========================================================
CMU-1-Small-Region brightfield   fit: rows y < 60 %; evaluate: rows y >= 66 % (disjoint FOVs)
TCGA frozen (L0)   brightfield   fit: rows y < 60 %; evaluate: rows y >= 66 %
ihc.png            brightfield   evaluate only (a source never seen in fitting)
Vectra DAPI/FITC/  fluorescence  fit: rows y < 60 %; evaluate: rows y >= 66 %
Cy3
CMU/TCGA haema-    fluorescence  fit only (pseudo-fluorescence: haematoxylin optical density
toxylin OD                       of the fit rows, bright on dark)
smalltif.tif       fluorescence  evaluate only (a source never seen in fitting)
=================  ============  =========================================================

The mitochondria and smear stacks are never used here (they are the real-data
check of ``defocus_accuracy.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("WSI_DEEPR_SHARED_DATA", ROOT.parent / "shared" / "data"))  # override for copies
WINDOW_UM = 64.0  # side of a simulated window (128 px at 0.5 µm/px)


@dataclass(frozen=True)
class Recipe:
    """Ranges of one simulated set (uniform unless noted)."""

    pixel_um: tuple[float, float] = (0.2, 1.0)          # log-uniform
    na: tuple[float, float] = (0.4, 0.95)
    spherical: tuple[float, float] = (-0.1, 0.1)
    spherical_abs: bool = False                         # draw |s| from spherical and a random sign
    z_max: float = 7.0
    p_near_focus: float = 0.3                           # share with |z| < near_um
    near_um: float = 0.5
    photons_bf: tuple[float, float] = (300.0, 20000.0)  # log-uniform
    read_bf: tuple[float, float] = (0.0, 0.005)
    photons_fl: tuple[float, float] = (20.0, 2000.0)
    read_fl: tuple[float, float] = (0.0, 0.02)
    jpeg_p: float = 0.8
    jpeg_q: tuple[int, int] = (30, 95)
    emission: tuple[float, float] = (0.45, 0.7)
    na_given: bool = True                               # pass the true NA to the estimator
    z_fixed: tuple[float, ...] | None = None            # draw |z| from these instead


RECIPES: dict[str, Recipe] = {
    "fit": Recipe(),                                     # the project's default optics ranges
    "fit_sa15": Recipe(spherical=(-0.15, 0.15)),         # and a half with more spherical aberration
    "recipe_na_given": Recipe(),
    "scanner_prior_blind": Recipe(pixel_um=(0.5, 0.5), na=(0.75, 0.75), na_given=False),
    "unseen_bf_0.5um_na0.75_sph": Recipe(pixel_um=(0.5, 0.5), na=(0.75, 0.75), spherical=(0.15, 0.25),
                                         spherical_abs=True, photons_bf=(120.0, 300.0),
                                         jpeg_p=1.0, jpeg_q=(22, 40), na_given=False),
    "unseen_fl_0.325um_na0.75_sph": Recipe(pixel_um=(0.325, 0.325), na=(0.75, 0.75),
                                           spherical=(0.15, 0.25), spherical_abs=True,
                                           photons_fl=(40.0, 150.0), read_fl=(0.01, 0.02),
                                           emission=(0.5, 0.68), na_given=False),
    "na_mismatch_0.65_blind": Recipe(pixel_um=(0.5, 0.5), na=(0.65, 0.65), na_given=False),
    "na_mismatch_0.85_blind": Recipe(pixel_um=(0.5, 0.5), na=(0.85, 0.85), na_given=False),
}


@dataclass
class Source:
    """An in-focus image (float ``[0, 1]``, ``(Y, X, C)``) and its role."""

    name: str
    image: np.ndarray = field(repr=False)
    mpp: float
    modality: str
    split: str  # "fit", "eval" or "both" (rows split)
    wavelengths: tuple[float, ...] | None = None

    def rows(self, part: str) -> tuple[int, int]:
        """Row range of ``part`` ("fit" or "eval")."""
        h = self.image.shape[0]
        if self.split == "both":
            return (0, int(0.6 * h)) if part == "fit" else (int(0.66 * h), h)
        return (0, h)


def _hematoxylin(rgb: np.ndarray) -> np.ndarray:
    od = -np.log(np.clip(rgb, 1.0 / 255.0, 1.0))
    hed = od @ np.linalg.inv(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]))
    h = np.clip(hed[:, :, :1], 0.0, None)
    return (h / max(np.percentile(h, 99.5), 1e-3)).clip(0, 1).astype(np.float32)


def load_sources() -> list[Source]:
    """Every in-focus source with its split (see the module notes)."""
    import skimage.io

    from wsi_deepr import open_slide

    out: list[Source] = []
    bf = (0.61, 0.545, 0.465)
    for name, mpp in (("CMU-1-Small-Region.svs", 0.499), ("tcga-cr-7395-01a-01-ts1.svs", 0.5)):
        s = open_slide(DATA / "slides" / name)
        a = s.read_region(0, 0, 0, *s.level_shapes[0][:2]).astype(np.float32) / 255.0
        out.append(Source(name, a, mpp, "brightfield", "both", bf))
        h, w = a.shape[:2]
        out.append(Source(name + "[H-OD]", _hematoxylin(a[: int(0.6 * h)]), mpp, "fluorescence", "fit"))
    ihc = skimage.io.imread(DATA / "images" / "ihc.png")[:, :, :3].astype(np.float32) / 255.0
    out.append(Source("ihc.png", ihc, 0.5, "brightfield", "eval", bf))
    v = open_slide(DATA / "slides" / "small_vectra.qptiff")
    a = v.read_region(0, 0, 0, *v.level_shapes[0][:2]).astype(np.float32)
    for c, cname in enumerate(v.channel_names):
        ch = a[:, :, c : c + 1]
        out.append(Source(f"small_vectra.qptiff[{cname}]", (ch / np.percentile(ch, 99.9)).clip(0, 1),
                          v.mpp[1], "fluorescence", "both"))
    t = open_slide(DATA / "slides" / "smalltif.tif")
    a = t.read_region(0, 0, 0, *t.level_shapes[0][:2]).astype(np.float32)
    out.append(Source("smalltif.tif", (a / np.percentile(a, 99.9)).clip(0, 1), 0.5, "fluorescence", "eval"))
    return out


def _log_u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


def _has_texture(patch: np.ndarray, modality: str) -> bool:
    from wsi_deepr.focus.features import texture_snr

    g = patch.mean(axis=2)[None].astype(np.float32)
    snr, con, _ = texture_snr(g, step=0.0)
    return bool(snr[0] > 6 and (modality == "fluorescence" or con[0] > 0.02))


def simulate_one(src: Source, part: str, recipe: Recipe, rng: np.random.Generator
                 ) -> tuple[np.ndarray, dict] | None:
    """One defocused window (in its acquisition type) and its labels, or ``None`` (no texture)."""
    from wsi_deepr.optics import OpticalSetting, defocus
    from wsi_deepr.optics.psf import psf_radius_px
    from wsi_deepr.optics.randomize import (add_poisson_gaussian_noise, apply_photometric,
                                            jpeg_recompress, resample)

    p = _log_u(rng, *recipe.pixel_um)
    n_p = max(32, round(WINDOW_UM / p))
    if recipe.z_fixed is not None:
        z = float(rng.choice(recipe.z_fixed))
    elif rng.random() < recipe.p_near_focus:
        z = float(rng.uniform(0, recipe.near_um))
    else:
        z = float(rng.uniform(0, recipe.z_max))
    z *= float(rng.choice((-1.0, 1.0)))
    na = float(rng.uniform(*recipe.na))
    sph = float(rng.uniform(*recipe.spherical))
    if recipe.spherical_abs:
        sph *= float(rng.choice((-1.0, 1.0)))
    fluo = src.modality == "fluorescence"
    wl = (float(rng.uniform(*recipe.emission)),) if fluo else tuple(
        w + float(rng.uniform(-0.015, 0.015)) for w in src.wavelengths)
    setting = OpticalSetting(na=na, wavelengths_um=wl, pixel_size_um=p, spherical_waves=sph)
    m = min(psf_radius_px(setting, z), 96)
    side_p = n_p + 2 * m
    scale = max(1.0, p / src.mpp)
    side_src = math.ceil(side_p * scale)
    r0, r1 = src.rows(part)
    h, w = src.image.shape[:2]
    if r1 - r0 < side_src or w < side_src:
        return None
    y = int(rng.integers(r0, r1 - side_src + 1))
    x = int(rng.integers(0, w - side_src + 1))
    crop = src.image[y : y + side_src, x : x + side_src]
    if not _has_texture(crop[::max(1, round(scale)), ::max(1, round(scale))], src.modality):
        return None
    if scale > 1.0:
        crop = resample(crop, (side_p, side_p))
    if fluo:
        crop = apply_photometric(crop, (_log_u(rng, 0.5, 1.4), _log_u(rng, 0.8, 1.25)), modality="fluorescence")
        crop = crop + np.float32(rng.uniform(0.0, 0.05))
        photons, read = _log_u(rng, *recipe.photons_fl), float(rng.uniform(*recipe.read_fl))
    else:
        phot = tuple(1.0 + rng.normal(0, 0.05, 3)) + tuple(rng.normal(0, 0.02, 3))
        crop = apply_photometric(crop, phot, modality="brightfield") * np.float32(rng.uniform(0.8, 1.0))
        photons, read = _log_u(rng, *recipe.photons_bf), float(rng.uniform(*recipe.read_bf))
    blurred = defocus(crop, setting, z, workers=1)[m : m + n_p, m : m + n_p]
    noisy = add_poisson_gaussian_noise(blurred, rng, photons=photons, read_noise=read)
    quality = None
    if not fluo and rng.random() < recipe.jpeg_p:
        quality = int(rng.integers(recipe.jpeg_q[0], recipe.jpeg_q[1] + 1))
        noisy = jpeg_recompress(noisy, quality)
    if fluo and rng.random() < 0.5:
        out = np.rint(noisy * 65535).astype(np.uint16)
    else:
        out = np.rint(noisy * 255).astype(np.uint8)
    labels = {"z": z, "na": na, "mpp": p, "spherical": sph, "photons": photons, "read": read,
              "jpeg": quality, "source": src.name, "modality": src.modality}
    return out, labels


def simulate_set(sources: list[Source], part: str, recipe: Recipe, n: int, seed: int,
                 modality: str) -> tuple[list[np.ndarray], list[dict]]:
    """``n`` windows of ``modality`` from the sources usable for ``part``, round-robin."""
    usable = [s for s in sources if s.modality == modality and (s.split == "both" or s.split == part)]
    rng = np.random.default_rng(seed)
    wins: list[np.ndarray] = []
    labels: list[dict] = []
    k = 0
    tries = 0
    while len(wins) < n and tries < 20 * n:
        tries += 1
        src = usable[k % len(usable)]
        res = simulate_one(src, part, recipe, rng)
        if res is None:
            continue
        k += 1
        wins.append(res[0])
        labels.append(res[1])
    return wins, labels
