"""The real smear focal series refocused as a user would: ``refocus`` with its defaults, plane by plane.

Each plane of ``../shared/data/stacks/smear-brightfield`` is written as a
TIFF slide (no µm/px in it, as the stack states none: the defocus map then
assumes 0.5 µm/px) and refocused by :func:`wsi_deepr.refocus` with default
settings (defocus map, ``--where auto``, the threshold of the card or the
method), for every subject: a model name, ``deconvolve`` (``--method
deconvolve``) or ``auto`` (no ``--model``, no ``--method``: what
``wsi-deepr refocus slide.svs`` does).  The output is registered to ``z+00``
exactly as the input plane was (:func:`export.evaluate.evaluate_stack`) and
scored by SSIM to ``z+00``.  Gate of issue 13: planes ±2…±7 improve and no
plane loses more than 0.002.

``--beyond UM`` (repeatable) adds ``auto`` with the brightfield network's
hand-off to deconvolution moved to ``UM`` (its card's ``deconvolve_beyond_um``),
the check that chose the shipped hand-off.

Usage (from the repository root)::

    python benchmarks/smear_default.py [--subject auto] [--subject deepr-brightfield] [--beyond 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # export/
STACK = ROOT.parent / "shared" / "data" / "stacks" / "smear-brightfield"


@contextlib.contextmanager
def hand_off_at(beyond_um: float | None) -> Iterator[None]:
    """Within the block, every card's ``deconvolve_beyond_um`` reads ``beyond_um`` (``None``: as shipped)."""
    if beyond_um is None:
        yield
        return
    from wsi_deepr.inference.card import ModelCard

    shipped = ModelCard.deconvolve_beyond_um
    ModelCard.deconvolve_beyond_um = property(lambda card: beyond_um)
    try:
        yield
    finally:
        ModelCard.deconvolve_beyond_um = shipped


class DefaultRefocus:
    """``(H, W, 3)`` image in ``[0, 1]`` → written as a slide → ``refocus`` with defaults → ``[0, 1]``."""

    def __init__(self, subject: str, folder: Path, beyond_um: float | None = None) -> None:
        self.subject, self.folder, self.beyond_um = subject, folder, beyond_um

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import tifffile

        from wsi_deepr import refocus

        src, out = self.folder / "plane.tif", self.folder / "plane.refocused.ome.tif"
        tifffile.imwrite(src, np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), photometric="rgb")
        if self.subject in ("auto", "deconvolve"):
            kwargs = {"method": self.subject}
        else:
            kwargs = {"model": self.subject}
        with hand_off_at(self.beyond_um):
            refocus(src, out, scheduler="threads", overwrite=True, compression="zlib", **kwargs)
        return tifffile.imread(out).astype(np.float64) / 255.0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subject", action="append", default=None,
                   help="model name, 'deconvolve' or 'auto'; repeatable [default: auto, deconvolve and every "
                        "shipped brightfield model]")
    p.add_argument("--beyond", type=float, action="append", default=[],
                   help="also auto with the brightfield hand-off at this |z| (µm); repeatable")
    p.add_argument("--stack", type=Path, default=STACK)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from export.evaluate import evaluate_stack
    from wsi_deepr.inference.registry import list_models
    from wsi_deepr.readers.slide import Modality

    subjects = args.subject or ["auto", "deconvolve"] + [m.name for m in list_models()
                                                         if m.card.modality is Modality.BRIGHTFIELD]
    if args.beyond and not args.subject:
        subjects = []
    runs = [(s, None) for s in subjects] + [("auto", b) for b in args.beyond]
    reports = []
    t0 = time.perf_counter()
    for subject, beyond in runs:
        with tempfile.TemporaryDirectory() as tmp:
            fn = DefaultRefocus(subject, Path(tmp), beyond)
            if beyond is not None:
                subject = f"auto, hand-off at {beyond:g} µm"
            rep = evaluate_stack(fn, args.stack)
        rows = rep["rows"]
        gate_planes = [r for r in rows if 2 <= abs(r["plane"]) <= 7]
        verdict = {
            "improves_2_to_7": all(r["ssim_output"] > r["ssim_input"] for r in gate_planes),
            "worst_change": min(r["ssim_output"] - r["ssim_input"] for r in rows),
        }
        reports.append({"subject": subject, "rows": rows, **verdict})
        print(f"\n{subject}: smear stack, default settings")
        print("| plane | SSIM input | SSIM output | change |")
        print("|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['plane']:+d} | {r['ssim_input']:.3f} | {r['ssim_output']:.3f} | "
                  f"{r['ssim_output'] - r['ssim_input']:+.3f} |")
        print(f"planes ±2..±7 all improve: {verdict['improves_2_to_7']}; worst change {verdict['worst_change']:+.3f} "
              f"(gate >= -0.002)")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
