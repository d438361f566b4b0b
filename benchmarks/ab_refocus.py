"""End-to-end ``wsi-deepr refocus`` time of this checkout against another one, in one run.

For a refactor that must not slow anything down: both checkouts refocus the
same slide with the same model and settings, alternately (``A B A B ...``,
so that a machine that gets busier slows both alike), each in a fresh
interpreter with that checkout first on ``PYTHONPATH``.  Prints every time
and the ratio of the medians (this / other; below 1 is faster).

Usage::

    git worktree add /tmp/before <commit>          # the other checkout
    python benchmarks/ab_refocus.py --other /tmp/before [--slide ...] [--model ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

_RUN = "import sys; from wsi_deepr.cli import main; sys.exit(main(sys.argv[1:]))"


def run_once(checkout: Path, slide: Path, model: Path, out: Path, extra: list[str]) -> float:
    """Seconds of one ``refocus`` in a fresh interpreter importing ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    args = [sys.executable, "-c", _RUN, "refocus", str(slide), "-o", str(out), "--model", str(model),
            "--scheduler", "threads", "--overwrite", "-q", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{checkout}: refocus failed ({done.returncode}): {done.stderr.strip()}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--other", type=Path, required=True, help="the other checkout (its root folder)")
    p.add_argument("--slide", type=Path, default=SHARED / "slides" / "CMU-1-Small-Region.svs")
    p.add_argument("--model", type=Path, default=None,
                   help="ONNX model [default: the other checkout's deepr-brightfield.onnx, or its older name "
                        "deepr-brightfield-preview.onnx]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--this-args", nargs="*", default=["--where", "all"],
                   help="extra options for this checkout (default: --where all, the behaviour the other had)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    shipped = args.other / "wsi_deepr" / "models"
    model = args.model or next((shipped / n for n in ("deepr-brightfield.onnx", "deepr-brightfield-preview.onnx")
                                if (shipped / n).exists()), shipped / "deepr-brightfield.onnx")
    times: dict[str, list[float]] = {"this": [], "other": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.ome.tif"
        run_once(ROOT, args.slide, model, out, args.this_args)  # warm the file cache and the imports
        for _ in range(args.repeats):
            times["other"].append(run_once(args.other, args.slide, model, out, []))
            times["this"].append(run_once(ROOT, args.slide, model, out, args.this_args))
    ratio = statistics.median(times["this"]) / statistics.median(times["other"])
    report = {"slide": str(args.slide), "model": str(model), "this": str(ROOT), "other": str(args.other),
              "seconds": {k: [round(v, 2) for v in vs] for k, vs in times.items()}, "ratio": round(ratio, 3)}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
