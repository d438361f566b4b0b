"""Validation of an exported model: the issue's quality table and the real smear-stack check.

Usage (from the repository root)::

    python -m export.evaluate MODEL.onnx --dataset VAL.zarr [--split val] [--max-samples 300]
        [--smear ../shared/data/stacks/smear-brightfield] [--json report.json] [--markdown table.md]

Simulated pairs (the dataset's ``split``): for every pair whose optics are
recorded (NA, pixel size, spherical aberration; untilted) the defocused input,
a Richardson-Lucy deconvolution with the TRUE PSF (:func:`wsi_deepr.optics.psf`
of the recorded setting, the source's channel wavelengths, scikit-image,
``rl_iterations`` = 30) and the model output are compared with the in-focus
target: SSIM (Gaussian window, sigma 1.5, as Wang et al.) and PSNR on
``[0, 1]`` intensities, after cropping ``margin`` px from every side (the same
for all three), per 1-µm defocus bin.  Tilted pairs have no single true PSF and
are scored for input and output only.

Smear stack (real focal series, no simulation): the planes are registered to
``z+00`` (similarity transforms, linear interpolation) and every other plane,
and its refocused version, is compared (SSIM) with ``z+00``.  The model
refocuses each plane as captured and its output is warped with the same
transform as the input (interpolation is not part of the defocus, and the
model is not fed it); refocusing the already registered plane is reported
beside it (``ssim_output_registered_first``).

The model runs with ONNX Runtime exactly as shipped; its card's
normalisation is applied as :mod:`wsi_deepr.inference.normalization` does (``range``:
``[0, 1]`` values are the model space of 8-bit data; ``zscore``: the image's
own statistics).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from wsi_deepr.imaging.reduce import area_mean

__all__ = ["Refocuser", "evaluate_pairs", "evaluate_stack", "main", "markdown_table", "model_card_markdown",
           "rl_true_psf"]

log = logging.getLogger(__name__)


class Refocuser:
    """An exported model run with ONNX Runtime on ``(H, W, C)`` images in ``[0, 1]``.

    A thin wrapper over :func:`wsi_deepr.inference.kernel.refocus_array`
    (``tile=None``: one model call on the whole image as it is), with the
    card's normalisation.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` model.
    threads : int
        ONNX Runtime intra-op threads.
    """

    def __init__(self, path: str | Path, *, threads: int = 2) -> None:
        from wsi_deepr.inference.card import load_model_info
        from wsi_deepr.inference.session import SessionSpec, get_session

        self.info = load_model_info(path)
        self.session = SessionSpec(str(path), device="cpu", intra_op_threads=threads)
        get_session(self.session)  # fail here, not on the first image
        self.normalization = self.info.card.normalization

    def __call__(self, image: np.ndarray, *, prescaled: bool = False) -> np.ndarray:
        """Refocus one ``(H, W, C)`` float image in ``[0, 1]`` (8-bit scale).

        ``prescaled``: the image is a pair dataset's stored sample, already in
        the scaling the card's ``range``/``percentile`` normalisation gives a
        whole slide (8-bit / 255, or a fluorescence source over its 99.9th
        percentile), so it goes to the model as it is.  Otherwise the card's
        normalisation is computed on this image alone.
        """
        from wsi_deepr.inference.kernel import refocus_array
        from wsi_deepr.inference.normalization import NormStats, compute_stats, parse_spec

        img = np.asarray(image, np.float32)
        channels = self.info.card.channels
        if prescaled and parse_spec(self.normalization)[0] in ("range", "percentile"):
            return refocus_array(img, self.session, stats=NormStats.identity(img.shape[-1]),
                                 model_channels=channels, tile=None)
        stats = compute_stats(self.normalization, img.reshape(-1, img.shape[-1]) * 255.0, dtype=np.dtype(np.uint8))
        # the image in 8-bit units, so that the card's statistics apply; back to [0, 1] after
        out = refocus_array(img * np.float32(255.0), self.session, stats=stats, model_channels=channels, tile=None)
        return out / np.float32(255.0)


def rl_true_psf(image: np.ndarray, *, na: float, pixel_size_um: float, z_um: float, wavelengths_um: tuple,
                spherical_waves: float = 0.0, refractive_index: float = 1.0, iterations: int = 30,
                astigmatism_waves: float = 0.0, coma_waves: float = 0.0) -> np.ndarray:
    """Richardson-Lucy deconvolution (scikit-image) of ``(H, W, C)`` with the true defocus PSF (and aberrations)."""
    from skimage.restoration import richardson_lucy

    from wsi_deepr.optics import OpticalSetting, psf

    setting = OpticalSetting(na=min(na, 0.98 * refractive_index), wavelengths_um=tuple(wavelengths_um),
                             pixel_size_um=pixel_size_um, refractive_index=refractive_index,
                             spherical_waves=0.0 if not np.isfinite(spherical_waves) else spherical_waves,
                             astigmatism_waves=astigmatism_waves, coma_waves=coma_waves)
    kernels = psf(setting, z_um)
    side = min(kernels.shape[-1], 2 * (min(image.shape[:2]) // 2) - 1)
    o = (kernels.shape[-1] - side) // 2
    out = np.empty_like(image, dtype=np.float64)
    for c in range(image.shape[2]):
        k = np.clip(kernels[c, o : o + side, o : o + side], 0, None)
        out[:, :, c] = richardson_lucy(np.clip(image[:, :, c], 1e-6, None).astype(np.float64), k / k.sum(),
                                       num_iter=iterations, clip=False)
    return out


def _scores(pred: np.ndarray, target: np.ndarray, margin: int) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    sl = (slice(margin, -margin or None), slice(margin, -margin or None))
    p, t = np.clip(pred[sl], 0, 1), target[sl]
    s = structural_similarity(p, t, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
    return float(s), float(peak_signal_noise_ratio(t, p, data_range=1.0))


def evaluate_pairs(model: Refocuser, dataset: str | Path, *, split: str = "val", max_samples: int | None = 300,
                   rl_iterations: int = 30, margin: int = 16) -> dict:
    """Per-defocus SSIM/PSNR of input, RL-with-true-PSF and output on simulated pairs.

    Returns
    -------
    dict
        ``rows`` (one per 1-µm bin: ``z``, ``n``, ``n_rl``, ``ssim_*``, ``psnr_*``),
        ``gain_abs_z_ge_3`` (mean SSIM gain of the output over the input for
        ``|z| >= 3``), ``beats_rl_everywhere`` and ``samples``.
    """
    import zarr

    from wsi_deepr.data.dataset import PairDataset

    ds = PairDataset(dataset, split=split, normalize=False, layout="HWC")
    group = zarr.open_group(str(dataset), mode="r")
    meta = {k: group[k][:] for k in ("na", "pixel_size_um", "spherical_waves", "tilt", "source", "z_um")}
    sources = ds.attrs.get("sources", [])
    n = len(ds) if max_samples is None else min(len(ds), max_samples)
    picks = np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int)) if n else np.array([], int)
    records = []
    for i in picks:
        s = ds[int(i)]
        row = int(s["index"])
        inp, tgt = s["input"], s["target"]
        out = model(inp, prescaled=True) if isinstance(model, Refocuser) else model(inp)
        rec = {"z": float(meta["z_um"][row]), "tilted": bool(np.abs(meta["tilt"][row]).sum() > 0)}
        rec["ssim_input"], rec["psnr_input"] = _scores(inp, tgt, margin)
        rec["ssim_output"], rec["psnr_output"] = _scores(out, tgt, margin)
        na, px = float(meta["na"][row]), float(meta["pixel_size_um"][row])
        src = sources[int(meta["source"][row])] if int(meta["source"][row]) < len(sources) else {}
        wl = src.get("wavelengths_um")
        if not rec["tilted"] and np.isfinite(na) and np.isfinite(px) and wl:
            rl = rl_true_psf(inp, na=na, pixel_size_um=px, z_um=rec["z"], wavelengths_um=tuple(wl),
                             spherical_waves=float(meta["spherical_waves"][row]), iterations=rl_iterations)
            rec["ssim_rl"], rec["psnr_rl"] = _scores(rl, tgt, margin)
        records.append(rec)
    rows = []
    for zb in sorted({round(r["z"]) for r in records}):
        grp = [r for r in records if round(r["z"]) == zb]
        with_rl = [r for r in grp if "ssim_rl" in r]
        row = {"z": zb, "n": len(grp), "n_rl": len(with_rl)}
        for key in ("ssim_input", "ssim_output", "psnr_input", "psnr_output"):
            row[key] = float(np.mean([r[key] for r in grp]))
        for key in ("ssim_rl", "psnr_rl"):
            row[key] = float(np.mean([r[key] for r in with_rl])) if with_rl else None
        for key in ("ssim_input", "ssim_output"):  # the same pairs as RL, for a like-for-like comparison
            row[key + "_rl_pairs"] = float(np.mean([r[key] for r in with_rl])) if with_rl else None
        rows.append(row)
    far = [r["ssim_output"] - r["ssim_input"] for r in records if abs(r["z"]) >= 3]
    beats = all(r["ssim_rl"] is None or r["ssim_output_rl_pairs"] > r["ssim_rl"] for r in rows)
    return {"rows": rows, "samples": len(records), "margin": margin, "rl_iterations": rl_iterations,
            "gain_abs_z_ge_3": float(np.mean(far)) if far else None, "beats_rl_everywhere": bool(beats),
            "mean_ssim_input": float(np.mean([r["ssim_input"] for r in records])) if records else None,
            "mean_ssim_output": float(np.mean([r["ssim_output"] for r in records])) if records else None}


#: border of skimage's SSIM map left out of its mean (11-px Gaussian window, sigma 1.5)
SSIM_PAD = 5


def block_bootstrap_ci(diff: np.ndarray, *, block: int = 32, draws: int = 2000, seed: int = 0) -> list[float]:
    """95 % interval of the mean of a 2-D map of SSIM changes, by block bootstrap.

    SSIM maps are correlated over the 11-px window, so pixels are not
    independent: the map is cut into ``block``-px squares (edge remainders
    dropped; the whole map if smaller), which are resampled with replacement
    ``draws`` times.  A change whose interval holds 0 is within what another
    field of view of the same sample could give.
    """
    h, w = diff.shape
    by, bx = max(1, h // block), max(1, w // block)
    sy, sx = h // by, w // bx
    means = area_mean(diff[:by * sy, :bx * sx], (sy, sx), edge="crop", dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    boot = means[rng.integers(0, means.size, size=(draws, means.size))].mean(axis=1)
    return [float(v) for v in np.percentile(boot, [2.5, 97.5])]


def evaluate_stack(model: Refocuser, folder: str | Path, *, scale: float = 1.0, reference: int | None = None,
                   step: int = 1) -> dict:
    """SSIM of every plane of a real focal series, and of its refocused version, to ``z+00``.

    ``scale`` < 1 shrinks each plane before the model and enlarges the result
    back (to try the model at another pixel size).  ``reference``: the index
    of the in-focus plane when the series has no plane labelled 0 (a
    multi-page TIFF); planes are then labelled by their offset from it,
    counted in steps of ``step`` planes (every ``step``-th plane is scored).
    """
    from skimage.metrics import structural_similarity
    from skimage.transform import resize

    from wsi_deepr.data.registration import register_stack, warp_to_frame
    from wsi_deepr.data.stacks import read_stack

    stack = read_stack(folder)
    labels = [int(v) for v in stack.z_index]
    if reference is not None:
        if not 0 <= reference < len(labels):
            raise ValueError(f"{folder}: reference plane {reference} outside 0..{len(labels) - 1}")
        keep = [i for i in range(len(labels)) if (i - reference) % step == 0]
        stack = read_stack(folder, planes=keep)
        labels = [(i - reference) // step for i in keep]
    if 0 not in labels:
        raise ValueError(f"{folder}: no plane labelled 0 (the in-focus reference); pass its index as reference")
    reg = register_stack(stack, reference=labels.index(0))
    y0, x0, y1, x1 = reg.crop
    to_crop = np.eye(3)
    to_crop[:2, 2] = [y0, x0]
    # 8-bit: / 255; deeper (fluorescence): / the series' 99.9th percentile, as the dataset builder scales stacks
    top = 255.0 if stack.dtype == np.uint8 else float(max(np.percentile(reg.planes, 99.9), 1.0))
    planes = np.clip(reg.planes / top, 0, 1)
    ref = planes[labels.index(0)]

    def ssim_map(a: np.ndarray) -> tuple[float, np.ndarray]:
        value, full = structural_similarity(np.clip(a, 0, 1), ref, data_range=1.0, channel_axis=-1,
                                            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                            full=True)
        return float(value), full[SSIM_PAD:-SSIM_PAD, SSIM_PAD:-SSIM_PAD].mean(axis=-1)

    def ssim(a: np.ndarray) -> float:
        return ssim_map(a)[0]

    def there_and_back(img: np.ndarray, fn) -> np.ndarray:
        small = resize(img, (round(img.shape[0] * scale), round(img.shape[1] * scale)), anti_aliasing=True)
        return resize(fn(small), img.shape, order=1)

    def refocus_then_register(k: int, fn) -> np.ndarray:
        raw = np.clip(np.asarray(stack.planes[k], np.float32) / top, 0, 1)
        return warp_to_frame(fn(raw), reg.transforms[k] @ to_crop, (y1 - y0, x1 - x0), order=1)

    rows = []
    for k, (label, plane) in enumerate(zip(labels, planes)):
        if label == 0:
            continue
        row = {"plane": label}
        row["ssim_input"], map_in = ssim_map(plane)
        if scale != 1.0:
            row["ssim_output"], map_out = ssim_map(refocus_then_register(k, lambda a: there_and_back(a, model)))
            # the same resampling without the model: what resampling alone costs
            row["ssim_input_resampled"] = ssim(there_and_back(plane, lambda a: a))
        else:
            # the model refocuses the plane as captured; its output is then registered exactly as the input was
            row["ssim_output"], map_out = ssim_map(refocus_then_register(k, model))
            # the other order (refocusing the interpolated plane), for comparison
            row["ssim_output_registered_first"] = ssim(model(plane))
        row["change_ci95"] = block_bootstrap_ci(map_out - map_in, seed=k)
        rows.append(row)
    near = [r for r in rows if 1 <= abs(r["plane"]) <= 5]
    return {"stack": str(folder), "scale": scale, "reference": reference, "step": step, "rows": rows,
            "improves_all_1_to_5": bool(near) and all(r["ssim_output"] > r["ssim_input"] for r in near),
            "mean_change_1_to_5": float(np.mean([r["ssim_output"] - r["ssim_input"] for r in near])) if near else None}


def markdown_table(pairs: dict | None, stacks: list[dict] | None = None) -> str:
    """The validation table (and smear rows) as Markdown."""
    lines = []
    if pairs:
        lines += ["| z (µm) | n | SSIM input | SSIM RL-true-PSF | SSIM output | PSNR input | PSNR RL | PSNR output |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]

        def f(v: float | None, d: int) -> str:
            return "–" if v is None else f"{v:.{d}f}"

        for r in pairs["rows"]:
            lines.append(f"| {r['z']:+d} | {r['n']} | {f(r['ssim_input'], 3)} | {f(r['ssim_rl'], 3)} | "
                         f"{f(r['ssim_output'], 3)} | {f(r['psnr_input'], 2)} | {f(r['psnr_rl'], 2)} | "
                         f"{f(r['psnr_output'], 2)} |")
        g = pairs["gain_abs_z_ge_3"]
        lines += ["", (f"Mean SSIM gain for |z| >= 3 µm: {f(g, 3)} (target >= +0.15); output above RL-true-PSF "
                      f"in every bin: {pairs['beats_rl_everywhere']}; {pairs['samples']} pairs, "
                      f"{pairs['margin']} px margin.")]
    for st in stacks or []:
        resampled = "ssim_input_resampled" in st["rows"][0] if st["rows"] else False
        first = "ssim_output_registered_first" in st["rows"][0] if st["rows"] else False
        name = Path(st["stack"]).name
        ref = "z+00" if st.get("reference") is None else f"plane {st['reference']} (step {st.get('step', 1)})"
        lines += ["", f"Real focal series `{name}` (scale {st['scale']}): SSIM to {ref}",
                  "| plane | input | output | change (95 % interval) |"
                  + (" input resampled there and back |" if resampled else "")
                  + (" output, model fed the registered plane |" if first else ""),
                  "|---:|---:|---:|---:|" + ("---:|" if resampled else "") + ("---:|" if first else "")]

        def change(r: dict) -> str:
            d = r["ssim_output"] - r["ssim_input"]
            ci = r.get("change_ci95")
            return f"{d:+.4f}" + (f" ({ci[0]:+.4f}, {ci[1]:+.4f})" if ci else "")

        lines += [f"| {r['plane']:+d} | {r['ssim_input']:.3f} | {r['ssim_output']:.3f} | {change(r)} |"
                  + (f" {r['ssim_input_resampled']:.3f} |" if resampled else "")
                  + (f" {r['ssim_output_registered_first']:.3f} |" if first else "") for r in st["rows"]]
        lines.append(f"\nAll planes ±1…±5 improved: {st['improves_all_1_to_5']}; mean change "
                     f"{st['mean_change_1_to_5']:+.3f}. Intervals: block bootstrap of the SSIM-map change "
                     f"(32-px blocks), the spread another field of view of the sample could give.")
    return "\n".join(lines) + "\n"


def model_card_markdown(report: dict, *, dataset_attrs: dict | None = None, limits: list[str] | None = None) -> str:
    """``MODEL_CARD.md`` text: file, card, data, optics, training, validation table, limits."""
    card, extra = report["card"], report["card"].get("extra", {})
    training = json.loads(extra.get("training", "{}") or "{}")
    halo = json.loads(extra.get("halo_measurement", "{}") or "{}")
    cfg = training.get("config", {})
    name = Path(report["model"]).name
    lines = [f"# {name}", "", card["description"], "",
             f"* file: `{name}`, sha256 `{report['sha256']}`",
             f"* default model: {'yes' if card.get('default') else 'no'}"
             + (f"; status: **{extra['status']}** (used only when named: `--model {name.removesuffix('.onnx')}`)"
                if extra.get("status") else ""), "", "## Model card (ONNX metadata)", "",
             "| key | value |", "|---|---|"]
    def show(v: object) -> str:
        return json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v)

    lines += [f"| {k} | {show(card[k])} |" for k in ("modality", "channels", "mpp", "defocus_range_um",
                                                      "normalization", "halo", "version")]
    if extra.get("mpp_range"):
        lines.append(f"| mpp_range | {extra['mpp_range']} |")
    lines += ["", (f"Halo: measured receptive field of the correction ({halo.get('probe', '?')}): 99 % within "
                  f"{halo.get('radius_0.99_correction')} px, 99.9 % within {halo.get('radius_0.999_correction')} px "
                  f"(of the whole output: {halo.get('radius_0.99_output')} / {halo.get('radius_0.999_output')} px)."),
              "", "## Training data", ""]
    if dataset_attrs:
        summary, settings = dataset_attrs.get("summary", {}), dataset_attrs.get("settings", {})
        lines += [(f"* builder: {settings.get('builder') or dataset_attrs.get('kind')}, "
                  f"{summary.get('pairs')} pairs of {dataset_attrs.get('patch_size')} px: train {summary.get('train')}, "
                  f"validation {summary.get('val')} (fields of view {summary.get('fov_train')} / {summary.get('fov_val')}; "
                  "validation fields never used for training)"),
                  "* in-focus sources: " + ", ".join(f"{s.get('name')} ({s.get('pixel_size_um')} µm/px"
                                                      f"{', assumed' if s.get('pixel_size_assumed') else ''})"
                                                      for s in dataset_attrs.get("sources", [])),
                  (f"* pixel size of the pairs: {summary.get('pixel_size_um', {}).get('quantiles_10_50_90')} µm "
                  "(10/50/90 %)")]
        ranges = settings.get("ranges")
        if ranges:
            lines += ["* domain-randomised optics: " + "; ".join(f"{k} {v}" for k, v in ranges.items())]
    else:
        lines += [f"* dataset: {training.get('dataset')}; sources {training.get('sources')}"]
    secs = training.get("seconds")
    lines += ["", "## Training", "",
              (f"* {training.get('iterations')} iterations ({training.get('generator_updates')} generator updates), "
              f"{'?' if secs is None else f'{secs / 3600:.2f} h'} on {training.get('hardware')}"),
              (f"* generator width {cfg.get('width')} (max {cfg.get('max_width')}), batch {cfg.get('batch_size')}, "
              f"crop {cfg.get('crop')}, lr {cfg.get('lr_g')} / {cfg.get('lr_d')}, "
              f"{cfg.get('g_steps')} G + {cfg.get('d_steps')} D updates per iteration"),
              (f"* warm start: the first {cfg.get('warmup')} iterations trained the generator alone "
              "(MS-SSIM + BerHu, no adversarial term)")]
    aug = [f"grey pairs {cfg.get('gray_prob')}" if cfg.get("gray_prob") else None,
           f"contrast x{cfg['contrast_range'][0]}-{cfg['contrast_range'][1]} (log-uniform)"
           if cfg.get("contrast_range") else (f"contrast jitter ±{cfg.get('contrast_jitter')}"
                                               if cfg.get("contrast_jitter") else None),
           f"identity pairs {cfg.get('identity_prob')}" if cfg.get("identity_prob") else None]
    if any(aug):
        lines.append("* augmentation (input and target alike): dihedral flips, " + ", ".join(a for a in aug if a))
    lineage = training.get("lineage", [])
    if lineage:
        total = (secs or 0.0) + sum(float(r.get("seconds") or 0.0) for r in lineage)
        lines.append(f"* initialised from earlier runs (oldest first), {total / 3600:.2f} h of training in all:")
        for r in lineage:
            c = r.get("config", {})
            lines.append(f"  * `{r.get('checkpoint')}`: {r.get('iteration')} iterations, "
                         f"{float(r.get('seconds') or 0) / 3600:.2f} h"
                         f"{' on ' + r['hardware'] if r.get('hardware') else ''}, "
                         f"dataset `{r.get('dataset')}`, warm-up "
                         f"{c.get('warmup')}, grey {c.get('gray_prob')}, contrast "
                         f"{c.get('contrast_range') or c.get('contrast_jitter')}, identity {c.get('identity_prob', 0)}")
    lines += ["", "## Validation", "",
              markdown_table(report.get("pairs"), report.get("stacks")), "## Known limits", ""]
    lines += [f"* {item}" for item in (limits or [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m export.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="exported .onnx model")
    p.add_argument("--dataset", type=Path, help="pair dataset (.zarr) to score")
    p.add_argument("--split", default="val", choices=("train", "val", "all"))
    p.add_argument("--max-samples", type=int, default=300)
    p.add_argument("--rl-iterations", type=int, default=30)
    p.add_argument("--margin", type=int, default=16, help="px cropped from each side before scoring")
    p.add_argument("--smear", "--stack", dest="smear", type=Path,
                   help="a real focal series: a folder with a z+00 plane, or a multi-page TIFF with --stack-reference")
    p.add_argument("--stack-reference", type=int, default=None, help="index of the in-focus plane")
    p.add_argument("--stack-step", type=int, default=1, help="score every N-th plane from the reference")
    p.add_argument("--smear-scale", type=float, action="append", default=None,
                   help="also run the stack at this scale (repeatable; default 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--markdown", type=Path, help="write the Markdown table here")
    p.add_argument("--card-md", type=Path, help="write a MODEL_CARD.md here (with --dataset: its data and optics)")
    p.add_argument("--limit", action="append", default=[], help="a known limit for the model card (repeatable)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = Refocuser(args.model, threads=args.threads)
    report: dict = {"model": str(args.model), "sha256": model.info.sha256, "card": model.info.card.as_dict()}
    if args.dataset:
        report["pairs"] = evaluate_pairs(model, args.dataset, split=args.split, max_samples=args.max_samples,
                                         rl_iterations=args.rl_iterations, margin=args.margin)
    if args.smear:
        report["stacks"] = [evaluate_stack(model, args.smear, scale=s, reference=args.stack_reference,
                                          step=args.stack_step) for s in (args.smear_scale or [1.0])]
    table = markdown_table(report.get("pairs"), report.get("stacks"))
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    if args.card_md:
        from wsi_deepr.data.dataset import read_attrs

        attrs = read_attrs(args.dataset) if args.dataset else None
        args.card_md.write_text(model_card_markdown(report, dataset_attrs=attrs, limits=args.limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
