"""Fit the defocus estimator's regressors (reproducible, seeded; torch at fit time only).

Simulates windows from the *fit* split of ``benchmarks/defocus_sim.py`` (recipe
``fit``: pixel 0.2-1.0 µm/px, NA 0.4-0.95, spherical ±0.1 waves, |z| 0-7 µm,
noise, JPEG, stain/gain jitter), computes the features of
:mod:`wsi_deepr.focus.features` with the true NA, and fits per modality a
17-64-64-2 ReLU perceptron with a Laplace likelihood (median ``|z|`` and its
scale).  Writes ``wsi_deepr/models/defocus-estimator.npz``.

Usage::

    nice -n 5 python benchmarks/defocus_fit.py                 # ~10 min on 1 core
    python benchmarks/defocus_fit.py --n-bf 4000 --n-fl 3000 --out /tmp/est.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import defocus_sim as ds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def features_of(wins: list[np.ndarray], labels: list[dict], *, blind: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, |z| targets and a validity mask (texture test) of simulated windows."""
    from wsi_deepr.focus.estimate import MIN_CONTRAST_BF, MIN_OD_RANGE_BF, MIN_SNR, na_prior
    from wsi_deepr.focus.features import band_features, quantum, texture_snr, to_canonical_gray

    feats, ys, ok = [], [], []
    for w, lab in zip(wins, labels):
        g = to_canonical_gray(w[None], mpp=lab["mpp"])
        snr, con, odr = texture_snr(g, step=quantum(w.dtype))
        valid = snr[0] >= MIN_SNR and (lab["modality"] == "fluorescence"
                                         or (con[0] >= MIN_CONTRAST_BF and odr[0] >= MIN_OD_RANGE_BF))
        na = na_prior(lab["mpp"]) if blind else lab["na"]
        feats.append(band_features(g, mpp=lab["mpp"], na=na)[0])
        ys.append(abs(lab["z"]))
        ok.append(valid)
    return np.asarray(feats), np.asarray(ys), np.asarray(ok)


def fit_mlp(x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int = 150, hidden: int = 64) -> dict:
    """Fit the perceptron; returns numpy parameters in the layout of ``estimate._mlp``."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, 2))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    n = len(xt)
    for ep in range(epochs):
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, 256):
            idx = perm[i : i + 256]
            out = net(xt[idx])
            mu = torch.nn.functional.softplus(out[:, 0])
            b = torch.nn.functional.softplus(out[:, 1]) + 0.05
            loss = (torch.abs(yt[idx] - mu) / b + torch.log(b)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if ep % 25 == 0 or ep == epochs - 1:
            with torch.no_grad():
                mae = float(torch.abs(torch.nn.functional.softplus(net(xt)[:, 0]) - yt).mean())
            print(f"  epoch {ep}: nll {total / n:.3f}  train MAE {mae:.3f} µm", flush=True)
    params = {"mean": mean, "std": std}
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    for k, lin in enumerate(layers):
        params[f"w{k}"] = lin.weight.detach().numpy().T.astype(np.float64)
        params[f"b{k}"] = lin.bias.detach().numpy().astype(np.float64)
    return params


def main(argv: list[str] | None = None) -> int:
    """Simulate, fit and write the coefficient file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-bf", type=int, default=20000, help="brightfield windows")
    ap.add_argument("--n-fl", type=int, default=16000, help="fluorescence windows")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--cache", type=Path, default=None, help="keep/reuse simulated features here (.npz)")
    ap.add_argument("--out", type=Path, default=ROOT / "wsi_deepr" / "models" / "defocus-estimator.npz")
    args = ap.parse_args(argv)
    t0 = time.time()
    data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if args.cache and args.cache.exists():
        with np.load(args.cache) as z:
            data = {m: (z[f"{m}/x"], z[f"{m}/y"], z[f"{m}/ok"]) for m in ("brightfield", "fluorescence")}
    else:
        sources = ds.load_sources()
        for mod, n, off in (("brightfield", args.n_bf, 0), ("fluorescence", args.n_fl, 1)):
            wins, labels = ds.simulate_set(sources, "fit", ds.RECIPES["fit"], n, args.seed + off, mod)
            data[mod] = features_of(wins, labels)
            print(f"{mod}: {len(wins)} windows simulated ({time.time() - t0:.0f} s)", flush=True)
        if args.cache:
            np.savez(args.cache, **{f"{m}/{k}": v for m, d in data.items() for k, v in zip("x y ok".split(), d)})
    arrays: dict[str, np.ndarray] = {}
    for mod, (x, y, ok) in data.items():
        print(f"fitting {mod} on {ok.sum()} textured windows of {len(ok)}", flush=True)
        for k, v in fit_mlp(x[ok], y[ok], seed=args.seed, epochs=args.epochs).items():
            arrays[f"{mod}/{k}"] = v
    meta = {"fit_script": "benchmarks/defocus_fit.py", "seed": args.seed, "n_brightfield": int(args.n_bf),
            "n_fluorescence": int(args.n_fl), "recipe": ds.RECIPES["fit"].__dict__, "window_um": ds.WINDOW_UM}
    arrays["meta"] = np.asarray(json.dumps(meta, default=str))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
