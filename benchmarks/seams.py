"""Tiling error and cost: halo and overlap against a whole-image oracle.

A real crop of a slide is refocused once as a single window (the oracle:
no tiling at all) and then with 512-px windows (or ``HALO:OVERLAP@TILE``:
another size, ``auto`` for :func:`wsi_deepr.tiling.geometry.choose_tile`) for several ``(halo, overlap)``
pairs, through the full pipeline with lossless output.  For each
pair it reports the windows run, the wall-clock seconds per megapixel and
the difference to the oracle in output levels (8-bit): maximum, 99.9th
percentile and mean.  ``halo`` is the context cropped from each window side;
``overlap`` the raised-cosine feather between neighbouring cores.  The step
between windows is ``tile - 2 * halo - overlap``, so the cost grows as
``(tile / step)**2``.

Usage (from the repository root)::

    python benchmarks/seams.py [--model NAME] [--slide S.svs] [--size 1536]
                               [--pairs 88:88 88:16 88:16@auto ...] [--json out.json]

Creates ``/tmp/wd/QUIET`` while timing (training jobs started with
``--pause-file /tmp/wd/QUIET`` pause meanwhile).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUIET = Path("/tmp/wd/QUIET")
SLIDE = ROOT / ".." / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
MODALITY = {"value": "auto"}  # the source slide's, for the crop (written as a plain TIFF)


def run(slide: Path, out: Path, model: str, **kw) -> tuple[np.ndarray, float, int, int]:
    """Refocus ``slide`` into ``out`` (lossless); the pixels, seconds, windows and window size."""
    import tifffile

    from wsi_deepr import refocus

    t = time.perf_counter()
    result = refocus(slide, out, model=model, compression="zlib", background="process", scheduler="threads", where="all",
                     workers=2, modality=MODALITY["value"], **kw)
    return tifffile.imread(out), time.perf_counter() - t, result.windows, result.provenance["parameters"]["tile"]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    import tifffile

    from wsi_deepr import open_slide
    from wsi_deepr.inference.registry import resolve_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deepr-brightfield")
    p.add_argument("--slide", type=Path, default=SLIDE)
    p.add_argument("--size", type=int, default=1536, help="side of the crop (from the slide's centre)")
    p.add_argument("--pairs", nargs="+", default=["88:88", "88:32", "88:16", "88:0", "64:16", "48:16", "32:16"],
                   help="HALO:OVERLAP[@TILE] (a halo of 'card' = the model card's; TILE: px or 'auto' "
                        "(choose_tile); default 512)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    info = resolve_model(args.model, modality=open_slide(args.slide).modality)
    src = open_slide(args.slide)
    MODALITY["value"] = src.modality.value
    h, w, _ = src.shape
    n = min(args.size, h, w)
    y0, x0 = (h - n) // 2, (w - n) // 2
    crop = np.asarray(src.read_region(0, y0, x0, y0 + n, x0 + n))
    while QUIET.exists():
        time.sleep(5)
    QUIET.touch()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            slide = tmp / "crop.tif"
            tifffile.imwrite(slide, crop, photometric="rgb" if crop.shape[-1] == 3 else "minisblack",
                             tile=(256, 256))
            mp = n * n / 1e6
            card_halo = info.card.halo
            # the oracle: one window over the whole crop (its halo is reflected padding, as at a slide's edge)
            oracle, secs, _, _ = run(slide, tmp / "oracle.ome.tif", str(info.path), tile=n + 2 * card_halo,
                                  halo=card_halo, overlap=0)
            print(f"oracle: one {n + 2 * card_halo}-px window, {secs:.1f} s")
            for pair in args.pairs:
                pair, _, tile_s = pair.partition("@")
                halo_s, overlap_s = pair.split(":")
                halo = card_halo if halo_s == "card" else int(halo_s)
                tile = "auto" if tile_s == "auto" else int(tile_s or 512)
                out, secs, windows, tile = run(slide, tmp / f"{pair.replace(':', '_')}_{tile_s}.ome.tif",
                                               str(info.path), tile=tile, halo=halo, overlap=int(overlap_s))
                d = np.abs(out.astype(np.int32) - oracle.astype(np.int32))
                row = {"halo": halo, "overlap": int(overlap_s), "tile": tile, "step": tile - 2 * halo - int(overlap_s),
                       "windows": windows, "s_per_mp": round(secs / mp, 3), "max": int(d.max()),
                       "p99_9": float(np.percentile(d, 99.9)), "mean": round(float(d.mean()), 4)}
                rows.append(row)
                print(json.dumps(row))
    finally:
        QUIET.unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps({"model": info.name, "slide": args.slide.name, "crop": n, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
