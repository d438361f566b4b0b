"""How much a real focal series' planes can be improved at all: a non-blind, answer-tuned bound.

For each plane of the smear stack (registered to ``z+00`` exactly as
``python -m export.evaluate --smear`` does), this fits the Gaussian blur that
best maps ``z+00`` to the plane, then deconvolves the plane with Wiener filters
and Richardson-Lucy over a grid of blur widths and regularisations, and keeps
the best SSIM **to z+00 itself**.  It knows the answer, so it is an optimistic
bound for linear deconvolution: a plane the oracle barely improves is at the
noise floor, and a blind model can only just beat its input there.

Usage (from the repository root)::

    python benchmarks/smear_oracle.py [--stack ../shared/data/stacks/smear-brightfield] [--planes 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _gauss(sigma: float, r: int = 8) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    k = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return k / k.sum()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from scipy.ndimage import gaussian_filter
    from skimage.metrics import structural_similarity
    from skimage.restoration import richardson_lucy, wiener

    from wsi_deepr.data.registration import register_stack
    from wsi_deepr.data.stacks import read_stack

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stack", type=Path, default=ROOT / ".." / "shared" / "data" / "stacks" / "smear-brightfield")
    p.add_argument("--planes", type=int, default=5, help="score planes -N..N")
    args = p.parse_args(argv)
    stack = read_stack(args.stack)
    labels = [int(v) for v in stack.z_index]
    reg = register_stack(stack, reference=labels.index(0))
    gray = np.clip(reg.planes / 255.0, 0, 1).mean(axis=-1)
    ref = gray[labels.index(0)]

    def ssim(a: np.ndarray) -> float:
        return float(structural_similarity(np.clip(a, 0, 1), ref, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False))

    sigmas = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    print("| plane | input SSIM | blur fit: sigma px (SSIM of blurred z+00 to the plane) | oracle SSIM | oracle |")
    print("|---:|---:|---|---:|---|")
    for lab in [k for k in range(-args.planes, args.planes + 1) if k and k in labels]:
        plane = gray[labels.index(lab)]
        fit = max((float(structural_similarity(gaussian_filter(ref, s), plane, data_range=1.0, gaussian_weights=True,
                                               sigma=1.5, use_sample_covariance=False)), s)
                  for s in np.arange(0.25, 6.0, 0.25))
        best = (ssim(plane), "input")
        for s in sigmas:
            for bal in (0.003, 0.01, 0.03, 0.1, 0.3):
                v = ssim(wiener(plane, _gauss(s), bal, clip=False))
                best = max(best, (v, f"Wiener sigma {s} balance {bal}"))
            for it in (3, 5, 10, 20):
                v = ssim(richardson_lucy(np.clip(plane, 1e-3, None), _gauss(s), num_iter=it, clip=False))
                best = max(best, (v, f"RL sigma {s} {it} it"))
        print(f"| {lab:+d} | {ssim(plane):.3f} | {fit[1]:.2f} ({fit[0]:.3f}) | {best[0]:.3f} | {best[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
