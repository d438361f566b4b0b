#!/usr/bin/env python3
"""Kill -9 one Dask worker process in the middle of a slide: does the slide finish, identical?

Runs ``wsi-deepr batch SLIDE --workers 2 --threads-per-worker 1`` (a LocalCluster of two
worker processes) twice with the same test model: undisturbed, then with ``kill -9`` of one
worker process once ``--after`` blocks are in the scratch store.  Prints both wall times and
whether every pyramid level is identical::

    python benchmarks/kill_a_worker.py ../shared/data/slides/CMU-1-Small-Region.svs --after 3
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile

from wsi_deepr.runsafe.resume import scratch_path
from wsi_deepr.testing import conv_model, default_card, save_model

CLI = "import sys; from wsi_deepr.cli import main; sys.exit(main(sys.argv[1:]))"


def run(slide: Path, out: Path, model: Path, tile: int, kill_after: int | None) -> tuple[float, int | None]:
    """Wall time of one batch run; blocks done when a worker was killed (None: not killed)."""
    target = out / f"{slide.stem}.refocused.ome.tif"
    blocks = scratch_path(target) / ".blocks"
    args = ["batch", str(slide), "--output-dir", str(out), "--model", str(model), "--tile", str(tile),
            "--workers", "2", "--threads-per-worker", "1", "--dashboard-address", "127.0.0.1:0", "-q"]
    t0 = time.perf_counter()
    killed_at = None
    with subprocess.Popen([sys.executable, "-c", CLI, *args]) as proc:
        while kill_after is not None and killed_at is None and proc.poll() is None:
            done = len(os.listdir(blocks)) if blocks.is_dir() else 0
            if done >= kill_after:
                workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                           if "spawn_main" in " ".join(p.cmdline())]
                os.kill(workers[0].pid, signal.SIGKILL)
                killed_at = done
            time.sleep(0.02)
        if proc.wait() != 0:
            raise SystemExit(f"the run failed with exit status {proc.returncode}")
    return time.perf_counter() - t0, killed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--after", type=int, default=3, help="blocks done before the kill")
    parser.add_argument("--tile", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_model(conv_model(channels=3, depth=4, hidden=32, card=default_card(halo=4)), tmp / "m.onnx")
        t_ref, _ = run(args.slide, tmp / "ref", model, args.tile, None)
        t_kill, at = run(args.slide, tmp / "kill", model, args.tile, args.after)
        name = f"{args.slide.stem}.refocused.ome.tif"
        with tifffile.TiffFile(tmp / "ref" / name) as a, tifffile.TiffFile(tmp / "kill" / name) as b:
            pairs = list(zip(a.series[0].levels, b.series[0].levels, strict=True))
            same = all(np.array_equal(x.asarray(), y.asarray()) for x, y in pairs)
    print(f"undisturbed {t_ref:.1f} s; one worker killed after {at} blocks: {t_kill:.1f} s; "
          f"{len(pairs)} levels {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
