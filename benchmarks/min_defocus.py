"""Measure a model's ``min_defocus_um``: the defocus below which its output is no better than its input.

``refocus --where auto`` passes windows below this threshold through
unchanged (:mod:`wsi_deepr.focus.select`), so it is measured per model, on
fields of real in-focus images defocused by the project's optics at fixed
``|z|`` (incoherent, NA 0.75, a little spherical aberration, no noise unless
``--photons``, quantised to the source's bit depth; both signs of ``z``), refocused exactly as a slide is
(:func:`wsi_deepr.inference.kernel.refocus_array` with the card's
normalisation) and scored by SSIM against the same field through the same
optics at ``z = 0``, ``margin`` px from the edges left out.  The threshold is
the smallest ``|z|`` of the grid from which the mean SSIM gain stays above
``min_gain`` at every larger ``|z|``.

Usage::

    python benchmarks/min_defocus.py wsi_deepr/models/deepr-fluorescence.onnx [--json out.json] [--write-card]

``--write-card`` stores the threshold in the ONNX file's card (metadata key
``min_defocus_um``, with :func:`export.card.set_card`; needs the ``onnx``
package) — the model file changes, so its SHA-256 does too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # export/
SHARED = ROOT.parent / "shared" / "data"
Z_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


def _fields(image: np.ndarray, *, size: int, count: int, modality: str, seed: int) -> list[np.ndarray]:
    """``count`` fields of ``size`` px with content (tissue by optical density; signal above background)."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out, tries = [], 0
    while len(out) < count and tries < 50 * count:
        tries += 1
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        f = image[y:y + size, x:x + size]
        if modality == "brightfield":
            od = -np.log10(np.clip(f.astype(np.float64) + 1, 1, None) / 256.0)
            ok = (od.max(axis=-1) > 0.15).mean() > 0.5
        else:
            ok = f.std() > 0.05 * max(float(image.max()), 1.0)
        if ok:
            out.append(f)
    return out


def _sources(modality: str) -> list[tuple[str, np.ndarray, float, tuple[float, ...]]]:
    """``(name, (Y, X, C) pixels, µm/px, wavelengths)`` of the in-focus sources used."""
    from wsi_deepr import open_slide
    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM

    if modality == "brightfield":
        cmu = open_slide(SHARED / "slides" / "CMU-1-Small-Region.svs")
        import skimage.io

        ihc = np.asarray(skimage.io.imread(SHARED / "images" / "ihc.png"))[..., :3]
        return [("CMU-1-Small-Region", cmu.read_region(0, 0, 0, *cmu.shape[:2]), 0.499, BRIGHTFIELD_WAVELENGTHS_UM),
                ("ihc.png (0.5 µm/px assumed)", ihc, 0.5, BRIGHTFIELD_WAVELENGTHS_UM)]
    vectra = open_slide(SHARED / "slides" / "small_vectra.qptiff")
    pixels = vectra.read_region(0, 0, 0, *vectra.shape[:2])
    return [(f"small_vectra {name}", pixels[..., c:c + 1], 0.4966, (0.52,))
            for c, name in enumerate(vectra.channel_names)]


def measure(model_path: Path, *, fields: int = 8, size: int = 384, margin: int = 32, na: float = 0.75,
            spherical: float = 0.05, photons: float | None = None, min_gain: float = 0.0, seed: int = 0) -> dict:
    """SSIM of input and output against the in-focus field per ``|z|``, and the threshold."""
    from skimage.metrics import structural_similarity

    from wsi_deepr.inference.card import load_model_info
    from wsi_deepr.inference.kernel import refocus_array
    from wsi_deepr.inference.normalization import compute_stats
    from wsi_deepr.optics import OpticalSetting, defocus
    from wsi_deepr.optics.randomize import add_poisson_gaussian_noise

    info = load_model_info(model_path)
    modality = info.card.modality.value
    rng = np.random.default_rng(seed)
    rows: dict[float, list[tuple[float, float]]] = {z: [] for z in Z_GRID}
    names = []
    for si, (name, pixels, mpp, wavelengths) in enumerate(_sources(modality)):
        top = 255.0 if pixels.dtype == np.uint8 else float(np.percentile(pixels, 99.9))
        stats = compute_stats(info.card.normalization, pixels.reshape(-1, pixels.shape[-1]), dtype=pixels.dtype)
        chosen = _fields(pixels, size=size, count=fields, modality=modality, seed=seed + si)
        names.append(f"{name}: {len(chosen)} fields")
        for k, field in enumerate(chosen):
            obj = np.clip(field.astype(np.float32) / top, 0, 1)
            setting = OpticalSetting(na=na, wavelengths_um=wavelengths, pixel_size_um=mpp, spherical_waves=spherical)
            target = defocus(obj, setting, 0.0)
            for z in Z_GRID:
                sign = 1 if (k + int(2 * z)) % 2 == 0 else -1  # both signs of z across fields
                blurred = defocus(obj, setting, sign * z)
                if photons:
                    blurred = add_poisson_gaussian_noise(blurred, rng, photons=photons, read_noise=0.0)
                captured = np.clip(np.rint(blurred * top), 0, np.iinfo(pixels.dtype).max).astype(pixels.dtype)
                out = refocus_array(captured, model_path, stats=stats, model_channels=info.card.channels,
                                    tile=None, threads=2)
                sl = (slice(margin, -margin), slice(margin, -margin))
                t = np.clip(target[sl], 0, 1)
                score = [structural_similarity(np.clip(a[sl].astype(np.float32) / top, 0, 1), t, data_range=1.0,
                                               channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                               use_sample_covariance=False) for a in (captured, out)]
                rows[z].append((score[0], score[1]))
    table = [{"z_um": z, "n": len(v), "ssim_input": float(np.mean([a for a, _ in v])),
              "ssim_output": float(np.mean([b for _, b in v])),
              "gain": float(np.mean([b - a for a, b in v]))} for z, v in rows.items()]
    threshold = None
    for i, row in enumerate(table):
        if all(r["gain"] > min_gain for r in table[i:]):
            threshold = row["z_um"]
            break
    return {"model": str(model_path), "sha256": info.sha256, "sources": names, "optics":
            {"na": na, "spherical_waves": spherical, "photons": photons, "imaging": "incoherent"},
            "fields_px": size, "margin_px": margin, "min_gain": min_gain, "rows": table,
            "min_defocus_um": threshold}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--fields", type=int, default=8, help="fields per source")
    p.add_argument("--photons", type=float, default=None,
                   help="shot noise with this many photons at full scale [default: none: a denoising gain must "
                        "not pass for refocusing]")
    p.add_argument("--json", type=Path)
    p.add_argument("--write-card", action="store_true", help="store the threshold in the model's card")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    report = measure(args.model, fields=args.fields, photons=args.photons)
    print(f"{Path(args.model).name}: {'; '.join(report['sources'])}")
    print("| |z| (µm) | n | SSIM input | SSIM output | gain |\n|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['z_um']:.1f} | {r['n']} | {r['ssim_input']:.3f} | {r['ssim_output']:.3f} | {r['gain']:+.3f} |")
    print(f"min_defocus_um = {report['min_defocus_um']} ({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.write_card:
        if report["min_defocus_um"] is None:
            print("no |z| of the grid where the model is better than its input: card left as it is", file=sys.stderr)
            return 1
        from export.card import set_card

        set_card(args.model, min_defocus_um=report["min_defocus_um"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
