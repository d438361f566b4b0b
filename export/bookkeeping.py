"""Bookkeeping of a training run: validation scores, the CSV log rows, the loss-weight balance.

:func:`validate` scores the (EMA) generator on fixed validation rows (BerHu,
SSIM, PSNR against the input's); the training loop
(:mod:`export.train`) writes one ``log.csv`` row per logging period and per
validation, and moves the loss weights towards balance
(:func:`_rebalance`) at each periodic validation.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from .data import TorchPairs
from .losses import ms_ssim, ssim
from .models import Generator

__all__ = ["CSV_FIELDS", "validate"]

#: the columns of a run's ``log.csv``
CSV_FIELDS = ("iteration", "kind", "phase", "seconds", "g_updates", "adv", "msssim", "berhu",
              "lambda", "nu", "xi", "c_adv", "c_msssim", "c_berhu", "g_loss", "d_loss", "d_real", "d_fake",
              "val_berhu", "val_msssim", "val_ssim", "val_psnr", "val_ssim_input", "val_psnr_input")


@torch.no_grad()
def validate(gen: Generator, data: TorchPairs, *, rows: np.ndarray, c: float, batch: int = 8) -> dict:
    """Validation metrics of ``gen`` on samples ``rows`` of ``data`` (whole patches, no flips).

    BerHu in the standardised space; MS-SSIM, SSIM and PSNR on ``[0, 1]``
    intensities (output clipped), also for the input (the baseline).
    """
    was = gen.training
    gen.eval()
    acc: dict[str, float] = {}
    n = 0
    dev = next(gen.parameters()).device
    for s in range(0, len(rows), batch):
        pairs = [data.sample(int(i)) for i in rows[s : s + batch]]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(dev)
        y = torch.from_numpy(np.stack([p[1] for p in pairs])).to(dev)
        pred = gen(x)
        pr, yr, xr = data.to_range(pred).clamp(0, 1), data.to_range(y), data.to_range(x).clamp(0, 1)
        k = x.shape[0]
        e = (data.to_std(pred) - data.to_std(y)).abs()
        vals = {"val_berhu": torch.where(e <= c, e, (e * e + c * c) / (2 * c)).mean(),
                "val_msssim": ms_ssim(pr, yr), "val_ssim": ssim(pr, yr), "val_ssim_input": ssim(xr, yr),
                "val_psnr": _psnr(pr, yr), "val_psnr_input": _psnr(xr, yr)}
        for key, v in vals.items():
            acc[key] = acc.get(key, 0.0) + float(v) * k
        n += k
    gen.train(was)
    return {k: v / n for k, v in acc.items()}



def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10.0 * torch.log10(1.0 / mse)).mean()



class _CsvLog:
    def __init__(self, path: Path, *, keep_until: int) -> None:
        self.path = path
        rows = []
        if path.exists():  # drop rows logged after the checkpoint we resume from
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= keep_until]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=CSV_FIELDS).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in CSV_FIELDS})



def _val_rows(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))



def _train_row(it: int, adversarial: bool, seconds: float, g_updates: int, sums: dict, counted: int,
               g_steps: int, weights: dict) -> dict:
    """A CSV row of the mean training terms since the last row."""
    n = max(counted, 1)
    mean_t = {k: v / n for k, v in sums.items() if not k.startswith("d_")}
    mean_t.update({k: v * g_steps / n for k, v in sums.items() if k.startswith("d_")})
    return {"iteration": it, "kind": "train", "phase": "gan" if adversarial else "warmup", "seconds": seconds,
            "g_updates": g_updates, **mean_t, **weights,
            "c_adv": weights["lambda"] * mean_t.get("adv", 0.0),
            "c_msssim": weights["nu"] * mean_t.get("msssim", 0.0),
            "c_berhu": weights["xi"] * mean_t.get("berhu", 0.0)}



def _rebalance(weights: dict, means: dict, *, adversarial: bool) -> None:
    """Move ``nu`` and ``lambda`` halfway (geometrically) to equal contributions."""
    target = weights["xi"] * means.get("berhu", 0.0)
    pairs = [("nu", "msssim")] + ([("lambda", "adv")] if adversarial else [])
    for w, term in pairs:
        value = means.get(term, 0.0)
        if target > 0 and value > 1e-8:
            weights[w] = float(np.clip(math.sqrt(weights[w] * target / value), 1e-3, 1e3))
