"""Blank-glass skipping: end-to-end time with and without it, and what it changes.

For each brightfield slide, ``wsi_deepr.refocus`` runs twice in one process
with the same model, ``background="process"`` (every window) then
``background="skip"`` (windows of blank glass passed through), lossless
(zlib) output so the pixels can be compared:

* ``s/MP``: wall-clock seconds per megapixel of the slide, both ways, and
  their ratio (measured in the same run; the machine is noisy);
* ``skipped``: windows passed through, of all;
* ``glass change``: in the pixels only skipped windows reach, the largest and
  the 99.9th-percentile absolute difference between refocusing the glass and
  passing it through (8-bit levels): what skipping gives up;
* ``tissue equal``: pixels that only refocused windows reach are equal in
  both runs (they must be).

Usage (from the repository root)::

    python benchmarks/background.py [--model M.onnx] [--slides A.svs B.svs] [--json out.json]

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
SLIDES = [ROOT / ".." / "shared" / "data" / "slides" / n
          for n in ("tcga-cr-7395-01a-01-ts1.svs", "CMU-1-Small-Region.svs")]


def compare(slide: Path, model: str | None, threads: int) -> dict:
    """Refocus ``slide`` both ways; times, skip counts and the pixel differences."""
    import tifffile

    from wsi_deepr import open_slide, refocus
    from wsi_deepr.tiling.geometry import TileGrid

    s = open_slide(slide)
    mp = s.shape[0] * s.shape[1] / 1e6
    row: dict = {"slide": slide.name, "megapixels": round(mp, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for mode in ("process", "skip"):
            out = Path(tmp) / f"{mode}.ome.tif"
            t = time.perf_counter()
            result = refocus(slide, out, model=model, background=mode, compression="zlib", workers=threads, where="all",
                             scheduler="threads")
            secs = time.perf_counter() - t
            row[f"s_per_mp_{mode}"] = round(secs / mp, 3)
            outs[mode] = (tifffile.imread(out), result)
        (a, _), (b, rb) = outs["process"], outs["skip"]
        prov = rb.provenance
        params = prov["parameters"]
        row["skipped"] = f"{params['skipped_windows']}/{rb.windows}"
        row["speedup"] = round(row["s_per_mp_process"] / row["s_per_mp_skip"], 2)
        row["tissue_fraction"] = prov["background"]["tissue_fraction"]
        # which pixels only skipped / only refocused windows reach
        grid = TileGrid(a.shape[:2], tile=params["tile"], halo=params["halo"], overlap=params["overlap"])
        from wsi_deepr.tiling.plan import detect_background

        skip = detect_background(open_slide(slide), grid).skip
        reach_run = np.zeros(a.shape[:2], bool)
        reach_skip = np.zeros(a.shape[:2], bool)
        ov = params["overlap"]
        for win in grid.windows():
            y0, x0, y1, x1 = win.core
            box = (slice(max(y0 - ov, 0), y1 + ov), slice(max(x0 - ov, 0), x1 + ov))
            (reach_skip if skip[win.index] else reach_run)[box] = True
        glass = reach_skip & ~reach_run
        tissue = reach_run & ~reach_skip
        d = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1)
        row["glass_pixels"] = int(glass.sum())
        row["glass_change_max"] = int(d[glass].max()) if glass.any() else None
        row["glass_change_p999"] = float(np.percentile(d[glass], 99.9)) if glass.any() else None
        row["tissue_equal"] = bool((d[tissue] == 0).all())
    return row


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model name or .onnx (default: the brightfield default)")
    p.add_argument("--slides", type=Path, nargs="+", default=SLIDES)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    while QUIET.exists():
        time.sleep(5)
    QUIET.touch()
    try:
        rows = [compare(s, args.model, args.threads) for s in args.slides if s.exists()]
    finally:
        QUIET.unlink(missing_ok=True)
    for r in rows:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
