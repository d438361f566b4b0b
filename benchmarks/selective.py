"""Time of ``refocus --where auto`` against ``--where all`` on a slide with a known share of defocused tissue.

The slide is CMU-1-Small-Region (mirrored into a ``--tiles`` × ``--tiles``
mosaic for a larger area) with one band of rows defocused by ``--z`` µm
through the project's optics, the band sized so that it holds ``--share`` of
the tissue (tissue: optical density above 0.15 in some channel).  Both runs
use the same model, scheduler and settings, one after the other, and the
script prints both end-to-end times, their ratio, and how many windows each
ran the network on.

Usage::

    python benchmarks/selective.py [--model deepr-brightfield] [--share 0.2] [--z 3] [--tiles 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def layout(tmp: Path, *, share: float, z_um: float, tiles: int) -> tuple[Path, float]:
    """Write the slide; return it and the share of tissue actually defocused."""
    from wsi_deepr import open_slide
    from wsi_deepr.testing import DefocusRegion, write_layout_slide

    src = open_slide(SHARED / "slides" / "CMU-1-Small-Region.svs")
    img = src.read_region(0, 0, 0, *src.shape[:2])
    row = np.concatenate([img if i % 2 == 0 else img[:, ::-1] for i in range(tiles)], axis=1)
    mosaic = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(tiles)], axis=0)
    tissue = (-np.log10((mosaic.astype(np.float32) + 1) / 256.0)).max(axis=-1) > 0.15
    per_row = np.cumsum(tissue.sum(axis=1)) / tissue.sum()
    y0 = int(0.1 * mosaic.shape[0])
    y1 = int(np.searchsorted(per_row, per_row[y0] + share)) + 1
    path = write_layout_slide(mosaic, tmp / "layout.tif",
                              regions=[DefocusRegion(y0, 0, y1, mosaic.shape[1], z_um)], mpp=0.499)
    return path, float(per_row[min(y1, len(per_row) - 1)] - per_row[y0])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deepr-brightfield")
    p.add_argument("--share", type=float, default=0.2, help="share of the tissue defocused")
    p.add_argument("--z", type=float, default=3.0, help="defocus of that tissue, µm")
    p.add_argument("--tiles", type=int, default=2, help="mosaic of CMU-1-Small-Region, tiles per side")
    p.add_argument("--scheduler", default="threads")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from wsi_deepr import refocus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide, share = layout(tmp, share=args.share, z_um=args.z, tiles=args.tiles)
        runs = {}
        for where in ("all", "auto"):
            t0 = time.perf_counter()
            result = refocus(slide, tmp / f"{where}.ome.tif", model=args.model, where=where,
                             scheduler=args.scheduler)
            seconds = time.perf_counter() - t0
            skipped = result.provenance["parameters"]["skipped_windows"]
            runs[where] = {"seconds": round(seconds, 2), "network_windows": result.windows - skipped,
                           "windows": result.windows, "stages": {k: round(v, 2) for k, v in result.seconds.items()},
                           "map_seconds": (result.provenance.get("focus") or {}).get("map", {}).get("seconds")}
        mp = float(np.prod(result.provenance["output_shape"][:2])) / 1e6
    report = {"slide_mpx": round(mp, 2), "defocused_tissue_share": round(share, 3), "z_um": args.z,
              "model": args.model, "runs": runs, "ratio": round(runs["auto"]["seconds"] / runs["all"]["seconds"], 3)}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
