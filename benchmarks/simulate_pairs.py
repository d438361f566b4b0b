"""Time building a simulated pair dataset (not a timed test).

Builds ``--pairs`` domain-randomised (defocused, in-focus) pairs of
``--patch`` x ``--patch`` pixels from the shared in-focus brightfield material
(CMU-1-Small-Region.svs, the TCGA frozen section, ihc.png) into a temporary
zarr dataset, end to end: field-of-view scan, PSF/OTF per optical setting,
FFT defocus (uniform and tilted), noise, JPEG, quantisation and writing.
Prints one line: pairs, seconds, pairs/s.  Target: 2,000 pairs of 256 x 256
in under 120 s on 2 cores.

Usage::

    python benchmarks/simulate_pairs.py                      # 2000 pairs, 256 px, 2 workers
    python benchmarks/simulate_pairs.py --pairs 500 --workers 4 --out /tmp/bench.zarr
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SOURCES = (DATA / "slides" / "CMU-1-Small-Region.svs", DATA / "slides" / "tcga-cr-7395-01a-01-ts1.svs",
           DATA / "images" / "ihc.png")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its one-line result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the dataset here (default: temporary)")
    args = parser.parse_args(argv)

    from wsi_deepr.data.build import build_simulated, open_sources

    missing = [str(p) for p in SOURCES if not p.exists()]
    if missing:
        print(f"simulate_pairs: skipped, shared data missing: {', '.join(missing)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "bench.zarr"
        t0 = time.perf_counter()
        sources = open_sources(SOURCES, modality="brightfield")
        summary = build_simulated(sources, out, n_pairs=args.pairs, patch_size=args.patch,
                                  workers=args.workers, seed=args.seed, overwrite=True)
        dt = time.perf_counter() - t0
    print(f"simulate_pairs: {summary['pairs']} pairs {args.patch}x{args.patch} in {dt:.1f} s "
          f"({summary['pairs'] / dt:.1f} pairs/s), workers={args.workers}, cpus={os.cpu_count()}, "
          f"tilted={summary['tilted']}, train/val={summary['train']}/{summary['val']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
