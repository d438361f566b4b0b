"""End-to-end throughput and memory of ``wsi_deepr.refocus`` (not a timed test).

For each slide, in a fresh subprocess (so peak RSS is that run's own):

* end-to-end: ``refocus(slide)`` → pyramidal OME-TIFF, windows/s over the whole
  call (reading, normalising, inference, blending, pyramid, writing);
* raw ONNX Runtime: the same model on windows of the same slide, already in
  memory and normalised, in the best of two configurations (one session with
  all cores; one single-thread session per core run concurrently);
* ratio = end-to-end / raw; windows run vs 512-tiles without overlap; peak RSS;
* kernel: :func:`wsi_deepr.inference.kernel.refocus_array` (normalise, window,
  run, blend, denormalise; no Dask, no I/O) on an in-memory band of the same
  slide with at least ``--raw-windows`` windows, windows/s (not in the ratio).

Usage::

    python benchmarks/throughput.py                       # default cases
    python benchmarks/throughput.py --model my.onnx --sizes 4096 16384 --svs PATH

Without ``--model`` a residual U-Net shaped like the Deep-R generator (fixed
random weights, :func:`wsi_deepr.testing.unet_model`) is built for timing.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def make_synthetic_slide(path: Path | BinaryIO, size: int, *, seed: int = 0) -> Path | BinaryIO:
    """A tiled, pyramidal RGB OME-TIFF of ``size``² with tissue-like texture.

    ``path``: a file name or an open, seekable binary file.  Written band by
    band, so making a 16384² slide needs little memory.
    """
    import tifffile
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.random((1024, 1024, 3)), sigma=(3, 3, 0))
    base = (255 * (base - base.min()) / np.ptp(base)).astype(np.uint8)
    tile = 512

    def tiles(level_size: int, step: int):
        for y in range(0, level_size, tile):
            for x in range(0, level_size, tile):
                yy = (np.arange(y, min(y + tile, level_size)) * step) % 1024
                xx = (np.arange(x, min(x + tile, level_size)) * step) % 1024
                block = base[np.ix_(yy, xx)]
                out = np.full((tile, tile, 3), 240, np.uint8)
                out[: block.shape[0], : block.shape[1]] = block
                yield out

    levels = [size]
    while levels[-1] > 1024:
        levels.append(levels[-1] // 2)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, n in enumerate(levels):
            tif.write(
                tiles(n, 2**i), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression="jpeg", compressionargs={"level": 90},
                subifds=len(levels) - 1 if i == 0 else None, subfiletype=1 if i else 0,
                metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5} if i == 0 else None,
            )
    return path


def _slide_stats(slide, info):
    """The slide's normalisation statistics, as ``refocus`` computes them."""
    from wsi_deepr.inference.normalization import compute_stats, stats_sample

    pixels, _ = stats_sample(slide.level_shapes, slide.read_region)
    return compute_stats(info.card.normalization, pixels, dtype=slide.dtype)


def raw_onnx_rate(model: str, slide_path: str, n_windows: int, batch: int, tile: int, halo: int,
                  overlap: int) -> dict:
    """Windows/s of bare ONNX Runtime on normalised windows of the slide.

    Only ``session.run`` is timed: the windows are read and normalised first.
    """
    from wsi_deepr.inference.card import load_model_info
    from wsi_deepr.inference.kernel import read_padded
    from wsi_deepr.inference.session import create_session
    from wsi_deepr.readers import open_slide
    from wsi_deepr.tiling.geometry import TileGrid

    slide = open_slide(slide_path)
    info = load_model_info(model)
    grid = TileGrid(slide.shape[:2], tile=tile, halo=halo, overlap=overlap)
    stats = _slide_stats(slide, info)
    wins = list(grid.windows())[: max(batch, n_windows)]
    data = np.stack([stats.normalize(read_padded(slide.reader, 0, w.read, grid.shape)) for w in wins])
    data = np.ascontiguousarray(data.transpose(0, 3, 1, 2))
    batches = [data[i:i + batch] for i in range(0, len(data), batch)]
    ncpu = os.cpu_count() or 1

    s_all = create_session(model, device="cpu", threads=ncpu)
    s_all.run(None, {info.input_name: batches[0]})  # warm-up
    t = time.perf_counter()
    for b in batches:
        s_all.run(None, {info.input_name: b})
    rate_one = len(data) / (time.perf_counter() - t)

    s_one = create_session(model, device="cpu", threads=1)
    s_one.run(None, {info.input_name: batches[0]})
    t = time.perf_counter()
    with ThreadPoolExecutor(ncpu) as pool:
        list(pool.map(lambda b: s_one.run(None, {info.input_name: b}), batches))
    rate_par = len(data) / (time.perf_counter() - t)
    return {"raw_windows": len(data), "raw_rate_1x{}".format(ncpu): rate_one,
            "raw_rate_{}x1".format(ncpu): rate_par, "raw_rate": max(rate_one, rate_par)}


def kernel_rate(model: str, slide_path: str, n_windows: int, tile: int, halo: int, overlap: int) -> dict:
    """Windows/s of the array kernel on an in-memory band of the slide.

    :func:`wsi_deepr.inference.kernel.refocus_array` (normalise, window, run,
    blend, denormalise; no Dask, no reading or writing) with one session on
    all cores, on the top rows of the slide: at least ``n_windows`` windows.
    """
    from wsi_deepr.inference.card import load_model_info
    from wsi_deepr.inference.kernel import refocus_array
    from wsi_deepr.readers import open_slide
    from wsi_deepr.tiling.geometry import TileGrid

    slide = open_slide(slide_path)
    info = load_model_info(model)
    stats = _slide_stats(slide, info)
    h, w = slide.shape[:2]
    rows = tile
    while rows < h and TileGrid((rows, w), tile=tile, halo=halo, overlap=overlap).n_windows < n_windows:
        rows += tile
    band = slide.read_region(0, 0, 0, min(rows, h), w)
    run = dict(stats=stats, model_channels=info.card.channels, tile=tile, halo=halo, overlap=overlap,
               dtype=slide.dtype, device="cpu", threads=os.cpu_count() or 1)
    refocus_array(band[:tile, :tile], model, **run)  # warm-up (and the session)
    t = time.perf_counter()
    refocus_array(band, model, **run)
    n = TileGrid(band.shape[:2], tile=tile, halo=halo, overlap=overlap).n_windows
    return {"kernel_windows": n, "kernel_rate": n / (time.perf_counter() - t)}


def run_one(args: argparse.Namespace) -> None:
    """Child process: one end-to-end run, then the raw baseline; print JSON."""
    from wsi_deepr import open_slide, refocus
    from wsi_deepr.cli.common import limit_malloc_arenas
    from wsi_deepr.inference.card import load_model_info

    limit_malloc_arenas()  # as the CLI does

    info = load_model_info(args.model)
    halo = info.card.halo if args.halo is None else args.halo
    overlap = halo if args.overlap is None else args.overlap
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        out = Path(tmp) / "out.ome.tif"
        t = time.perf_counter()
        result = refocus(args.slide, out, model=args.model, tile=args.tile, halo=halo, overlap=overlap,
                         batch=args.batch, workers=args.workers, device="cpu", where="all")
        wall = time.perf_counter() - t
        size = out.stat().st_size
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    h, w, _ = open_slide(args.slide).shape
    plain = -(-h // 512) * -(-w // 512)
    record = {
        "slide": Path(args.slide).name, "size": f"{w}x{h}", "windows": result.windows, "tiles_512": plain,
        "e2e_seconds": wall, "e2e_rate": result.windows / wall, "peak_rss_mib": rss_mib,
        "stages": result.seconds, "output_mib": size / 2**20,
    }
    if not args.no_raw:
        record.update(raw_onnx_rate(args.model, args.slide, args.raw_windows, args.batch, args.tile, halo, overlap))
        record["ratio"] = record["e2e_rate"] / record["raw_rate"]
        record.update(kernel_rate(args.model, args.slide, args.raw_windows, args.tile, halo, overlap))
    print("RESULT " + json.dumps(record))


def child(slide: Path, model: Path, args: argparse.Namespace, *, no_raw: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--run-one", "--slide", str(slide), "--model", str(model),
           "--tile", str(args.tile), "--batch", str(args.batch), "--raw-windows", str(args.raw_windows),
           "--workdir", str(args.workdir)]
    for flag in ("halo", "overlap", "workers"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    if no_raw:
        cmd.append("--no-raw")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: build a U-Net for timing)")
    parser.add_argument("--unet-width", type=int, default=8, help="width of the built U-Net")
    parser.add_argument("--sizes", type=int, nargs="*", default=[8192], help="synthetic slide sizes (throughput)")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[4096, 16384],
                        help="synthetic sizes for the RSS scaling check (tiny conv model)")
    parser.add_argument("--svs", default=str(CMU), help="a real slide to include ('' for none)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--halo", type=int, default=None)
    parser.add_argument("--overlap", type=int, default=None)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--raw-windows", type=int, default=48)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, help="also write the records here")
    parser.add_argument("--run-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slide", help=argparse.SUPPRESS)
    parser.add_argument("--no-raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_one(args)
        return

    from wsi_deepr.testing import conv_model, default_card, save_model, unet_model

    records = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = save_model(unet_model(width=args.unet_width, card=default_card(halo=32)), tmp / "unet.onnx")
        slides = [make_synthetic_slide(tmp / f"synthetic_{n}.ome.tif", n) for n in args.sizes]
        if args.svs and Path(args.svs).is_file():
            slides.append(Path(args.svs))
        print(f"model {model.name}; tile {args.tile}; {os.cpu_count()} CPUs", flush=True)
        print(f"{'slide':28} {'windows':>7} {'tiles512':>8} {'e2e win/s':>9} {'raw win/s':>9} "
              f"{'ratio':>6} {'kernel win/s':>12} {'peak RSS MiB':>12} {'seconds':>8}")
        for slide in slides:
            r = child(slide, model, args)
            records.append(r)
            print(f"{r['slide'][:28]:28} {r['windows']:7d} {r['tiles_512']:8d} {r['e2e_rate']:9.2f} "
                  f"{r['raw_rate']:9.2f} {r['ratio']:6.2f} {r['kernel_rate']:12.2f} {r['peak_rss_mib']:12.0f} "
                  f"{r['e2e_seconds']:8.1f}",
                  flush=True)

        if args.memory_sizes:
            tiny = save_model(conv_model(depth=3, card=default_card(halo=8)), tmp / "tiny.onnx")
            print("\nmemory scaling (tiny 3-conv model, end-to-end only)")
            print(f"{'slide':28} {'windows':>7} {'e2e win/s':>9} {'peak RSS MiB':>12} {'seconds':>8}")
            for n in args.memory_sizes:
                path = make_synthetic_slide(tmp / f"mem_{n}.ome.tif", n)
                r = child(path, tiny, argparse.Namespace(**{**vars(args), "halo": None, "overlap": None}),
                          no_raw=True)
                r["case"] = "memory"
                records.append(r)
                print(f"{r['slide'][:28]:28} {r['windows']:7d} {r['e2e_rate']:9.2f} {r['peak_rss_mib']:12.0f} "
                      f"{r['e2e_seconds']:8.1f}", flush=True)
                path.unlink()
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
