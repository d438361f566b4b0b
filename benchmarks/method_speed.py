"""End-to-end speed of the refocusing methods: the network against deconvolution, s per megapixel.

Each shared slide is refocused by :func:`wsi_deepr.refocus` once per method
(``--method deepr`` and ``--method deconvolve``) with ``--where all``, so every
window with tissue runs whatever the defocus map says (the cost of a slide
that is out of focus everywhere), threads scheduler on all cores, default
halo, overlap and scale.  Wall-clock seconds per megapixel of the slide
(reading, defocus map, blending, pyramid and writing included) and the ratio
of the two methods measured in the same run.

Usage (from the repository root)::

    python benchmarks/method_speed.py [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "slides"
SLIDES = ["CMU-1-Small-Region.svs", "small_vectra.qptiff"]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", type=Path, action="append", help="repeatable [default: CMU-1 and the Vectra slide]")
    p.add_argument("--repeats", type=int, default=2, help="runs per method; the fastest counts")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from wsi_deepr import open_slide, refocus

    rows = []
    for slide in args.slide or [SHARED / s for s in SLIDES]:
        h, w, c = open_slide(slide).level_shapes[0]
        mp = h * w / 1e6
        row = {"slide": slide.name, "megapixels": round(mp, 2), "channels": c}
        for method in ("deepr", "deconvolve"):
            best, model = float("inf"), None
            with tempfile.TemporaryDirectory() as tmp:
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    result = refocus(slide, Path(tmp) / "out.ome.tif", method=method, where="all", overwrite=True,
                                     resume=False, scheduler="threads")
                    best, model = min(best, time.perf_counter() - t0), result.model
            row[method] = {"model": model, "seconds": round(best, 2), "s_per_mp": round(best / mp, 3)}
        row["deconvolve_over_deepr"] = round(row["deconvolve"]["seconds"] / row["deepr"]["seconds"], 2)
        rows.append(row)
        print(f"{slide.name} ({mp:.2f} MP, {c} ch): network {row['deepr']['model']} {row['deepr']['s_per_mp']:.2f} "
              f"s/MP, deconvolution {row['deconvolve']['s_per_mp']:.2f} s/MP "
              f"(x{row['deconvolve_over_deepr']:.2f} the network's time)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
