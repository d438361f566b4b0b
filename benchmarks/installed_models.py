"""Speed of the installed (shipped) models: ONNX Runtime s per 512² tile and end-to-end s per megapixel.

For every model ``wsi-deepr models`` lists (or the ``--model`` files given):

* ``s/tile``: one ``1 x C x 512 x 512`` window, ONNX Runtime CPU with
  ``--threads`` intra-op threads, median of ``--repeats`` runs after two
  warm-ups (the issue's target: <= 0.3 s on this 2-core machine);
* ``s/MP``: ``wsi_deepr.refocus`` of real slides of the model's modality
  (threads scheduler, all cores, default halo/overlap), wall-clock seconds
  per megapixel of the slide, so overlap, reading, blending and writing
  are included (target: <= 1 s/MP), with the defaults of ``wsi-deepr refocus``
  (on brightfield, windows of blank glass are passed through; their count is
  shown), once per ``--tiles`` setting: fixed sizes such as ``512`` (the
  default) and ``auto`` (:func:`wsi_deepr.tiling.geometry.choose_tile`).
  and per ``--schedulers`` entry (``threads``, the API's default; ``local``,
  the CLI's LocalCluster; ``local-processes``, a worker process per core).
  Each run is its own process, so its peak resident memory is reported too
  (that process's: worker processes of ``local-processes`` are not counted).
  A 1-channel fluorescence model runs once per channel: its slide
  (3 channels) is also reported per channel-megapixel.

Usage (from the repository root)::

    python benchmarks/installed_models.py [--model M.onnx ...] [--tiles 512 auto]
        [--schedulers threads local local-processes] [--json out.json]

Waits while ``/tmp/wd/QUIET`` exists; creates it while timing, so that
training jobs started with ``--pause-file /tmp/wd/QUIET`` pause meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import time_onnx_tile  # noqa: E402
QUIET = Path("/tmp/wd/QUIET")
DATA = ROOT / ".." / "shared" / "data" / "slides"
SLIDES = {"brightfield": [DATA / "CMU-1-Small-Region.svs", DATA / "tcga-cr-7395-01a-01-ts1.svs"],
          "fluorescence": [DATA / "small_vectra.qptiff"]}


def _scheduler(name: str):
    """``threads`` (the API's default), ``local`` (the CLI's: a LocalCluster sized to the
    machine) or ``local-processes`` (one single-thread worker process per core)."""
    from wsi_deepr.parallel.cluster import ClusterClient

    if name == "threads":
        return "threads"
    if name == "local":
        return ClusterClient(dashboard_address="127.0.0.1:0")
    if name == "local-processes":
        return ClusterClient(workers=os.cpu_count() or 1, threads_per_worker=1, dashboard_address="127.0.0.1:0")
    raise ValueError(f"unknown scheduler {name!r}")


def end_to_end(path: Path, slide: Path, tile: int | str, scheduler: str = "threads") -> dict:
    """Refocus ``slide`` with the model; seconds per megapixel of the slide.

    A cluster is started before the clock starts (the CLI starts it once per batch).
    """
    from wsi_deepr import open_slide, refocus

    s = open_slide(slide)
    mp = s.shape[0] * s.shape[1] / 1e6
    sched = _scheduler(scheduler)
    if not isinstance(sched, str):
        sched()  # start it
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            result = refocus(slide, Path(tmp) / "out.ome.tif", model=path, tile=tile, scheduler=sched, where="all")
            secs = time.perf_counter() - t
    finally:
        if not isinstance(sched, str):
            sched.close()
    per_channel = result.provenance["model_card"]["channels"] == 1
    params = result.provenance["parameters"]
    return {"slide": slide.name, "scheduler": scheduler, "megapixels": round(mp, 3), "channels": s.n_channels, "seconds": round(secs, 2),
            "s_per_mp": round(secs / mp, 3),
            "s_per_channel_mp": round(secs / mp / s.n_channels, 3) if per_channel else None,
            "tile": params["tile"], "batch": params["batch"],
            "windows": result.windows, "skipped": params["skipped_windows"],
            "halo_overlap": [params["halo"], params["overlap"]],
            "scale": result.provenance["scale"]["action"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def end_to_end_in_subprocess(path: Path, slide: Path, tile: str, scheduler: str) -> dict:
    """:func:`end_to_end` in a fresh interpreter (its own peak memory)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"from installed_models import end_to_end; "
            f"print(json.dumps(end_to_end(__import__('pathlib').Path({str(path)!r}), "
            f"__import__('pathlib').Path({str(slide)!r}), {tile if tile == 'auto' else int(tile)!r}, "
            f"{scheduler!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, action="append", help="an ONNX model (repeatable; default: installed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tiles", nargs="+", default=["512", "auto"],
                   help="window sizes of the end-to-end runs (512 is the default of refocus; 'auto' picks one)")
    p.add_argument("--schedulers", nargs="+", default=["threads"], choices=["threads", "local", "local-processes"],
                   help="threads: the API's default; local: the CLI's LocalCluster; local-processes: one "
                        "single-thread worker process per core")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from wsi_deepr.inference.registry import list_models
    from wsi_deepr.inference.card import load_model_info

    infos = [load_model_info(m) for m in args.model] if args.model else list_models()
    if not infos:
        print("no models installed and none given with --model", file=sys.stderr)
        return 2
    while QUIET.exists():
        time.sleep(10)
    QUIET.parent.mkdir(parents=True, exist_ok=True)
    QUIET.touch()
    time.sleep(15)  # let paused jobs finish their iteration
    rows = []
    try:
        for info in infos:
            secs = time_onnx_tile(info.path, info.card.channels, threads=args.threads, repeats=args.repeats)
            row = {"model": info.name, "modality": info.card.modality.value, "channels": info.card.channels,
                   "onnx_mb": round(info.path.stat().st_size / 2**20, 2), "default": info.card.default,
                   "s_per_tile": round(float(np.median(secs)), 3), "s_per_tile_min": round(float(np.min(secs)), 3)}
            for slide in SLIDES[info.card.modality.value]:
                if not slide.exists():
                    continue
                for tile, scheduler in [(t, sch) for t in args.tiles for sch in args.schedulers]:
                    run = row | {"tiles": tile} | end_to_end_in_subprocess(info.path, slide.resolve(), tile,
                                                                           scheduler)
                    print(json.dumps(run), flush=True)
                    rows.append(run)
    finally:
        QUIET.unlink(missing_ok=True)
    print("| model | modality | ONNX MB | ORT s/512² tile (median, 2 threads) | slide | scheduler | "
          "--tile → window, batch | halo:overlap | s/MP end to end | per channel-MP | peak RSS MB |")
    print("|---|---|---:|---:|---|---|---|---|---:|---:|---:|")
    for r in rows:
        hv = ":".join(map(str, r["halo_overlap"]))
        print(f"| {r['model']} | {r['modality']} | {r['onnx_mb']} | {r['s_per_tile']:.3f} | {r['slide']} "
              f"({r['megapixels']} MP × {r['channels']} ch, {r['windows']} windows, {r['skipped']} glass) | "
              f"{r['scheduler']} | {r['tiles']} → {r['tile']}, {r['batch']} | {hv} | {r['s_per_mp']} | {r['s_per_channel_mp'] or '–'} | "
              f"{r['peak_rss_mb']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
