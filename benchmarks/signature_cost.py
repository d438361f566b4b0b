"""What the fluorescence defocus-signature check costs the defocus map, and what it changes there.

The Vectra slide (3 channels, 0.497 µm/px) is defocused everywhere by each
``--z`` µm (incoherent, NA 0.75, 0.52 µm: :func:`wsi_deepr.optics.defocus`),
written as a TIFF slide, and mapped by :func:`wsi_deepr.focus.defocus_map`
with the check (the default) and without it
(``wsi_deepr.focus.estimate.SIGNATURE_NEAR_RATIO`` set below 1), alternately,
``--repeats`` times each.  Prints the fastest wall-clock seconds of each, their
ratio measured in the same run, and the share of estimated regions the check
sets to confidence 0 (it never changes ``|z|``).  At ``z = 0`` nothing is read
as defocused, so nothing is checked.

Usage (from the repository root)::

    python benchmarks/signature_cost.py [--z 0 3 5] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared" / "data" / "slides" / "small_vectra.qptiff"


def _defocused_slide(z: float, tmp: Path) -> Path:
    import tifffile

    from wsi_deepr import open_slide
    from wsi_deepr.optics import FLUORESCENCE_WAVELENGTH_UM, OpticalSetting, defocus

    slide = open_slide(SLIDE)
    px = slide.read_region(0, 0, 0, *slide.shape[:2]).astype(np.float32)
    mpp = float(np.mean(slide.mpp))
    setting = OpticalSetting(na=0.75, wavelengths_um=(FLUORESCENCE_WAVELENGTH_UM,) * px.shape[2], pixel_size_um=mpp)
    top = float(np.iinfo(slide.dtype).max)
    out = np.clip(np.rint(defocus(px / top, setting, z) * top), 0, top).astype(slide.dtype)
    path = tmp / f"vectra_z{z:g}.tif"
    tifffile.imwrite(path, np.moveaxis(out, -1, 0), photometric="minisblack", tile=(256, 256),
                     metadata={"axes": "CYX"}, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--z", type=float, nargs="+", default=[0.0, 3.0, 5.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not SLIDE.exists():
        raise SystemExit(f"{SLIDE} not found: the benchmark needs ../shared/data")
    import wsi_deepr.focus.estimate as estimate
    from wsi_deepr.focus import defocus_map

    default = estimate.SIGNATURE_NEAR_RATIO
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for z in args.z:
            path = _defocused_slide(z, Path(tmp))
            times: dict[str, list[float]] = {"with": [], "without": []}
            maps = {}
            for _ in range(args.repeats):
                for mode in ("with", "without"):
                    estimate.SIGNATURE_NEAR_RATIO = default if mode == "with" else -1.0
                    try:
                        t = time.perf_counter()
                        maps[mode] = defocus_map(path)
                        times[mode].append(time.perf_counter() - t)
                    finally:
                        estimate.SIGNATURE_NEAR_RATIO = default
            valid = np.isfinite(maps["with"].defocus_um)
            zeroed = valid & (maps["with"].confidence == 0) & (maps["without"].confidence > 0)
            rows.append({"z": z, "regions_estimated": int(valid.sum()),
                         "share_zeroed": float(zeroed.sum() / max(1, valid.sum())),
                         "median_defocus_um": float(np.nanmedian(maps["with"].defocus_um)) if valid.any() else None,
                         "seconds_with": min(times["with"]), "seconds_without": min(times["without"]),
                         "ratio": min(times["with"]) / min(times["without"])})
    print("| z µm | regions estimated | median map |z| µm | confidence set to 0 | map s, with check | without | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        med = "–" if r["median_defocus_um"] is None else f"{r['median_defocus_um']:.2f}"
        print(f"| {r['z']:g} | {r['regions_estimated']} | {med} | {100 * r['share_zeroed']:.0f} % | "
              f"{r['seconds_with']:.2f} | {r['seconds_without']:.2f} | {r['ratio']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
