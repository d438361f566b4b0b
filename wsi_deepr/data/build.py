"""Build pair datasets: simulated from in-focus images, or from real z-stacks.

* :func:`open_sources` turns paths into :class:`InFocusSource` objects: slides
  through :func:`wsi_deepr.readers.open_slide`, plain images (PNG, BMP, JPEG)
  through scikit-image, chosen planes of a z-stack (``stack.ome.tif#18-20``).
  Fluorescence images give one single-channel source per channel.
* :func:`build_simulated` cuts every file into non-overlapping fields of view
  (FOVs, shared by its channels/planes) with tissue, splits FOVs 0.85 : 0.15,
  and draws pairs with domain-randomised optics
  (:mod:`wsi_deepr.optics.randomize`) in worker processes, reproducibly.
* :func:`build_from_stacks` registers each stack, fuses an EDOF image, picks
  each patch's ground-truth plane by SSIM and pairs the planes around it.

Both write the same format (:mod:`wsi_deepr.data.dataset`) and record what went
in (``attrs["sources"]``, ``attrs["settings"]``).
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from wsi_deepr.errors import OutputExistsError, SlideNotFoundError, TilingError, UnsupportedFormatError
from wsi_deepr.optics import randomize as rz
from wsi_deepr.optics.defocus import defocus, defocus_tilted
from wsi_deepr.optics.psf import OpticalSetting, psf_radius_px
from wsi_deepr.data.dataset import PairDatasetWriter
from wsi_deepr.data.edof import edof_wavelet
from wsi_deepr.data.pairs import patch_grid, select_ground_truth, split_by_fov, stack_pairs
from wsi_deepr.data.registration import register_stack, registration_residuals
from wsi_deepr.data.stacks import ZStack, read_stack

__all__ = ["InFocusSource", "build_from_stacks", "build_simulated", "emission_wavelength", "open_sources"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg")
_SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".qptiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms")
_EMISSION = (("dapi", 0.461), ("hoechst", 0.461), ("fitc", 0.52), ("gfp", 0.51), ("488", 0.52),
             ("520", 0.52), ("cy3", 0.57), ("tritc", 0.57), ("570", 0.57), ("texas", 0.615),
             ("620", 0.62), ("cy5", 0.67), ("650", 0.67), ("690", 0.69), ("cy7", 0.78))


def emission_wavelength(channel_name: str, default: float = 0.52) -> float:
    """Emission wavelength (µm) guessed from a fluorescence channel name."""
    name = channel_name.lower()
    return next((wl for key, wl in _EMISSION if key in name), default)


@dataclass
class InFocusSource:
    """One in-focus image to simulate from, read lazily as float in ``[0, 1]``."""

    path: str
    name: str
    shape: tuple[int, int]
    channels: tuple[str, ...]
    pixel_size_um: float
    pixel_size_assumed: bool
    modality: str
    wavelengths_um: tuple[float, ...]
    read: Callable[[int, int, int, int], np.ndarray] = field(repr=False)
    scale: float = 1.0

    def to_dict(self) -> dict:
        """Provenance record."""
        return {"path": self.path, "name": self.name, "shape": list(self.shape),
                "channels": list(self.channels), "pixel_size_um": self.pixel_size_um,
                "pixel_size_assumed": self.pixel_size_assumed, "modality": self.modality,
                "wavelengths_um": list(self.wavelengths_um), "intensity_divisor": self.scale}


def _fluo_divisor(sample: np.ndarray, dtype: np.dtype) -> float:
    """Intensity that maps to 1.0: the 99.9th percentile (fluorescence rarely fills its range)."""
    return float(max(np.percentile(sample, 99.9), 1.0 if np.dtype(dtype).kind in "ui" else 1e-6))


def _split_channels(path: str, name: str, shape, names, mpp, assumed, modality, reader, sample) -> list:
    if modality == "brightfield":
        return [InFocusSource(path, name, shape, tuple(names), mpp, assumed, modality,
                              rz.BRIGHTFIELD_WAVELENGTHS_UM, reader, float(np.iinfo(sample.dtype).max)
                              if sample.dtype.kind == "u" else 1.0)]
    out = []
    for c, cname in enumerate(names):
        def read_c(y0, x0, y1, x1, _c=c):
            return reader(y0, x0, y1, x1)[:, :, _c : _c + 1]
        out.append(InFocusSource(path, f"{name}[{cname}]", shape, (cname,), mpp, assumed, modality,
                                 (emission_wavelength(cname),), read_c,
                                 _fluo_divisor(sample[:, :, c], sample.dtype)))
    return out


def open_sources(
    paths: Iterable[str | Path], *, modality: str, default_pixel_size_um: float = 0.5,
) -> list[InFocusSource]:
    """In-focus sources from slide files, plain images, stack planes or folders of them.

    ``stack.ome.tif#18-20`` takes planes 18..20 of a z-stack (each one source).
    Folders are expanded (non-recursively).  A source of the other modality is
    an error; unknown pixel sizes default to ``default_pixel_size_um`` and are
    recorded as assumed.
    """
    out: list[InFocusSource] = []
    for spec in paths:
        spec = str(spec)
        path, _, planes = spec.partition("#")
        p = Path(path)
        if not p.exists():
            raise SlideNotFoundError(f"{p}: no such in-focus image or folder")
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES + _SLIDE_SUFFIXES)
            out += open_sources(files, modality=modality, default_pixel_size_um=default_pixel_size_um)
            continue
        if planes:
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", planes)
            if not m:
                raise ValueError(f"{spec!r}: write planes as PATH#K or PATH#K-L (0-based positions)")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            stack = read_stack(p, planes=range(lo, hi + 1), modality=modality)
            for k, plane in zip(range(lo, hi + 1), stack.planes):
                px = stack.pixel_size_um
                out += _split_channels(str(p), f"{p.name}#{k}", plane.shape[:2], stack.channel_names,
                                       px or default_pixel_size_um, px is None, modality,
                                       lambda y0, x0, y1, x1, _a=plane: _a[y0:y1, x0:x1], plane)
            continue
        if p.suffix.lower() in _IMAGE_SUFFIXES:
            import skimage.io

            arr = np.asarray(skimage.io.imread(p))
            arr = arr[:, :, None] if arr.ndim == 2 else arr[:, :, :3]
            names = ("R", "G", "B") if arr.shape[2] == 3 else tuple(f"C{i}" for i in range(arr.shape[2]))
            out += _split_channels(str(p), p.name, arr.shape[:2], names, default_pixel_size_um, True,
                                   modality, lambda y0, x0, y1, x1, _a=arr: _a[y0:y1, x0:x1], arr)
            continue
        from wsi_deepr.readers import open_slide

        slide = open_slide(p, modality=modality)
        mpp = slide.mpp[1] if slide.mpp else None
        if mpp is not None and not 0.05 <= mpp <= 20:
            mpp = None
        shape = slide.shape[:2]
        cy, cx = shape[0] // 2, shape[1] // 2
        sample = slide.read_region(0, max(0, cy - 1024), max(0, cx - 1024),
                                   min(shape[0], cy + 1024), min(shape[1], cx + 1024))
        out += _split_channels(str(p), p.name, shape, slide.channel_names, mpp or default_pixel_size_um,
                               mpp is None, modality,
                               lambda y0, x0, y1, x1, _s=slide: _s.read_region(0, y0, x0, y1, x1), sample)
    for s in out:
        if (s.modality == "brightfield") != (len(s.channels) == 3):
            raise UnsupportedFormatError(f"{s.path}: {len(s.channels)} channel(s) cannot be {s.modality}")
    return out


def _check_output(out: str | Path, overwrite: bool) -> None:
    if Path(out).exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: pass overwrite=True (--overwrite) to replace it")


def _has_content(img: np.ndarray, modality: str, min_fraction: float) -> bool:
    """Whether a field of view holds tissue (brightfield) or signal (fluorescence).

    Brightfield: at least ``min_fraction`` of the pixels are coloured or darker
    than background.  Fluorescence, whose structures are sparse: at least
    ``min_fraction / 10`` of the pixels lie 0.15 (of the source's range) above
    the field's 5th percentile.
    """
    small = img[::4, ::4]
    if modality == "brightfield":
        tissue = (small.max(axis=2) - small.min(axis=2) > 0.06) | (small.mean(axis=2) < 0.8)
        return float(tissue.mean()) >= min_fraction
    lo = float(np.percentile(small, 5))
    return float((small > lo + 0.15).mean()) >= min_fraction / 10


def _max_margin(ranges: rz.RandomizationRanges, pixel_um: float, wavelengths: tuple[float, ...]) -> int:
    """Worst-case PSF radius in target pixels over the ranges (for the smallest pixel)."""
    zmax = max(abs(ranges.z_um[0]), abs(ranges.z_um[1])) + ranges.tilt_span_um[1] / 2
    wl = tuple(w + ranges.wavelength_jitter_um for w in wavelengths)
    sph = max(abs(ranges.spherical_waves[0]), abs(ranges.spherical_waves[1]))
    n = max(ranges.refractive_index)
    radii = [psf_radius_px(OpticalSetting(na=min(na, 0.98 * n), wavelengths_um=wl, pixel_size_um=pixel_um,
                                          refractive_index=n, spherical_waves=sph), zmax)
             for na in ranges.na]
    return max(radii)


@dataclass(frozen=True)
class _Job:
    """Picklable work for one process: pairs drawn from one field of view."""

    cell_pixels: np.ndarray
    cell_origin: tuple[int, int]
    modality: str
    pixel_size_um: float
    wavelengths_um: tuple[float, ...]
    divisor: float
    ranges: rz.RandomizationRanges
    patch: int
    storage_max: int
    pairs: tuple[tuple[int, np.random.SeedSequence], ...]


def _simulate_pair(job: _Job, seed: np.random.SeedSequence) -> tuple:
    """One pair from a job's field of view: quantised input and target, realisation, origin."""
    rng = np.random.default_rng(seed)
    patch = job.patch
    real = rz.sample_realisation(rng, job.ranges, modality=job.modality, native_pixel_size_um=job.pixel_size_um,
                                 wavelengths_um=job.wavelengths_um, patch_size=patch)
    st = real.setting
    if real.plane is None:
        r = psf_radius_px(st, real.z_um)
    else:
        half = patch / 2 * st.pixel_size_um * (abs(real.plane.slope_y) + abs(real.plane.slope_x))
        r = max(psf_radius_px(st, real.z_um - half), psf_radius_px(st, real.z_um + half))
    work = sfft.next_fast_len(patch + 2 * r, real=True)
    cside = min(job.cell_pixels.shape[:2])
    side = min(math.ceil(work * real.pixel_scale), cside)
    jy = int(rng.integers(0, cside - side + 1))
    jx = int(rng.integers(0, cside - side + 1))
    raw = job.cell_pixels[jy : jy + side, jx : jx + side].astype(np.float32) / np.float32(job.divisor)
    obj = rz.apply_photometric(rz.resample(raw, (work, work)), real.photometric, modality=job.modality)
    if real.plane is None:
        blurred = defocus(obj, st, real.z_um, mode="wrap", workers=1)
    else:
        blurred, _ = defocus_tilted(obj, st, real.plane, mode="wrap", workers=1)
    # The target is the in-focus capture through the SAME optics (the diffraction-limited PSF at z = 0,
    # with the same aberration), as a real focal pair is: against the bare object, the model would learn
    # to sharpen beyond the objective's resolution even at z = 0, and over-sharpen in-focus slides.
    focus = defocus(obj, st, 0.0, mode="wrap", workers=1)
    o = (work - patch) // 2
    inp, tgt = blurred[o : o + patch, o : o + patch], focus[o : o + patch, o : o + patch]
    inp = rz.add_poisson_gaussian_noise(inp, rng, photons=real.photons, read_noise=real.read_noise)
    if real.jpeg_quality is not None:
        inp = rz.jpeg_recompress(inp, real.jpeg_quality)
    dtype = np.uint8 if job.storage_max == 255 else np.uint16
    q = [np.rint(np.clip(a, 0.0, 1.0) * job.storage_max).astype(dtype) for a in (inp, tgt)]
    scale = side / work
    origin = (job.cell_origin[0] + jy + round(o * scale), job.cell_origin[1] + jx + round(o * scale))
    return q[0], q[1], real, origin


def _run_job(job: _Job) -> list[tuple]:
    return [(i, *_simulate_pair(job, seed)) for i, seed in job.pairs]


def _fields_of_view(sources: list[InFocusSource], ranges: rz.RandomizationRanges, *, patch_size: int,
                    modality: str, min_tissue: float, cache_mb: int) -> tuple[list, list, dict]:
    """The fields of view with content: ``(cells, per-source ranges, fov keys)``.

    One field-of-view grid per file, shared by its channels (no split leakage
    between them); the pixels of fields are kept in memory up to ``cache_mb``.
    """
    cside_of: dict[str, int] = {}
    work_of: dict[str, int] = {}
    for src in sources:
        margin = _max_margin(ranges, src.pixel_size_um * ranges.pixel_scale[0], src.wavelengths_um)
        work = sfft.next_fast_len(patch_size + 2 * margin, real=True)
        work_of[src.path] = max(work_of.get(src.path, 0), work)
        cside_of[src.path] = max(cside_of.get(src.path, 0), math.ceil(work * ranges.pixel_scale[1]))
    cells, src_ranges, fov_keys = [], [], {}
    cache_left = int(cache_mb) * 2**20
    too_small = 0
    for si, src in enumerate(sources):
        work = work_of[src.path]
        cside = min(cside_of[src.path], *src.shape)  # small image: one smaller field
        cap = cside / work
        src_ranges.append(replace(ranges, pixel_scale=(ranges.pixel_scale[0], max(ranges.pixel_scale[0],
                                                                                    min(ranges.pixel_scale[1], cap)))))
        if cap < ranges.pixel_scale[0]:
            log.warning("%s: %s px is smaller than one field of view (%d px); skipped", src.name, src.shape, work)
            too_small += 1
            continue
        grid = patch_grid(src.shape, cside)
        kept = 0
        for y, x in grid:
            raw = np.asarray(src.read(y, x, y + cside, x + cside))
            if _has_content(raw.astype(np.float32) / np.float32(src.scale), modality, min_tissue):
                # keep the pixels of fields with content (re-read later beyond the budget)
                cached = raw if cache_left >= raw.nbytes else None
                cache_left -= raw.nbytes if cached is not None else 0
                fov = fov_keys.setdefault((src.path, y, x), len(fov_keys))
                cells.append((si, (y, x, cside), cached, fov))
                kept += 1
        log.info("%s: %d of %d fields of view (%d px) have content", src.name, kept, len(grid), cside)
    if not cells:
        if too_small == len(sources):
            raise TilingError(f"every source is smaller than one field of view for patch_size={patch_size} "
                              "plus the PSF margin: lower patch_size or the z range")
        raise ValueError(f"no field of view with tissue/signal (min_tissue={min_tissue}): lower min_tissue "
                         "or patch_size, or add sources")
    return cells, src_ranges, fov_keys


def _run_jobs(jobs: Iterable[_Job], write: Callable[[list[tuple]], None], *, workers: int) -> None:
    """Simulate every job, in this process or in ``workers`` processes; ``write`` the results in order."""
    if workers <= 1:
        for job in jobs:
            write(_run_job(job))
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork: the parent runs threads (zarr, tifffile)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque = deque()
        for job in jobs:  # at most 2 jobs per worker in flight, written in order
            pending.append(pool.submit(_run_job, job))
            if len(pending) >= 2 * workers:
                write(pending.popleft().result())
        while pending:
            write(pending.popleft().result())


def build_simulated(
    sources: list[InFocusSource],
    out: str | Path,
    *,
    n_pairs: int,
    patch_size: int = 256,
    ranges: rz.RandomizationRanges | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    workers: int = 2,
    min_tissue: float = 0.3,
    cache_mb: int = 1024,
    job_size: int = 16,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Simulate ``n_pairs`` (defocused, in-focus) pairs from in-focus sources.

    Parameters
    ----------
    sources : list of InFocusSource
        One modality, one channel count (see :func:`open_sources`).
    out : str or Path
        Dataset folder to create.
    n_pairs : int
        Number of pairs.
    patch_size : int
        Patch side in pixels.
    ranges : RandomizationRanges, optional
        Domain randomisation; default :meth:`RandomizationRanges.for_modality`.
    val_fraction : float
        Fraction of fields of view held out for validation.
    seed : int
        Makes the dataset reproducible (independent of ``workers``).
    workers : int
        Processes simulating pairs (``<= 1``: in this process).
    min_tissue : float
        Minimum tissue fraction of a field of view.
    cache_mb : int
        Memory budget for keeping the fields of view's pixels between pairs.
    job_size : int
        Pairs per unit of work sent to a process.
    overwrite : bool
        Replace ``out``.
    progress : callable, optional
        Called with the number of pairs written after each one.

    Returns
    -------
    dict
        The dataset summary (also stored in the dataset).
    """
    if not sources:
        raise ValueError("sources is empty: give at least one in-focus image")
    modality = sources[0].modality
    nch = {len(s.channels) for s in sources}
    if len(nch) != 1 or {s.modality for s in sources} != {modality}:
        raise ValueError("sources mix modalities or channel counts: build one dataset per modality")
    _check_output(out, overwrite)
    ranges = ranges or rz.RandomizationRanges.for_modality(modality)
    cells, src_ranges, fov_keys = _fields_of_view(sources, ranges, patch_size=patch_size, modality=modality,
                                                  min_tissue=min_tissue, cache_mb=cache_mb)
    fov_val = split_by_fov(np.arange(len(fov_keys)), val_fraction=val_fraction, seed=seed)
    order = np.random.default_rng(seed).permutation(len(cells))
    assign = [int(order[i % len(cells)]) for i in range(n_pairs)]
    seeds = np.random.SeedSequence(seed).spawn(n_pairs)
    storage = "uint8" if modality == "brightfield" else "uint16"
    names = {s.channels for s in sources}  # mixed single-channel fluorescence sources: generic names
    channels = sources[0].channels if len(names) == 1 else tuple(f"C{i}" for i in range(len(sources[0].channels)))
    writer = PairDatasetWriter(out, patch_size=patch_size, channels=channels, modality=modality,
                               kind="simulated", storage_dtype=storage, overwrite=overwrite)

    def jobs() -> Iterable[_Job]:
        for ci, (si, (y, x, cside), cached, _) in enumerate(cells):
            mine = [i for i in range(n_pairs) if assign[i] == ci]
            if not mine:
                continue
            src = sources[si]
            pixels = cached if cached is not None else np.asarray(src.read(y, x, y + cside, x + cside))
            for k in range(0, len(mine), job_size):
                yield _Job(pixels, (y, x), modality, src.pixel_size_um, src.wavelengths_um, src.scale,
                           src_ranges[si], patch_size, int(np.iinfo(storage).max),
                           tuple((i, seeds[i]) for i in mine[k : k + job_size]))

    def write(results: list[tuple]) -> None:
        for i, inp, tgt, real, origin in results:
            si, _, _, fov = cells[assign[i]]
            tilt = (0.0, 0.0) if real.plane is None else (real.plane.slope_y, real.plane.slope_x)
            writer.add(inp, tgt, z_um=real.z_um, pixel_size_um=real.setting.pixel_size_um, fov=fov,
                       split=int(fov_val[fov]), source=si, origin=origin, na=real.setting.na,
                       spherical_waves=real.setting.spherical_waves, tilt=tilt)
            if progress is not None:
                progress(len(writer))

    _run_jobs(jobs(), write, workers=workers)
    settings = {"builder": "simulated", "n_pairs": n_pairs, "patch_size": patch_size, "seed": seed,
                "val_fraction": val_fraction, "min_tissue": min_tissue, "ranges": ranges.to_dict(),
                "fields_of_view": len(fov_keys), "noise_and_jpeg": "input only",
                "photometric_jitter": "object (input and target)",
                "target": "the object imaged in focus (z = 0) through the same optics as the input"}
    return writer.close(sources=[s.to_dict() for s in sources], settings=settings,
                        notes="z_um: centre defocus; tilted pairs carry dz/dy, dz/dx in `tilt`")


def build_from_stacks(
    stacks: list[ZStack],
    out: str | Path,
    *,
    patch_size: int = 256,
    max_offset: int | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    measure_residuals: bool = True,
    gt_sigma: float = 1.0,
    min_content: float = 0.1,
    overwrite: bool = False,
) -> tuple[dict, list[dict]]:
    """Build pairs from real focal series (the paper's pipeline).

    Parameters
    ----------
    stacks : list of ZStack
        Focal series of one modality and channel count, each with a known
        ``z_step_um``.
    out : str or Path
        Dataset folder to create.
    patch_size : int
        Patch side (512 in the paper; use 64-256 for small stacks).
    max_offset : int, optional
        Pair planes within this many planes of the ground truth; default all.
    val_fraction, seed, overwrite
        As for :func:`build_simulated`; fields of view are patch positions.
    measure_residuals : bool
        Re-register the registered planes and record the residuals.
    gt_sigma : float
        Gaussian smoothing (px) of the planes for the EDOF and the SSIM
        comparison only (stored pixels are not smoothed): keeps noise texture,
        which registration resampling alters, from deciding the ground truth.
    min_content : float
        Patches of the EDOF with less tissue/signal than this fraction are
        not paired (empty background has no focus).

    Returns
    -------
    summary : dict
        The dataset summary.
    reports : list of dict
        Per stack: registration parameters and residuals, chosen planes.
    """
    if not stacks:
        raise ValueError("stacks is empty: give at least one focal series")
    _check_output(out, overwrite)
    for st in stacks:
        if st.z_step_um is None:
            raise ValueError(f"{st.source}: unknown axial step; pass z_step_um (CLI: --z-step)")
    modality = stacks[0].modality
    if {s.modality for s in stacks} != {modality} or {s.n_channels for s in stacks} != {stacks[0].n_channels}:
        raise ValueError("stacks mix modalities or channel counts: build one dataset per modality")
    prepared, reports, fov_base = [], [], 0
    for si, st in enumerate(stacks):
        reg = register_stack(st)
        divisor = 255.0 if st.dtype == np.uint8 else float(max(np.percentile(reg.planes, 99.9), 1.0))
        planes = np.clip(reg.planes / divisor, 0.0, 1.0)
        smooth = ndimage.gaussian_filter(planes, (0, gt_sigma, gt_sigma, 0)) if gt_sigma > 0 else planes
        fused = edof_wavelet(smooth)
        grid = patch_grid(planes.shape[1:3], patch_size)
        corners = [(y, x) for y, x in grid
                   if _has_content(fused.image[y : y + patch_size, x : x + patch_size], modality, min_content)]
        if not corners:
            log.warning("%s: no %d-px patch with content; lower min_content or patch_size", st.source, patch_size)
        choices = select_ground_truth(smooth, fused.image, patch=patch_size, data_range=1.0, corners=corners)
        report = {"source": st.source, "planes": len(st), "frame": list(planes.shape[1:3]),
                  "reference_plane": int(st.z_index[reg.reference]),
                  "crop": list(reg.crop), "transforms": reg.parameters(), "intensity_divisor": divisor,
                  "patches": len(grid), "patches_with_content": len(corners),
                  "chosen_planes": [int(st.z_index[c.plane]) for c in choices],
                  "patch_origins": [[c.y, c.x] for c in choices],
                  "ssim_best": [round(max(c.ssim), 4) for c in choices]}
        if measure_residuals:
            res = registration_residuals(reg.planes, reg.reference)
            report["residuals"] = {k: (np.round(v, 3).tolist() if isinstance(v, list) else round(v, 3))
                                   for k, v in res.items()}
        reports.append(report)
        prepared.append((st, planes, choices, fov_base))
        fov_base += len(choices)
    fov_val = split_by_fov(np.arange(fov_base), val_fraction=val_fraction, seed=seed)
    writer = PairDatasetWriter(out, patch_size=patch_size, channels=stacks[0].channel_names, modality=modality,
                               kind="zstack", storage_dtype="uint8" if modality == "brightfield" else "uint16",
                               overwrite=overwrite)
    for si, (st, planes, choices, base) in enumerate(prepared):
        off = len(st) if max_offset is None else max_offset
        for pi, k, t in stack_pairs(choices, st.z_index, max_offset=off):
            c = choices[pi]
            sl = (slice(c.y, c.y + patch_size), slice(c.x, c.x + patch_size))
            writer.add(planes[k][sl], planes[t][sl],
                       z_um=float(st.z_index[k] - st.z_index[t]) * st.z_step_um,
                       pixel_size_um=np.nan if st.pixel_size_um is None else st.pixel_size_um,
                       fov=base + pi, split=int(fov_val[base + pi]), source=si, origin=(c.y, c.x),
                       input_plane=k, target_plane=t)
    sources = [{"path": st.source, "name": Path(st.source).name, "planes": len(st),
                "z_index": st.z_index.tolist(), "z_step_um": st.z_step_um,
                "z_step_assumed": bool(st.metadata.get("z_step_assumed", False)),
                "pixel_size_um": st.pixel_size_um,
                "pixel_size_assumed": bool(st.metadata.get("pixel_size_assumed", False)),
                "modality": st.modality, "channels": list(st.channel_names)}
               for st in stacks]
    settings = {"builder": "zstack", "patch_size": patch_size, "max_offset": max_offset,
                "val_fraction": val_fraction, "seed": seed, "gt_sigma": gt_sigma, "min_content": min_content,
                "edof": "stationary wavelet db2, 3 levels, max-modulus with 5x5 majority consistency",
                "ground_truth": "max SSIM (Gaussian window) to the EDOF per patch",
                "registration": "sequential similarity (translation, rotation, scale) to the sharpest plane",
                "reports": reports}
    return writer.close(sources=sources, settings=settings,
                        notes="z_um = (input plane - target plane) x z_step_um"), reports
