"""How much of the gap to Richardson-Lucy with the true PSF is the spherical aberration the oracle knows?

``benchmarks/unseen_eval.py`` compares every default method with Richardson-Lucy
given the **true** PSF: the true signed ``z`` *and* each field's spherical
aberration.  A blind pipeline knows neither; the defocus map estimates ``|z|``
and every PSF it uses is aberration-free.  On the same fields and optics as
``unseen_eval.py`` (same seed and fields; with the same ``--z`` the same captures), this scores
Richardson-Lucy with:

* ``rl_true``: the true PSF, 30 iterations (``unseen_eval.py``'s oracle);
* ``rl_z30``: the true ``|z|``, aberration-free, 30 iterations;
* ``rl_z10s``: the true ``|z|`` x 0.8, aberration-free, 10 iterations: what
  ``--method deconvolve`` would do with a perfect defocus map.

The difference ``rl_true - rl_z30`` is what knowing the aberration is worth;
``rl_z10s`` minus the default pipeline's output (``unseen_eval.py``) is what
the defocus map's error costs.

Usage::

    python benchmarks/rl_oracle_gap.py --unseen --modality fluorescence --mpp 0.325
    python benchmarks/rl_oracle_gap.py --unseen --modality brightfield
"""

from __future__ import annotations

import argparse
import json
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
    from export.evaluate import rl_true_psf
    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, FLUORESCENCE_WAVELENGTH_UM, OpticalSetting

    if unseen:
        from fetch_unseen_sources import bright_sources, fluorescence_sources

        sources = bright_sources() if modality == "brightfield" else fluorescence_sources()
        if not sources:
            raise SystemExit("no unseen sources fetched: run python benchmarks/fetch_unseen_sources.py first")
    else:
        sources = U._default_sources(modality)
    rng = np.random.default_rng(seed)  # drawn in unseen_eval.evaluate's order: the same fields and captures
    chosen = U._fields([U._load(s) for s in sources], modality, size=size, count=fields, rng=rng)
    wavelengths = BRIGHTFIELD_WAVELENGTHS_UM if modality == "brightfield" else (FLUORESCENCE_WAVELENGTH_UM,)
    per_z: dict[float, list[dict]] = {z: [] for z in z_grid}
    for k, field in enumerate(chosen):
        top = 255.0 if modality == "brightfield" else max(float(np.percentile(field, 99.9)), 1.0)
        obj = np.clip(field.astype(np.float32) / top, 0, 1)
        sph = float(rng.choice([-1, 1]) * rng.uniform(*U.SPHERICAL))
        setting = OpticalSetting(na=na, wavelengths_um=wavelengths, pixel_size_um=mpp, spherical_waves=sph)
        photons = float(rng.uniform(300, 3000))
        jpeg = int(rng.integers(70, 96)) if modality == "brightfield" else None
        target = U._capture(obj, setting, 0.0, photons=1e9, jpeg=None, rng=rng).astype(np.float32) / 255
        for z in z_grid:
            sign = 1 if (k + int(z)) % 2 == 0 else -1
            cap = U._capture(obj, setting, sign * z, photons=photons, jpeg=jpeg, rng=rng).astype(np.float32) / 255
            common = {"na": na, "pixel_size_um": mpp, "wavelengths_um": wavelengths}
            outs = {"input": cap,
                    "rl_true": rl_true_psf(cap, z_um=sign * z, spherical_waves=sph, iterations=30, **common),
                    "rl_z30": rl_true_psf(cap, z_um=z, iterations=30, **common),
                    "rl_z10s": rl_true_psf(cap, z_um=0.8 * z, iterations=10, **common)}
            per_z[z].append({key: U._score(img, target, margin)[0] for key, img in outs.items()})
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
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
