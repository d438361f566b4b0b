"""Restoration judged the way users meet it: default settings, optics outside the training recipe.

For every shipped model and the non-blind method (or ``--model``), fields
of in-focus images are defocused by ``|z|`` with optics the training recipe
did not use (NA 0.75 at 0.5 µm/px — ``--na``/``--mpp`` change both, e.g. the 0.325 µm/px
of a fluorescence camera —, Noll-11 spherical aberration of 0.02-0.1
waves RMS of random sign — ``--spherical 0.2 0.5`` is a stress test far
beyond real objectives —, Poisson noise of 300-3000 photons at full scale,
and JPEG Q70-95 for brightfield), written as slides and refocused **exactly
as a user would**: ``refocus`` with its defaults (defocus map, ``--where
auto``, the card's threshold, scale and halo).  Each result is scored against the same field through the same
optics at ``z = 0`` (SSIM, Gaussian window sigma 1.5, and PSNR on [0, 1],
``margin`` px from the edges left out), beside the defocused input and
Richardson-Lucy (30 iterations) given the **true** PSF
(:func:`export.evaluate.rl_true_psf`).  Prints the per-defocus table and the
issue-13 gates (no bin worse than the input by more than 0.005 SSIM; mean
SSIM gain at ``|z| >= 3``; bins at or above RL-true-PSF).

Sources: ``--unseen`` uses the images of
``benchmarks/fetch_unseen_sources.py`` (from PyPI wheels; no training or
tuning run used them), or give in-focus images with ``--source PATH``
(repeatable; slides or PNG/TIFF images).  Without either the shared images are
used — CMU-1-Small-Region, the TCGA frozen section and ihc.png for
brightfield, the Vectra channels for fluorescence — which the shipped models
*were* trained on (other fields of view, other optics), so those numbers say
nothing about unseen sources: the report says which were used.

Usage::

    python benchmarks/fetch_unseen_sources.py
    python benchmarks/unseen_eval.py --unseen --size 288 --fields 4 [--model deepr-fluorescence]
        [--model deconvolve:brightfield] [--spherical 0.2 0.5] [--z 0 1 2 3 4 5] [--mpp 0.325]
        [--astigmatism 0.02 0.1] [--coma 0.02 0.1] [--sharpen 0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # export/
sys.path.insert(0, str(ROOT / "benchmarks"))  # fetch_unseen_sources
SHARED = ROOT.parent / "shared" / "data"
MPP = 0.5
NA = 0.75
#: |Noll-11 spherical aberration| in waves RMS: 0.02-0.1 is Strehl 0.98-0.67 (W040 of 0.27-1.3 waves peak),
#: from a well-corrected objective to a cover-glass error beyond what scanners tolerate
SPHERICAL = (0.02, 0.1)


def _load(path: Path) -> np.ndarray:
    """``(Y, X, C)`` pixels of a slide or a plain image (PNG/JPEG/BMP, or a plain 2-D/RGB TIFF)."""
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        import skimage.io
        import tifffile

        img = np.asarray(tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff")
                         else skimage.io.imread(path))
        return img[..., :3] if img.ndim == 3 else img[..., None]
    from wsi_deepr import open_slide

    slide = open_slide(path)
    return slide.read_region(0, 0, 0, *slide.shape[:2])


def _default_sources(modality: str) -> list[Path]:
    if modality == "brightfield":
        return [SHARED / "slides" / "CMU-1-Small-Region.svs", SHARED / "slides" / "tcga-cr-7395-01a-01-ts1.svs",
                SHARED / "images" / "ihc.png"]
    return [SHARED / "slides" / "small_vectra.qptiff"]


def _fields(images: list[np.ndarray], modality: str, *, size: int, count: int, rng) -> list[np.ndarray]:
    """``count`` fields per image with content, brightfield RGB or one fluorescence channel each."""
    out = []
    for img in images:
        planes = [img] if modality == "brightfield" else [img[..., c:c + 1] for c in range(img.shape[-1])]
        for plane in planes:
            got, tries = 0, 0
            while got < count and tries < 200:
                tries += 1
                y = int(rng.integers(0, plane.shape[0] - size + 1))
                x = int(rng.integers(0, plane.shape[1] - size + 1))
                f = plane[y:y + size, x:x + size]
                ok = ((-np.log10((f.astype(np.float64) + 1) / 256.0)).max(axis=-1) > 0.15).mean() > 0.5 \
                    if modality == "brightfield" else f.std() > 0.05 * max(float(plane.max()), 1.0)
                if ok:
                    out.append(f)
                    got += 1
    return out


def _capture(obj: np.ndarray, setting, z: float, *, photons: float, jpeg: int | None, rng,
             koehler: bool = False, sharpen: float = 0.0) -> np.ndarray:
    """What a scanner with ``setting`` records of ``obj`` ([0, 1]) at defocus ``z``: 8-bit.

    ``koehler``: partially coherent brightfield (condenser NA 0.45, phase 1 rad per unit OD,
    :func:`wsi_deepr.optics.koehler.defocus_koehler`) instead of incoherent imaging.
    ``sharpen``: the scanner's unsharp mask, ``x + sharpen (x - G_1px * x)``, after the noise and
    before JPEG.
    """
    from wsi_deepr.optics import defocus
    from wsi_deepr.optics.koehler import defocus_koehler
    from wsi_deepr.optics.randomize import add_poisson_gaussian_noise, jpeg_recompress

    blurred = defocus_koehler(obj, setting, z) if koehler else defocus(obj, setting, z)
    img = add_poisson_gaussian_noise(blurred, rng, photons=photons, read_noise=0.0)
    if sharpen:
        from scipy.ndimage import gaussian_filter

        img = img + sharpen * (img - gaussian_filter(img, sigma=(1.0, 1.0, 0.0)[:img.ndim]))
    if jpeg is not None:
        img = jpeg_recompress(np.clip(img, 0, 1), jpeg)
    return np.clip(np.rint(np.clip(img, 0, 1) * 255), 0, 255).astype(np.uint8)


def _refocus(pixels: np.ndarray, model: str | None, tmp: Path, method: str = "deepr", *,
             mpp: float = MPP) -> tuple[np.ndarray, dict]:
    """``refocus`` with its defaults on ``pixels`` written as a slide; the output and its ``focus`` record."""
    import tifffile

    from wsi_deepr import refocus

    src, out = tmp / "field.tif", tmp / "field.refocused.ome.tif"
    rgb = pixels.shape[-1] == 3
    tifffile.imwrite(src, pixels if rgb else pixels[..., 0], photometric="rgb" if rgb else "minisblack",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    result = refocus(src, out, model=model, method=method, scheduler="threads", overwrite=True, compression="zlib")
    got = tifffile.imread(out)
    return (got if got.ndim == 3 else got[..., None]), result.provenance.get("focus") or {}


def _score(pred: np.ndarray, target: np.ndarray, margin: int) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    sl = (slice(margin, -margin), slice(margin, -margin))
    p, t = np.clip(pred[sl], 0, 1), np.clip(target[sl], 0, 1)
    s = structural_similarity(p, t, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
    return float(s), float(peak_signal_noise_ratio(t, p, data_range=1.0))


def _subject(name: str) -> tuple[str | None, str, str]:
    """``(model, method, modality)`` of a subject: a model name, or ``deconvolve:MODALITY`` / ``auto:MODALITY``."""
    from wsi_deepr.inference.registry import resolve_model
    from wsi_deepr.readers.slide import Modality

    if ":" in name:
        method, modality = name.split(":", 1)
        return None, method, modality
    return name, "deepr", resolve_model(name, modality=Modality.BRIGHTFIELD).card.modality.value


class Case(NamedTuple):
    """One defocused capture of one field and its truth (:func:`cases`)."""

    field: int
    z: float
    signed_z: float
    captured: np.ndarray  # (H, W, C) uint8
    target: np.ndarray  # (H, W, C) float32 in [0, 1]
    setting: object  # the OpticalSetting of the field


def resolve_sources(modality: str, sources: list[Path] | None, *, unseen: bool) -> list[Path]:
    """The unseen sources of ``modality``, else ``sources``, else the shared (seen) ones."""
    if unseen:
        from fetch_unseen_sources import bright_sources, fluorescence_sources

        sources = bright_sources() if modality == "brightfield" else fluorescence_sources()
        if not sources:
            raise SystemExit("no unseen sources fetched: run python benchmarks/fetch_unseen_sources.py first")
    return list(sources or _default_sources(modality))


def cases(modality: str, sources: list[Path], *, fields: int, z_grid: list[float], size: int, seed: int = 0,
          na: float = NA, spherical: tuple[float, float] = SPHERICAL, mpp: float = MPP, koehler: bool = False,
          astigmatism: tuple[float, float] = (0.0, 0.0), coma: tuple[float, float] = (0.0, 0.0),
          sharpen: float = 0.0) -> Iterator[Case]:
    """Every field of ``sources`` captured at every ``|z|`` of ``z_grid`` (sign alternating), with its truth.

    The seeded draws (fields, optics, noise) are the evaluation's: every
    benchmark that calls this with the same arguments sees the same captures.
    """
    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, FLUORESCENCE_WAVELENGTH_UM, OpticalSetting

    rng = np.random.default_rng(seed)
    chosen = _fields([_load(s) for s in sources], modality, size=size, count=fields, rng=rng)
    wavelengths = BRIGHTFIELD_WAVELENGTHS_UM if modality == "brightfield" else (FLUORESCENCE_WAVELENGTH_UM,)
    for k, field in enumerate(chosen):
        top = 255.0 if modality == "brightfield" else max(float(np.percentile(field, 99.9)), 1.0)
        obj = np.clip(field.astype(np.float32) / top, 0, 1)
        extra = {name: float(rng.choice([-1, 1]) * rng.uniform(*rng_range))
                 for name, rng_range in (("astigmatism_waves", astigmatism), ("coma_waves", coma))
                 if rng_range[1] > 0}  # drawn only when asked: the default fields stay the same
        setting = OpticalSetting(na=na, wavelengths_um=wavelengths, pixel_size_um=mpp,
                                 spherical_waves=float(rng.choice([-1, 1]) * rng.uniform(*spherical)), **extra)
        photons = float(rng.uniform(300, 3000))
        jpeg = int(rng.integers(70, 96)) if modality == "brightfield" else None
        target = _capture(obj, setting, 0.0, photons=1e9, jpeg=None, rng=rng,
                          koehler=koehler, sharpen=sharpen).astype(np.float32) / 255
        for z in z_grid:
            sign = 1 if (k + int(z)) % 2 == 0 else -1
            captured = _capture(obj, setting, sign * z, photons=photons, jpeg=jpeg, rng=rng, koehler=koehler,
                                sharpen=sharpen)
            yield Case(k, z, sign * z, captured, target, setting)


def rl_oracle(image: np.ndarray, setting, z_um: float, **kwargs) -> np.ndarray:
    """Richardson-Lucy with the PSF of ``setting`` (aberrations included) at ``z_um``: the evaluation's oracle."""
    from export.evaluate import rl_true_psf

    aberrations = {"spherical_waves": setting.spherical_waves, "astigmatism_waves": setting.astigmatism_waves,
                   "coma_waves": setting.coma_waves}
    return rl_true_psf(image, na=setting.na, pixel_size_um=setting.pixel_size_um, z_um=z_um,
                       wavelengths_um=setting.wavelengths_um, **(aberrations | kwargs))


def finish(report, json_path: Path | None, started: float) -> int:
    """Print the elapsed time, write ``report`` as JSON to ``json_path`` when given; the exit status 0."""
    print(f"({time.perf_counter() - started:.0f} s)")
    if json_path:
        json_path.write_text(json.dumps(report, indent=1))
    return 0


def evaluate(subject: str, sources: list[Path] | None, *, fields: int, z_grid: list[float], size: int = 384,
             margin: int = 32, seed: int = 0, na: float = NA, spherical: tuple[float, float] = SPHERICAL,
             unseen: bool = False, illumination: str = "incoherent", mpp: float = MPP,
             astigmatism: tuple[float, float] = (0.0, 0.0), coma: tuple[float, float] = (0.0, 0.0),
             sharpen: float = 0.0) -> dict:
    """Per-|z| SSIM/PSNR of input, RL-true-PSF and the default ``refocus`` output of ``subject``.

    ``subject``: an installed model's name, ``deconvolve:brightfield`` /
    ``deconvolve:fluorescence`` (``--method deconvolve``) or
    ``auto:brightfield`` / ``auto:fluorescence`` (what ``wsi-deepr refocus``
    does with no ``--model`` and no ``--method``).  ``unseen``: the images
    of ``benchmarks/fetch_unseen_sources.py`` of the subject's modality.
    ``illumination="koehler"``: brightfield captured partially coherently
    (Köhler; the truth too), outside every training recipe.  ``astigmatism``,
    ``coma``: ranges of the Noll-6 / Noll-8 coefficients (waves RMS, random
    sign; the training recipes have neither), known to the RL oracle.
    ``sharpen``: the scanner's unsharp mask on every capture, the truth too.
    """
    model, method, modality = _subject(subject)
    koehler = illumination == "koehler" and modality == "brightfield"
    sources = resolve_sources(modality, sources, unseen=unseen)
    records = []
    n_fields = set()
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(modality, sources, fields=fields, z_grid=z_grid, size=size, seed=seed, na=na,
                          spherical=spherical, mpp=mpp, koehler=koehler, astigmatism=astigmatism, coma=coma,
                          sharpen=sharpen):
            n_fields.add(case.field)
            out, focus = _refocus(case.captured, model, Path(tmp), method, mpp=mpp)
            inp = case.captured.astype(np.float32) / 255
            rec = {"z": case.z, "field": case.field, "refocused_windows": focus.get("refocused_windows"),
                   "windows": focus.get("windows")}
            for key, img in (("input", inp), ("output", out.astype(np.float32) / 255),
                             ("rl", rl_oracle(inp, case.setting, case.signed_z))):
                rec[f"ssim_{key}"], rec[f"psnr_{key}"] = _score(img, case.target, margin)
            records.append(rec)
    rows = []
    for z in z_grid:
        grp = [r for r in records if r["z"] == z]
        rows.append({"z": z, "n": len(grp), **{k: float(np.mean([r[k] for r in grp])) for k in
                     ("ssim_input", "ssim_rl", "ssim_output", "psnr_input", "psnr_rl", "psnr_output")},
                     "network_share": float(np.mean([(r["refocused_windows"] or 0) / max(1, r["windows"] or 1)
                                                     for r in grp]))})
    far = [r for r in rows if r["z"] >= 3]
    return {"model": subject, "modality": modality, "sources": [str(s) for s in sources], "fields": len(n_fields),
            "optics": f"NA {na:g}, {mpp:g} µm/px, spherical {spherical[0]:g}-{spherical[1]:g} waves, "
                      "300-3000 photons" + (", Koehler illumination (condenser NA 0.45, phase 1 rad/OD)"
                                            if koehler else "")
                      + (", JPEG Q70-95" if modality == "brightfield" else "")
                      + "".join(f", {name} {lo:g}-{hi:g} waves" for name, (lo, hi) in
                                (("astigmatism", astigmatism), ("coma", coma)) if hi > 0)
                      + (f", unsharp mask {sharpen:g}" if sharpen else ""),
            "rows": rows,
            "worst_bin_change": min(r["ssim_output"] - r["ssim_input"] for r in rows),
            "gain_abs_z_ge_3": float(np.mean([r["ssim_output"] - r["ssim_input"] for r in far])) if far else None,
            "bins_at_or_above_rl": sum(r["ssim_output"] >= r["ssim_rl"] for r in far), "bins_z_ge_3": len(far)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=None,
                   help="a model name, deconvolve:MODALITY or auto:MODALITY; repeatable [default: every shipped "
                        "model and deconvolve: for both modalities]")
    p.add_argument("--na", type=float, default=NA, help="NA of the simulated optics")
    p.add_argument("--spherical", type=float, nargs=2, default=SPHERICAL, metavar=("LOW", "HIGH"),
                   help="range of |Noll-11 spherical aberration| in waves RMS (0.2 0.5: a stress test, Strehl < 0.2)")
    p.add_argument("--unseen", action="store_true",
                   help="use the images of benchmarks/fetch_unseen_sources.py (sources no training run used)")
    p.add_argument("--size", type=int, default=384, help="field side in px (288 fits every unseen source)")
    p.add_argument("--illumination", choices=["incoherent", "koehler"], default="incoherent",
                   help="brightfield imaging model: incoherent (the training recipe's) or partially coherent Koehler")
    p.add_argument("--astigmatism", type=float, nargs=2, default=(0.0, 0.0), metavar=("LOW", "HIGH"),
                   help="range of |Noll-6 astigmatism| in waves RMS (not in any training recipe) [none]")
    p.add_argument("--coma", type=float, nargs=2, default=(0.0, 0.0), metavar=("LOW", "HIGH"),
                   help="range of |Noll-8 coma| in waves RMS (not in any training recipe) [none]")
    p.add_argument("--sharpen", type=float, default=0.0,
                   help="the scanner's unsharp mask (amount, 1-px Gaussian) on every capture and the truth [0]")
    p.add_argument("--mpp", type=float, default=MPP,
                   help="pixel size of the simulated captures in µm/px (0.325: a 20x fluorescence camera)")
    p.add_argument("--source", action="append", type=Path, default=None, help="in-focus image or slide")
    p.add_argument("--fields", type=int, default=3, help="fields per source image (per channel)")
    p.add_argument("--z", type=float, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from wsi_deepr.inference.registry import list_models

    t0 = time.perf_counter()
    subjects = args.model or [m.name for m in list_models()] + ["deconvolve:brightfield", "deconvolve:fluorescence"]
    reports = [evaluate(m, args.source, fields=args.fields, z_grid=args.z, na=args.na,
                        spherical=tuple(args.spherical), unseen=args.unseen, size=args.size,
                        illumination=args.illumination, mpp=args.mpp, astigmatism=tuple(args.astigmatism),
                        coma=tuple(args.coma), sharpen=args.sharpen) for m in subjects]
    for rep in reports:
        print(f"\n{rep['model']} ({rep['fields']} fields; {rep['optics']}; sources: "
              f"{', '.join(Path(s).name for s in rep['sources'])})")
        print("| |z| µm | n | SSIM input | SSIM RL-true-PSF | SSIM output | PSNR input | PSNR RL | PSNR output "
              "| windows refocused |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rep["rows"]:
            print(f"| {r['z']:g} | {r['n']} | {r['ssim_input']:.3f} | {r['ssim_rl']:.3f} | {r['ssim_output']:.3f} | "
                  f"{r['psnr_input']:.2f} | {r['psnr_rl']:.2f} | {r['psnr_output']:.2f} | "
                  f"{100 * r['network_share']:.0f} % |")
        gain = rep["gain_abs_z_ge_3"]
        print(f"worst bin change {rep['worst_bin_change']:+.3f} (gate >= -0.005); mean gain |z| >= 3 "
              f"{'n/a' if gain is None else f'{gain:+.3f}'}; at or above RL in {rep['bins_at_or_above_rl']} of "
              f"{rep['bins_z_ge_3']} bins |z| >= 3")
    return finish(reports, args.json, t0)


if __name__ == "__main__":
    raise SystemExit(main())
