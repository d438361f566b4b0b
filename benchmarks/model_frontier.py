"""Generator width vs quality vs ONNX Runtime CPU time per 512x512 tile (not a timed test).

For each width (optionally with a channel cap ``max_width``):

* speed: the generator exported to ONNX (as :mod:`export.onnx_export` does),
  one ``1 x C x 512 x 512`` tile, ONNX Runtime CPU with ``--threads`` intra-op
  threads, median of ``--repeats`` runs after two warm-ups; parameters and
  file size;
* quality (with ``--dataset``): the same training recipe for the same wall-clock
  budget (``--minutes``) per width, generator-only (warm start, full MS-SSIM +
  BerHu loss), then the validation SSIM/PSNR of the best checkpoint against the
  input's.

Usage (from the repository root, ``train`` extra installed)::

    python benchmarks/model_frontier.py --widths 8 12 16                      # speed only
    python benchmarks/model_frontier.py --dataset D.zarr --minutes 6 --out /tmp/wd/frontier

Waits while ``/tmp/wd/QUIET`` exists (someone else is benchmarking).  Prints a
Markdown table; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import logging
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


def _wait_quiet() -> None:
    while QUIET.exists():
        time.sleep(10)


def time_width(width: int, *, max_width: int | None, channels: int = 3, threads: int = 2, repeats: int = 7,
               tile: int = 512) -> dict:
    """ONNX Runtime CPU seconds per tile, parameters and ONNX size of an untrained generator."""
    import torch

    from export.models import Generator, count_parameters
    from export.onnx_export import _to_onnx

    gen = Generator(channels, width=width, max_width=max_width)
    torch.nn.init.normal_(gen.out.weight, std=0.01)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.onnx"
        _to_onnx(gen, path, exporter="dynamo")
        size = path.stat().st_size
        times = time_onnx_tile(path, channels, threads=threads, repeats=repeats, tile=tile)
    return {"width": width, "max_width": gen.max_width, "widths": gen.widths, "parameters": count_parameters(gen),
            "onnx_mb": round(size / 2**20, 2), "s_per_tile": float(np.median(times)),
            "s_per_tile_min": float(np.min(times)), "threads": threads}


def train_width(width: int, *, max_width: int | None, dataset: str, out: Path, minutes: float, crop: int | None,
                batch_size: int, val_samples: int) -> dict:
    """Train one width for ``minutes`` (generator only) and return its best validation."""
    from export.train import TrainConfig, load_checkpoint, train

    run = out / f"w{width}-{max_width or 'x'}"
    cfg = TrainConfig(dataset=dataset, width=width, max_width=max_width, iterations=10**6, warmup=10**6,
                      minutes=minutes, crop=crop, batch_size=batch_size, val_every=10, val_samples=val_samples,
                      pause_file=str(QUIET))
    result = train(cfg, run)
    best = load_checkpoint(run / "best.pt")
    v = best["validation"]
    return {"iterations": result["iteration"], "best_iteration": best["iteration"],
            "val_ssim_input": v["val_ssim_input"], "val_ssim": v["val_ssim"], "ssim_gain": v["val_ssim"] - v["val_ssim_input"],
            "val_psnr_input": v["val_psnr_input"], "val_psnr": v["val_psnr"], "val_berhu": v["val_berhu"]}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument("--max-width", type=int, default=None, help="channel cap for every width (default: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dataset", help="train and validate each width on this pair dataset")
    p.add_argument("--minutes", type=float, default=6.0, help="training budget per width")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--val-samples", type=int, default=48)
    p.add_argument("--out", type=Path, default=Path("/tmp/wd/frontier"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    rows = []
    for w in args.widths:
        _wait_quiet()
        row = time_width(w, max_width=args.max_width, threads=args.threads, repeats=args.repeats)
        if args.dataset:
            _wait_quiet()
            row |= train_width(w, max_width=args.max_width, dataset=args.dataset, out=args.out, minutes=args.minutes,
                               crop=args.crop, batch_size=args.batch_size, val_samples=args.val_samples)
        rows.append(row)
        logging.getLogger("model_frontier").info("%s", row)
    head = "| width | channels per level | params | ONNX MB | ORT s/512² tile |"
    sep = "|---:|---|---:|---:|---:|"
    if args.dataset:
        head += f" iterations in {args.minutes:g} min | val SSIM input → output | PSNR input → output |"
        sep += "---:|---|---|"
    print(head)
    print(sep)
    for r in rows:
        line = (f"| {r['width']} | {r['widths']} | {r['parameters'] / 1e6:.2f} M | {r['onnx_mb']} | "
                f"{r['s_per_tile']:.3f} |")
        if args.dataset:
            line += (f" {r['iterations']} | {r['val_ssim_input']:.3f} → {r['val_ssim']:.3f} | "
                     f"{r['val_psnr_input']:.2f} → {r['val_psnr']:.2f} |")
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
