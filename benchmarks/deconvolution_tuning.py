"""Richardson-Lucy settings of the pipeline's deconvolution, chosen on the seen sources.

``wsi_deepr.restore.deconvolution.RL_SETTINGS`` holds, per modality, the
iterations (a cap when a rate is given), the iterations per µm of the
window's ``|z|`` and the shrink on the estimated ``|z|`` of ``--method
deconvolve``; ``HANDOFF_RL_SETTING`` the same for the windows a network hands
off past its training range.  This runs
``benchmarks/unseen_eval.py``'s evaluation (``refocus --method deconvolve``
with default settings: defocus map, thresholds, aberration choice) once per
``--setting ITERATIONS RATE SHRINK`` and prints each one's per-|z| SSIM and
the issue-13 gates.  Without ``--unseen`` the sources are the shared images
(CMU-1, TCGA, ihc.png; the Vectra channels), which no *deconvolution* setting
was ever tuned on elsewhere: the settings are chosen there, and
``--unseen`` then reports what they do on sources no run touched.

``--beyond UM`` also runs the brightfield default (``auto:brightfield``) with
the network's hand-off to deconvolution moved to ``UM`` (the card's
``deconvolve_beyond_um``), once per value, the hand-off deconvolving with the
first ``--setting``.

``--smear`` (brightfield; ``--smear-only``: nothing else) also refocuses the real smear focal series with
``--method deconvolve`` at every setting (``benchmarks/smear_default.py``):
the real-defocus check that simulated gains must survive.

``--cost`` times the brightfield default end to end (threads, every core) on
CMU-1-Small-Region defocused everywhere by ``--cost-z`` µm (so the map hands
its windows off), with the shipped hand-off setting and with ``--method
deconvolve``'s, alternately in one run: s/MP of each and their ratio.

Usage::

    python benchmarks/deconvolution_tuning.py --modality brightfield \\
        --setting 10 0 0.8 --setting 60 10 0.9 [--unseen] [--seed 1] [--smear] [--json out.json]
    python benchmarks/deconvolution_tuning.py --modality brightfield --setting 60 10 0.9 \\
        --beyond 4 --beyond 6 --unseen
    python benchmarks/deconvolution_tuning.py --cost [--cost-z 7] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import unseen_eval as U  # noqa: E402


def run(modality: str, settings: list[tuple[int, float, float]], *, beyond: list[float], unseen: bool, seed: int,
        size: int, fields: int, z_grid: list[float]) -> list[dict]:
    """One :func:`unseen_eval.evaluate` report per setting (and per hand-off), labelled."""
    from smear_default import hand_off_at

    import wsi_deepr.restore.deconvolution as deconvolution
    from wsi_deepr.readers.slide import Modality

    key = Modality(modality)
    shipped, shipped_far = dict(deconvolution.RL_SETTINGS), deconvolution.HANDOFF_RL_SETTING
    runs = [(s, None) for s in settings] + [(settings[0], b) for b in beyond]
    reports = []
    try:
        for setting, hand_off in runs:
            chosen = (int(setting[0]), float(setting[1]), float(setting[2]))
            deconvolution.RL_SETTINGS = shipped | {key: chosen} if hand_off is None else shipped
            deconvolution.HANDOFF_RL_SETTING = shipped_far if hand_off is None else chosen
            subject = f"{'auto' if hand_off is not None else 'deconvolve'}:{modality}"
            with hand_off_at(hand_off):
                rep = U.evaluate(subject, None, fields=fields, z_grid=z_grid, size=size, seed=seed, unseen=unseen)
            rep["setting"] = {"iterations": chosen[0], "iterations_per_um": chosen[1], "shrink": chosen[2],
                              "deconvolve_beyond_um": hand_off}
            reports.append(rep)
    finally:
        deconvolution.RL_SETTINGS, deconvolution.HANDOFF_RL_SETTING = shipped, shipped_far
    return reports


def smear(settings: list[tuple[int, float, float]]) -> list[dict]:
    """Per setting, the smear stack's SSIM change per plane under ``refocus --method deconvolve``."""
    import tempfile

    import smear_default

    import wsi_deepr.restore.deconvolution as deconvolution
    from export.evaluate import evaluate_stack
    from wsi_deepr.readers.slide import Modality

    shipped = dict(deconvolution.RL_SETTINGS)
    out = []
    try:
        for setting in settings:
            deconvolution.RL_SETTINGS = shipped | {Modality.BRIGHTFIELD: (int(setting[0]), float(setting[1]),
                                                                         float(setting[2]))}
            with tempfile.TemporaryDirectory() as tmp:
                refocus = smear_default.DefaultRefocus("deconvolve", Path(tmp))
                rows = evaluate_stack(refocus, smear_default.STACK)["rows"]
            out.append({"setting": list(setting), "change": {r["plane"]: r["ssim_output"] - r["ssim_input"]
                                                             for r in rows}})
    finally:
        deconvolution.RL_SETTINGS = shipped
    return out


def cost(*, z_um: float, repeats: int) -> dict:
    """Seconds per MP of the brightfield default with the shipped hand-off setting and with the method's."""
    import tempfile

    from consistency_cost import defocused_slide

    import wsi_deepr.restore.deconvolution as deconvolution
    from wsi_deepr import refocus
    from wsi_deepr.readers.slide import Modality

    shipped = deconvolution.HANDOFF_RL_SETTING
    variants = {"hand-off setting": shipped, "method setting": deconvolution.RL_SETTINGS[Modality.BRIGHTFIELD]}
    best = {name: float("inf") for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        slide, mp = defocused_slide(z_um, Path(tmp))
        try:
            for _ in range(repeats):
                for name, value in variants.items():
                    deconvolution.HANDOFF_RL_SETTING = value
                    t0 = time.perf_counter()
                    refocus(slide, Path(tmp) / "out.ome.tif", overwrite=True, resume=False, scheduler="threads",
                            compression="zlib")
                    best[name] = min(best[name], time.perf_counter() - t0)
        finally:
            deconvolution.HANDOFF_RL_SETTING = shipped
    s_per_mp = {name: t / mp for name, t in best.items()}
    return {"z_um": z_um, "megapixels": mp, "s_per_mp": s_per_mp,
            "ratio": s_per_mp["hand-off setting"] / s_per_mp["method setting"]}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", choices=["brightfield", "fluorescence"], default="brightfield")
    p.add_argument("--setting", type=float, nargs=3, action="append", metavar=("ITERATIONS", "RATE", "SHRINK"),
                   help="Richardson-Lucy iterations (cap), iterations per µm (0: fixed), shrink; repeatable "
                        "[the shipped setting]")
    p.add_argument("--beyond", type=float, action="append", default=[],
                   help="brightfield default with the hand-off at this |z| (µm), first setting; repeatable")
    p.add_argument("--unseen", action="store_true", help="the unseen sources (report; settings are chosen without)")
    p.add_argument("--seed", type=int, default=0, help="draw of fields, optics and noise [0: unseen_eval's]")
    p.add_argument("--size", type=int, default=288)
    p.add_argument("--fields", type=int, default=4)
    p.add_argument("--z", type=float, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--smear", action="store_true", help="also the real smear stack, --method deconvolve, per setting")
    p.add_argument("--smear-only", action="store_true", help="the smear stack only (no simulated evaluation)")
    p.add_argument("--cost", action="store_true", help="time the brightfield default with each hand-off setting")
    p.add_argument("--cost-z", type=float, default=7.0, help="--cost: defocus of the whole slide (µm)")
    p.add_argument("--repeats", type=int, default=2, help="--cost: runs per setting; the fastest counts")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import wsi_deepr.restore.deconvolution as deconvolution
    from wsi_deepr.readers.slide import Modality

    shipped = deconvolution.HANDOFF_RL_SETTING if args.beyond else deconvolution.RL_SETTINGS[Modality(args.modality)]
    settings = [tuple(s) for s in args.setting] if args.setting else [shipped]
    t0 = time.perf_counter()
    if args.cost:
        rep = cost(z_um=args.cost_z, repeats=args.repeats)
        print(f"CMU-1-Small-Region defocused by {rep['z_um']:g} µm ({rep['megapixels']:.2f} MP), brightfield default: "
              + ", ".join(f"{k} {v:.2f} s/MP" for k, v in rep["s_per_mp"].items()) + f" (x{rep['ratio']:.2f})")
        return U.finish(rep, args.json, t0)
    reports = [] if args.smear_only else run(args.modality, settings, beyond=args.beyond, unseen=args.unseen,
                                             seed=args.seed, size=args.size, fields=args.fields, z_grid=args.z)
    if reports:
        print(f"{args.modality}, {'unseen' if args.unseen else 'seen'} sources, seed {args.seed}; "
              f"SSIM per |z| = {' / '.join(f'{z:g}' for z in args.z)} µm")
        print("| subject | iterations | per µm | shrink | hand-off µm | input | RL-true-PSF | output | worst "
              "| gain >= 3 | >= RL |")
        print("|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|")
        for rep in reports:
            s, rows = rep["setting"], rep["rows"]
            cols = [" / ".join(f"{r[k]:.3f}" for r in rows) for k in ("ssim_input", "ssim_rl", "ssim_output")]
            hand_off = "-" if s["deconvolve_beyond_um"] is None else f"{s['deconvolve_beyond_um']:g}"
            print(f"| {rep['model']} | {s['iterations']} | {s['iterations_per_um']:g} | {s['shrink']:g} | {hand_off} | "
                  + " | ".join(cols) + f" | {rep['worst_bin_change']:+.3f} | {rep['gain_abs_z_ge_3']:+.3f} | "
                  f"{rep['bins_at_or_above_rl']} of {rep['bins_z_ge_3']} |")
    if args.smear or args.smear_only:
        smears = smear(settings)
        planes = list(smears[0]["change"])
        print("\nsmear stack, --method deconvolve: SSIM change per plane")
        print("| iterations / per µm / shrink | " + " | ".join(f"{q:+d}" for q in planes) + " | worst |")
        print("|---|" + "---:|" * (len(planes) + 1))
        for rep in smears:
            change = rep["change"]
            print(f"| {' / '.join(f'{v:g}' for v in rep['setting'])} | "
                  + " | ".join(f"{change[q]:+.3f}" for q in planes) + f" | {min(change.values()):+.3f} |")
        reports = {"unseen_eval": reports, "smear": smears}
    return U.finish(reports, args.json, t0)


if __name__ == "__main__":
    raise SystemExit(main())
