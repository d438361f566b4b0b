"""How much of the gap to Richardson-Lucy with the true PSF is the spherical aberration the oracle knows?

``benchmarks/unseen_eval.py`` compares every default method with Richardson-Lucy
given the **true** PSF: the true signed ``z`` *and* each field's spherical
aberration.  A blind pipeline knows neither; the defocus map estimates ``|z|``
(brightfield deconvolution then chooses the aberration blindly:
``benchmarks/aberration_choice.py`` measures how well).  On the same fields and optics as
``unseen_eval.py`` (same seed and fields; with the same ``--z`` the same captures), this scores
Richardson-Lucy with:

* ``rl_true``: the true PSF, 30 iterations (``unseen_eval.py``'s oracle);
* ``rl_z30``: the true ``|z|``, aberration-free, 30 iterations;
* ``rl_z10s``: the true ``|z|`` x 0.8, aberration-free, 10 iterations: what
  fluorescence ``--method deconvolve`` would do with a perfect defocus map.

The difference ``rl_true - rl_z30`` is what knowing the aberration is worth;
``rl_z10s`` minus the default pipeline's output (``unseen_eval.py``) is what
the defocus map's error costs.

Usage::

    python benchmarks/rl_oracle_gap.py --unseen --modality fluorescence --mpp 0.325
    python benchmarks/rl_oracle_gap.py --unseen --modality brightfield
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import unseen_eval as U  # noqa: E402


def measure(modality: str, *, unseen: bool, mpp: float, na: float, size: int, fields: int, z_grid: list[float],
            margin: int = 32, seed: int = 0) -> dict:
    """Mean SSIM per ``|z|`` of the input and the three Richardson-Lucy variants (module docstring)."""
    sources = U.resolve_sources(modality, None, unseen=unseen)
    per_z: dict[float, list[dict]] = {z: [] for z in z_grid}
    for case in U.cases(modality, sources, fields=fields, z_grid=z_grid, size=size, seed=seed, na=na, mpp=mpp):
        cap = case.captured.astype(np.float32) / 255
        free = {"spherical_waves": 0.0}  # the PSF every blind pipeline uses: no aberration
        outs = {"input": cap,
                "rl_true": U.rl_oracle(cap, case.setting, case.signed_z, iterations=30),
                "rl_z30": U.rl_oracle(cap, case.setting, case.z, iterations=30, **free),
                "rl_z10s": U.rl_oracle(cap, case.setting, 0.8 * case.z, iterations=10, **free)}
        per_z[case.z].append({key: U._score(img, case.target, margin)[0] for key, img in outs.items()})
    rows = [{"z": z, "n": len(recs), **{key: float(np.mean([r[key] for r in recs])) for key in recs[0]}}
            for z, recs in per_z.items()]
    return {"modality": modality, "mpp": mpp, "na": na, "sources": [str(s) for s in sources], "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", choices=["brightfield", "fluorescence"], default="fluorescence")
    p.add_argument("--unseen", action="store_true", help="the images of benchmarks/fetch_unseen_sources.py")
    p.add_argument("--mpp", type=float, default=U.MPP)
    p.add_argument("--na", type=float, default=U.NA)
    p.add_argument("--size", type=int, default=288)
    p.add_argument("--fields", type=int, default=4)
    p.add_argument("--z", type=float, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rep = measure(args.modality, unseen=args.unseen, mpp=args.mpp, na=args.na, size=args.size, fields=args.fields,
                  z_grid=args.z)
    print(f"{rep['modality']}, {rep['mpp']:g} µm/px, NA {rep['na']:g}; sources: "
          f"{', '.join(Path(s).name for s in rep['sources'])}")
    print("| |z| µm | n | SSIM input | RL true PSF (30 it.) | RL true |z|, no aberration (30 it.) "
          "| RL 0.8 x true |z|, no aberration (10 it.) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rep["rows"]:
        print(f"| {r['z']:g} | {r['n']} | {r['input']:.3f} | {r['rl_true']:.3f} | {r['rl_z30']:.3f} | "
              f"{r['rl_z10s']:.3f} |")
    return U.finish(rep, args.json, t0)


if __name__ == "__main__":
    raise SystemExit(main())
