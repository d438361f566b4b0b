"""Can a blind pipeline choose the spherical aberration that Richardson-Lucy with the true PSF knows?

``benchmarks/rl_oracle_gap.py`` showed that most of the gap between the
pipeline and Richardson-Lucy given the **true** PSF is the spherical
aberration the oracle knows: with it, the PSF differs on the two sides of
focus, and an aberration-free PSF fits neither.  ``wsi_deepr.restore.
Deconvolution`` chooses, per window, among candidate Noll-11 coefficients the
one whose deconvolution has the sparsest gradients (highest excess kurtosis).
On the captures of ``benchmarks/unseen_eval.py`` (same sources, optics and
seed; the same ``--z`` gives the same captures) this scores Richardson-Lucy
(30 iterations, no shrink) at ``|z|`` = the true one (``--z-from true``) or
the blind estimator's median over the field's four 128-px windows
(``--z-from map``), with:

* ``free``: the aberration-free PSF (what the pipeline used before);
* ``chosen``: the candidate the criterion chooses (what it uses now, on trial
  deconvolutions of ``CHOICE_ITERATIONS``, as in the pipeline);
* ``best``: the best candidate in hindsight (what a perfect criterion would give);
* ``oracle``: the true PSF (``unseen_eval.py``'s column);

and, with ``--blend``, the default ``refocus`` output of the modality and
its average with ``chosen`` (a hybrid of network and physics, measured here,
not shipped).  ``--spherical 0 0`` asks the no-harm question: captures
without aberration.  The criterion's sign accuracy is the share of
aberrated captures where ``chosen`` has the sign of ``sign(z) x`` the true
coefficient.

Usage::

    python benchmarks/aberration_choice.py --modality brightfield --z-from map --z 2 3 4 5 [--blend]
    python benchmarks/aberration_choice.py --modality brightfield --z-from true --spherical 0 0
    python benchmarks/aberration_choice.py --modality fluorescence --z-from true
    python benchmarks/aberration_choice.py --cost [--slide SLIDE] [--repeats 2]

``--cost`` times ``refocus(method="deconvolve", where="all")`` end to end
(threads, every core) on a shared brightfield slide with the choice and, in
the same run, with the candidates set to ``(0.0,)`` (the aberration-free PSF):
s/MP of each and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import unseen_eval as U  # noqa: E402


def _map_z(captured: np.ndarray, *, mpp: float, modality: str) -> float:
    """The blind estimator's median ``|z|`` over the field's four 128-px windows (0 without an estimate)."""
    from wsi_deepr.focus import estimate_defocus

    h, w = captured.shape[:2]
    ys, xs = (16, max(16, h - 144)), (16, max(16, w - 144))
    windows = np.stack([captured[y:y + 128, x:x + 128] for y in ys for x in xs])
    est = estimate_defocus(windows, mpp=mpp, modality=modality)
    return float(np.nanmedian(est.defocus_um)) if est.valid.any() else 0.0


def measure(modality: str, *, z_from: str, z_grid: list[float], spherical: tuple[float, float], blend: bool,
            size: int = 288, fields: int = 4, mpp: float = U.MPP, na: float = U.NA, margin: int = 32) -> dict:
    """Per-|z| mean SSIM of each variant (module docstring) and the sign accuracy of the choice."""
    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, FLUORESCENCE_WAVELENGTH_UM
    from wsi_deepr.restore import Deconvolution
    from wsi_deepr.restore.deconvolution import SPHERICAL_CANDIDATES

    sources = U.resolve_sources(modality, None, unseen=True)
    wavelengths = BRIGHTFIELD_WAVELENGTHS_UM if modality == "brightfield" else (FLUORESCENCE_WAVELENGTH_UM,)
    spec = Deconvolution(na=na, wavelengths_um=tuple(wavelengths), pixel_size_um=mpp, iterations=30, shrink=1.0,
                         max_defocus_um=12.0, spherical_waves=SPHERICAL_CANDIDATES)
    per_z: dict[float, list[dict]] = {z: [] for z in z_grid}
    with tempfile.TemporaryDirectory() as tmp:
        for case in U.cases(modality, sources, fields=fields, z_grid=z_grid, size=size, na=na, mpp=mpp,
                            spherical=spherical):
            cap = case.captured.astype(np.float32) / 255
            z = case.z if z_from == "true" else _map_z(case.captured, mpp=mpp, modality=modality)
            z = spec.defocus_used(z)
            chw = np.ascontiguousarray(cap.transpose(2, 0, 1))
            rec = {"input": U._score(cap, case.target, margin)[0],
                   "oracle": U._score(U.rl_oracle(cap, case.setting, case.signed_z), case.target, margin)[0]}
            if z <= 0:
                chosen, scores = 0.0, {a: rec["input"] for a in spec.spherical_waves}
                outs = {a: cap for a in spec.spherical_waves}
            else:
                chosen = spec.choose_spherical(chw, z)
                outs = {a: spec.deconvolve(chw, z, a).transpose(1, 2, 0) for a in spec.spherical_waves}
                scores = {a: U._score(img, case.target, margin)[0] for a, img in outs.items()}
            rec.update(free=scores[0.0], chosen=scores[chosen], best=max(scores.values()))
            true_sign = float(np.sign(case.signed_z * case.setting.spherical_waves))
            rec["sign_ok"] = float(np.sign(chosen) == true_sign) if true_sign and z > 0 else np.nan
            if blend:
                net, _ = U._refocus(case.captured, None, Path(tmp), "auto", mpp=mpp)
                net = net.astype(np.float32) / 255
                rec["default"] = U._score(net, case.target, margin)[0]
                rec["blend"] = U._score(0.5 * net + 0.5 * outs[chosen], case.target, margin)[0]
            per_z[case.z].append(rec)
    rows = [{"z": z, "n": len(recs), **{k: float(np.nanmean([r[k] for r in recs])) for k in recs[0]}}
            for z, recs in per_z.items()]
    return {"modality": modality, "z_from": z_from, "spherical": list(spherical), "mpp": mpp, "na": na,
            "sources": [str(s) for s in sources], "rows": rows}


def cost(slide: Path, *, repeats: int = 2) -> dict:
    """Seconds per megapixel of ``--method deconvolve --where all`` with and without the aberration choice."""
    import wsi_deepr.restore.deconvolution as deconvolution
    from wsi_deepr import open_slide, refocus

    h, w = open_slide(slide).shape[:2]
    mp = h * w / 1e6
    candidates = deconvolution.SPHERICAL_CANDIDATES
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cands in (("chosen", candidates), ("aberration-free", (0.0,))):
            deconvolution.SPHERICAL_CANDIDATES = cands  # what physics_model offers brightfield
            try:
                best = np.inf
                for _ in range(repeats):
                    t = time.perf_counter()
                    refocus(slide, Path(tmp) / "out.ome.tif", method="deconvolve", where="all", scheduler="threads",
                            overwrite=True, compression="zlib")
                    best = min(best, time.perf_counter() - t)
            finally:
                deconvolution.SPHERICAL_CANDIDATES = candidates
            times[name] = best / mp
    return {"slide": str(slide), "megapixels": mp, "s_per_mp": times,
            "ratio": times["chosen"] / times["aberration-free"]}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", choices=["brightfield", "fluorescence"], default="brightfield")
    p.add_argument("--z-from", choices=["true", "map"], default="map",
                   help="deconvolve at the true |z| or at the blind estimator's [map]")
    p.add_argument("--z", type=float, nargs="+", default=[2, 3, 4, 5])
    p.add_argument("--spherical", type=float, nargs=2, default=U.SPHERICAL, metavar=("LOW", "HIGH"))
    p.add_argument("--blend", action="store_true", help="also the default refocus output and its average with chosen")
    p.add_argument("--cost", action="store_true", help="time --method deconvolve with and without the choice")
    p.add_argument("--slide", type=Path, default=U.SHARED / "slides" / "CMU-1-Small-Region.svs")
    p.add_argument("--repeats", type=int, default=2, help="--cost: runs per variant; the fastest counts")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.cost:
        rep = cost(args.slide, repeats=args.repeats)
        print(f"{Path(rep['slide']).name} ({rep['megapixels']:.2f} MP), --method deconvolve --where all: "
              + ", ".join(f"{k} {v:.2f} s/MP" for k, v in rep["s_per_mp"].items())
              + f" (x{rep['ratio']:.2f} with the choice)")
        return U.finish(rep, args.json, t0)
    rep = measure(args.modality, z_from=args.z_from, z_grid=args.z, spherical=tuple(args.spherical), blend=args.blend)
    print(f"{rep['modality']}, |z| from {rep['z_from']}, spherical {rep['spherical'][0]:g}-{rep['spherical'][1]:g} "
          f"waves; sources: {', '.join(Path(s).name for s in rep['sources'])}")
    keys = [k for k in rep["rows"][0] if k not in ("z", "n")]
    print("| |z| µm | n | " + " | ".join(keys) + " |")
    print("|---:|---:|" + "---:|" * len(keys))
    for r in rep["rows"]:
        print(f"| {r['z']:g} | {r['n']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    return U.finish(rep, args.json, t0)


if __name__ == "__main__":
    raise SystemExit(main())
