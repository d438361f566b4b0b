"""Accuracy and speed of the blind defocus estimator (issue 12, part 1).

Measures, with the installed coefficients (``wsi_deepr/models/defocus-estimator.npz``):

(a) simulated windows from the *evaluation* split of ``benchmarks/defocus_sim.py``
    (disjoint fields of view of the fit sources, plus ihc.png and smalltif.tif
    never seen in fitting), |z| <= 6 µm: mean absolute error over the windows
    given an estimate, and the share of in-focus windows (z = 0) called in
    focus (< IN_FOCUS_UM), of those given an estimate and of all; sets: the fit
    recipe with the true NA given, the 20x scanner prior (0.5 µm/px, NA 0.75,
    blind), *unseen optics* (brightfield 0.5 µm/px NA 0.75 with 0.12-0.25 waves
    of spherical aberration, noisier, JPEG Q22-40; fluorescence 0.325 µm/px
    NA 0.75, spherical 0.12-0.25 waves, 8-25 photons), and a blind NA
    mismatch (true NA 0.65 / 0.85, prior 0.75);
(b) real focal stacks: Spearman of the per-plane estimate (median over
    windows) against |plane distance| on each side of the in-focus plane, and
    whether the in-focus plane gets the lowest estimate;
(c) glass (CMU, TCGA regions with no tissue, and synthetic glass) and blank
    fluorescence background (Vectra background, synthetic dark noise): share
    given no estimate;
(d) speed of ``defocus_map`` on the shared slides: seconds per Mpx of tissue;
(e) ``defocus_map`` of CMU-1-Small-Region with a known 3-µm and 1-µm region
    made with several optics: window-level IoU of the 3-µm region (estimate
    >= 2 µm) and the share of in-focus tissue windows called in focus.

Usage::

    python benchmarks/defocus_accuracy.py                   # ~1 min on 2 idle cores
    python benchmarks/defocus_accuracy.py --n 300 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import defocus_sim as ds  # noqa: E402

SETS = (("recipe_na_given", ("brightfield", "fluorescence")),
        ("scanner_prior_blind", ("brightfield", "fluorescence")),
        ("unseen_bf_0.5um_na0.75_sph", ("brightfield",)),
        ("unseen_fl_0.325um_na0.75_sph", ("fluorescence",)),
        ("na_mismatch_0.65_blind", ("brightfield",)),
        ("na_mismatch_0.85_blind", ("brightfield",)))


def _estimate(wins: list[np.ndarray], labels: list[dict], na_given: bool) -> np.ndarray:
    from wsi_deepr.focus import estimate_defocus

    return np.array([estimate_defocus(w, mpp=lab["mpp"], modality=lab["modality"],
                                      na=lab["na"] if na_given else None).defocus_um[0]
                     for w, lab in zip(wins, labels)])


def simulated(sources: list, n: int, seed: int) -> list[dict]:
    """Part (a): MAE for |z| <= 6 µm and in-focus calls, per set and modality."""
    from wsi_deepr.focus import IN_FOCUS_UM

    rows = []
    for k, (name, mods) in enumerate(SETS):
        base = replace(ds.RECIPES[name], z_max=6.0, p_near_focus=0.0)
        for j, mod in enumerate(mods):
            wins, labs = ds.simulate_set(sources, "eval", base, n, 1000 + 10 * k + j, mod)
            est = _estimate(wins, labs, base.na_given)
            z = np.abs([lab["z"] for lab in labs])
            ok = np.isfinite(est)
            w0, l0 = ds.simulate_set(sources, "eval", replace(base, z_fixed=(0.0,)), max(100, n // 2),
                                     2000 + 10 * k + j, mod)
            e0 = _estimate(w0, l0, base.na_given)
            srcs = sorted({lab["source"] for lab in labs})
            per_src = {s: round(float(np.mean(np.abs(est - z)[ok & np.array([lab["source"] == s for lab in labs])])), 3)
                       for s in srcs}
            rows.append({"set": name, "modality": mod, "windows": len(wins), "covered": round(float(ok.mean()), 3),
                         "mae_um": round(float(np.mean(np.abs(est[ok] - z[ok]))), 3),
                         "mae_by_source": per_src,
                         "in_focus_called": round(float(np.mean(e0[np.isfinite(e0)] < IN_FOCUS_UM)), 3),
                         "in_focus_called_of_all": round(float(np.mean(e0 < IN_FOCUS_UM)), 3),
                         "in_focus_covered": round(float(np.mean(np.isfinite(e0))), 3),
                         "in_focus_windows": len(w0),
                         "median_est_at_z0": round(float(np.nanmedian(e0)), 3)})
            r = rows[-1]
            print(f"  {name:30s} {mod:12s} MAE {r['mae_um']:.2f} µm (estimated {r['covered']:.1%})  "
                  f"z=0 called in focus {r['in_focus_called']:.1%} of estimated, "
                  f"{r['in_focus_called_of_all']:.1%} of all (estimated {r['in_focus_covered']:.1%})", flush=True)
    return rows


def _plane_estimates(planes: list[np.ndarray], mpp: float, modality: str, win: int) -> np.ndarray:
    from wsi_deepr.focus import estimate_defocus

    h = min(p.shape[0] for p in planes)
    w = min(p.shape[1] for p in planes)
    out = []
    for p in planes:
        y0, x0 = (p.shape[0] - h) // 2, (p.shape[1] - w) // 2
        a = p[y0 : y0 + h, x0 : x0 + w]
        tiles = [a[y : y + win, x : x + win] for y in range(0, h - win + 1, win // 2)
                 for x in range(0, w - win + 1, win // 2)]
        est = estimate_defocus(np.stack(tiles), mpp=mpp, modality=modality)
        out.append(float(np.nanmedian(est.defocus_um)) if est.valid.any() else np.nan)
    return np.asarray(out)


def stacks() -> list[dict]:
    """Part (b): the real focal stacks."""
    from scipy.stats import spearmanr

    from wsi_deepr.data.stacks import read_stack

    rows = []
    cases = (("smear-brightfield", ds.DATA / "stacks" / "smear-brightfield", 0.5, "brightfield", None, 128),
             ("smear-brightfield", ds.DATA / "stacks" / "smear-brightfield", 0.25, "brightfield", None, 256),
             ("mitochondria-fluorescence", ds.DATA / "stacks" / "mitochondria-fluorescence"
              / "mitochondria_zstack.ome.tif", 0.1, "fluorescence", 19, 320),
             ("mitochondria-fluorescence", ds.DATA / "stacks" / "mitochondria-fluorescence"
              / "mitochondria_zstack.ome.tif", 0.2, "fluorescence", 19, 160))
    for name, path, mpp, mod, focus_index, win in cases:
        st = read_stack(path, modality=mod)
        labels = np.asarray(st.z_index)
        f = int(np.flatnonzero(labels == 0)[0]) if focus_index is None else focus_index
        est = _plane_estimates(st.planes, mpp, mod, win)
        dist = np.abs(np.arange(len(est)) - f)
        lo, hi = np.arange(0, f + 1), np.arange(f, len(est))
        rho_lo = float(spearmanr(dist[lo], est[lo]).statistic)
        rho_hi = float(spearmanr(dist[hi], est[hi]).statistic)
        rows.append({"stack": name, "assumed_mpp": mpp, "window_px": win, "planes": len(est), "focus_plane": f,
                     "spearman_below": round(rho_lo, 3), "spearman_above": round(rho_hi, 3),
                     "focus_lowest": bool(np.nanargmin(est) == f), "argmin_plane": int(np.nanargmin(est)),
                     "estimates_um": [round(float(v), 3) for v in est]})
        print(f"  {name:26s} mpp {mpp}: Spearman {rho_lo:.3f} / {rho_hi:.3f}, focus lowest "
              f"{rows[-1]['focus_lowest']} (argmin {rows[-1]['argmin_plane']}, focus {f})", flush=True)
    return rows


def _windows(a: np.ndarray, s: int = 128) -> np.ndarray:
    return np.stack([a[y : y + s, x : x + s] for y in range(0, a.shape[0] - s + 1, s)
                     for x in range(0, a.shape[1] - s + 1, s)])


def background() -> list[dict]:
    """Part (c): share of glass / blank background windows given no estimate."""
    from wsi_deepr import open_slide
    from wsi_deepr.focus import estimate_defocus
    from wsi_deepr.optics.randomize import add_poisson_gaussian_noise, jpeg_recompress

    rows = []
    rng = np.random.default_rng(7)
    for name in ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
        s = open_slide(ds.DATA / "slides" / name)
        w = _windows(s.read_region(0, 0, 0, *s.level_shapes[0][:2]))
        glass = np.percentile(w.reshape(-1, 3), 99, axis=0)
        below = (glass + 1) * 10 ** -0.1 - 1
        empty = np.array([not np.any(x < below) for x in w])  # no pixel with OD > 0.1
        est = estimate_defocus(w[empty], mpp=0.5, modality="brightfield")
        rows.append({"case": f"{name} glass windows", "windows": int(empty.sum()),
                     "no_estimate": round(float(np.mean(~est.valid)), 4)})
    synth = []
    for _ in range(200):
        level = rng.uniform(0.8, 0.97)
        img = add_poisson_gaussian_noise(np.full((128, 128, 3), level, np.float32), rng,
                                         photons=float(np.exp(rng.uniform(np.log(200), np.log(20000)))),
                                         read_noise=float(rng.uniform(0, 0.005)))
        synth.append(np.rint(jpeg_recompress(img, int(rng.integers(30, 96))) * 255).astype(np.uint8))
    est = estimate_defocus(np.stack(synth), mpp=0.5, modality="brightfield")
    rows.append({"case": "synthetic glass (noise + JPEG)", "windows": 200, "no_estimate": round(float(np.mean(~est.valid)), 4)})
    v = open_slide(ds.DATA / "slides" / "small_vectra.qptiff")
    a = v.read_region(0, 0, 0, *v.level_shapes[0][:2])
    wv = _windows(a)
    # blank: the window's 99.9th percentile is within 3 grey levels of the slide's median background
    bg = np.median(a.reshape(-1, 3), axis=0)
    blank = np.array([np.all(np.percentile(x.reshape(-1, 3), 99.9, axis=0) <= bg + 3) for x in wv])
    n_blank = 0
    hits = []
    for c in range(3):
        est = estimate_defocus(wv[blank][..., c : c + 1], mpp=0.5, modality="fluorescence")
        hits.append(~est.valid)
        n_blank += int(blank.sum())
    rows.append({"case": "small_vectra.qptiff blank background (per channel)", "windows": n_blank,
                 "no_estimate": round(float(np.mean(np.concatenate(hits))), 4)})
    synth = []
    for _ in range(200):
        off = rng.uniform(0.0, 0.1)
        img = add_poisson_gaussian_noise(np.full((128, 128, 1), off, np.float32), rng,
                                         photons=float(np.exp(rng.uniform(np.log(10), np.log(2000)))),
                                         read_noise=float(rng.uniform(0, 0.02)))
        synth.append(np.rint(img * 65535).astype(np.uint16) if rng.random() < 0.5 else np.rint(img * 255).astype(np.uint8))
    hits = [not estimate_defocus(x, mpp=0.5, modality="fluorescence").valid[0] for x in synth]
    rows.append({"case": "synthetic blank fluorescence (offset + noise)", "windows": 200,
                 "no_estimate": round(float(np.mean(hits)), 4)})
    for r in rows:
        print(f"  {r['case']:52s} {r['windows']:5d} windows, no estimate {r['no_estimate']:.1%}", flush=True)
    return rows


def speed(workers: int) -> list[dict]:
    """Part (d): ``defocus_map`` seconds per Mpx of tissue (best of 2 runs)."""
    from wsi_deepr.focus import defocus_map

    rows = []
    for name in ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "small_vectra.qptiff", "smalltif.tif"):
        best = None
        for _ in range(2):
            m = defocus_map(ds.DATA / "slides" / name, max_workers=workers)
            best = m if best is None or m.seconds < best.seconds else best
        tissue_mpx = float((best.tissue * best.boxes[:, 2] * best.boxes[:, 3]).sum()) / 1e6
        rows.append({"slide": name, "seconds": round(best.seconds, 3), "tissue_mpx": round(tissue_mpx, 3),
                     "s_per_tissue_mpx": round(best.seconds / max(tissue_mpx, 1e-9), 3),
                     "regions": len(best.tissue), "estimated": int(np.isfinite(best.defocus_um).sum()),
                     "method": best.method})
        print(f"  {name:30s} {best.seconds:.2f} s, {tissue_mpx:.2f} Mpx tissue -> "
              f"{rows[-1]['s_per_tissue_mpx']:.3f} s/Mpx ({best.method})", flush=True)
    return rows


def _layout_slide(cmu: np.ndarray, path: Path, setting, win: int = 128) -> np.ndarray:
    """CMU with a 3-µm block and a 1-µm block (aligned to 128-px regions); returns z per pixel."""
    import tifffile

    from wsi_deepr.optics import defocus

    out, zmap = cmu.copy(), np.zeros(cmu.shape[:2])
    for (y0, x0, y1, x1), z in (((12 * win, 3 * win, 18 * win, 9 * win), 3.0),
                                ((4 * win, 9 * win, 9 * win, 14 * win), 1.0)):
        src = cmu[y0 - 64 : y1 + 64, x0 - 64 : x1 + 64].astype(np.float32) / 255.0
        out[y0:y1, x0:x1] = np.clip(np.rint(defocus(src, setting, z) * 255), 0, 255)[64:-64, 64:-64]
        zmap[y0:y1, x0:x1] = z
    tifffile.imwrite(path, out, photometric="rgb", tile=(256, 256), compression="zlib",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.499, "PhysicalSizeY": 0.499})
    return zmap


def layouts() -> list[dict]:
    """Part (e): maps of CMU with known 3-µm and 1-µm regions made with several optics."""
    import tempfile

    from wsi_deepr import open_slide
    from wsi_deepr.focus import IN_FOCUS_UM, defocus_map
    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, OpticalSetting

    s = open_slide(ds.DATA / "slides" / "CMU-1-Small-Region.svs")
    cmu = s.read_region(0, 0, 0, *s.level_shapes[0][:2])
    rows = []
    for na, sph in ((0.75, 0.0), (0.75, 0.1), (0.75, 0.2), (0.65, 0.0), (0.85, 0.0)):
        setting = OpticalSetting(na=na, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.499,
                                 spherical_waves=sph)
        with tempfile.TemporaryDirectory() as d:
            zmap = _layout_slide(cmu, Path(d) / "layout.ome.tif", setting)
            m = defocus_map(Path(d) / "layout.ome.tif")
        truth = np.array([zmap[y : y + h, x : x + w].mean() for x, y, w, h in m.boxes])
        est, ok = m.defocus_um, np.isfinite(m.defocus_um)
        found, true3 = ok & (est >= 2.0), ok & (truth >= 2.5)
        focus = ok & (truth == 0) & (m.tissue >= 0.5)
        rows.append({"na": na, "spherical_waves": sph,
                     "iou_3um": round(float((found & true3).sum() / max((found | true3).sum(), 1)), 3),
                     "in_focus_called": round(float(np.mean(est[focus] < IN_FOCUS_UM)), 3),
                     "in_focus_windows": int(focus.sum()),
                     "median_um": {k: round(float(np.median(est[sel])), 2) for k, sel in
                                   (("0", focus), ("1", ok & (truth == 1.0)), ("3", true3))}})
        r = rows[-1]
        print(f"  NA {na} spherical {sph}: IoU of the 3-µm region {r['iou_3um']:.3f}, in-focus tissue called "
              f"in focus {r['in_focus_called']:.1%} (n={r['in_focus_windows']}), medians {r['median_um']}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every part and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="simulated windows per set and modality")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parts", default="abcde", help="subset of a, b, c, d, e")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    out: dict = {"command": "python benchmarks/defocus_accuracy.py " + " ".join(argv or sys.argv[1:])}
    t0 = time.time()
    if "a" in args.parts:
        print("(a) simulated, evaluation split, |z| <= 6 µm", flush=True)
        out["simulated"] = simulated(ds.load_sources(), args.n, args.seed)
    if "b" in args.parts:
        print("(b) real focal stacks", flush=True)
        out["stacks"] = stacks()
    if "c" in args.parts:
        print("(c) glass and blank background", flush=True)
        out["background"] = background()
    if "d" in args.parts:
        print(f"(d) defocus_map speed, {args.workers} workers", flush=True)
        out["speed"] = speed(args.workers)
    if "e" in args.parts:
        print("(e) defocus_map of CMU with known 3-µm / 1-µm regions (windows >= 2 µm vs truth >= 2.5 µm)",
              flush=True)
        out["layouts"] = layouts()
    out["seconds"] = round(time.time() - t0, 1)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
