"""Fit the defocus estimator's regressors (reproducible, seeded; torch at fit time only).

Simulates windows from the *fit* split of ``benchmarks/defocus_sim.py`` in two
halves (recipe ``fit``: pixel 0.2-1.0 µm/px, NA 0.4-0.95, spherical ±0.1 waves,
|z| 0-7 µm with 30 % within 0.5 µm, noise, JPEG, stain/gain jitter; recipe
``fit_sa15``: the same with spherical ±0.15 waves), stores their canonical grey
windows in ``--cache``, computes the features of :mod:`wsi_deepr.focus.features`
with the true NA, and fits per modality an ensemble of three 19-64-64-2 ReLU
perceptrons (seeds 12, 112, 212) with a Laplace likelihood (median ``|z|`` and
its scale), windows within 0.5 µm of focus weighted ``NEAR_WEIGHT``.  Writes ``wsi_deepr/models/defocus-estimator.npz``.

Usage::

    # simulate both modalities in parallel (~10 min each on a shared core), then fit (~3 min)
    python benchmarks/defocus_fit.py --modality brightfield --simulate-only &
    python benchmarks/defocus_fit.py --modality fluorescence --simulate-only
    python benchmarks/defocus_fit.py
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


NEAR_WEIGHT = 4.0  # weight of windows within 0.5 µm of focus in the fit


def PARTS(seed: int) -> tuple[tuple[str, int], ...]:  # noqa: N802 - a constant table
    """The simulated halves of the fit set: (recipe, seed)."""
    return (("fit", seed), ("fit_sa15", seed + 1))
SIDE = 126  # canonical windows are cropped to this square (64 µm at 0.5 µm/px, less rounding)


def canonical_of(wins: list[np.ndarray], labels: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Canonical grey windows ``(N, SIDE, SIDE)`` float32 and each window's grey-level quantum."""
    from wsi_deepr.focus.features import quantum, to_canonical_gray

    grays, steps = [], []
    for w, lab in zip(wins, labels):
        g = to_canonical_gray(w[None], mpp=lab["mpp"])[0]
        y0, x0 = (g.shape[0] - SIDE) // 2, (g.shape[1] - SIDE) // 2
        grays.append(g[y0 : y0 + SIDE, x0 : x0 + SIDE])
        steps.append(quantum(w.dtype))
    return np.stack(grays).astype(np.float32), np.asarray(steps)


def features_of(gray: np.ndarray, steps: np.ndarray, mpp: np.ndarray, na: np.ndarray, modality: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Features and the validity mask (texture test) of canonical windows."""
    from wsi_deepr.focus.estimate import MIN_CONTRAST_BF, MIN_OD_RANGE_BF, MIN_SNR
    from wsi_deepr.focus.features import band_features, texture_snr

    feats, ok = [], []
    for i in range(0, len(gray), 512):
        g = gray[i : i + 512].astype(np.float32)
        snr, con, odr = np.stack([np.concatenate(t) for t in zip(*[texture_snr(g[k : k + 1], step=steps[i + k])
                                                                  for k in range(len(g))])])
        valid = snr >= MIN_SNR
        if modality == "brightfield":
            valid &= (con >= MIN_CONTRAST_BF) & (odr >= MIN_OD_RANGE_BF)
        feats.append(np.concatenate([band_features(g[k : k + 1], mpp=float(mpp[i + k]), na=float(na[i + k]))
                                     for k in range(len(g))]))
        ok.append(valid)
    return np.concatenate(feats), np.concatenate(ok)


def fit_mlp(x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int = 100, hidden: int = 64,
            near_weight: float = NEAR_WEIGHT) -> dict:
    """Fit the perceptron; returns numpy parameters in the layout of ``estimate._mlp``.

    Windows within 0.5 µm of focus weigh ``near_weight`` times the others: a
    prior that most of a slide is in focus, which pulls ambiguous (noisy,
    coarse) windows towards "in focus".
    """
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    wt = torch.tensor(np.where(y < 0.5, near_weight, 1.0), dtype=torch.float32)
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
            loss = ((torch.abs(yt[idx] - mu) / b + torch.log(b)) * wt[idx]).sum() / wt[idx].sum()
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


def simulate_cache(path: Path, part: str, recipe: str, n: int, seed: int, modality: str) -> None:
    """Simulate ``n`` windows and store their canonical grey pixels and labels in ``path`` (.npz)."""
    sources = ds.load_sources()
    wins, labels = ds.simulate_set(sources, part, ds.RECIPES[recipe], n, seed, modality)
    gray, steps = canonical_of(wins, labels)
    np.savez(path, gray=gray.astype(np.float16), steps=steps,
             z=np.array([lab["z"] for lab in labels]), na=np.array([lab["na"] for lab in labels]),
             mpp=np.array([lab["mpp"] for lab in labels]), source=np.array([lab["source"] for lab in labels]))


def main(argv: list[str] | None = None) -> int:
    """Simulate (or reuse the cached) windows, fit and write the coefficient file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-bf", type=int, default=16000, help="brightfield windows")
    ap.add_argument("--n-fl", type=int, default=12000, help="fluorescence windows")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--members", type=int, default=3, help="ensemble size (seeds seed, seed+100, ...)")
    ap.add_argument("--modality", choices=("both", "brightfield", "fluorescence"), default="both",
                    help="simulate only this modality into the cache (to run two processes)")
    ap.add_argument("--simulate-only", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/defocus-fit-cache"),
                    help="folder keeping the simulated canonical windows (reused when present)")
    ap.add_argument("--out", type=Path, default=ROOT / "wsi_deepr" / "models" / "defocus-estimator.npz")
    args = ap.parse_args(argv)
    t0 = time.time()
    args.cache.mkdir(parents=True, exist_ok=True)
    mods = ("brightfield", "fluorescence") if args.modality == "both" else (args.modality,)
    for recipe, seed in PARTS(args.seed):
        for mod, n, off in (("brightfield", args.n_bf, 0), ("fluorescence", args.n_fl, 1)):
            path = args.cache / f"fit-{mod}-{n}-{seed}.npz"
            if mod in mods and not path.exists():
                simulate_cache(path, "fit", recipe, n, seed + off, mod)
                print(f"{mod} ({recipe}): {n} windows simulated ({time.time() - t0:.0f} s)", flush=True)
    if args.simulate_only:
        return 0
    arrays: dict[str, np.ndarray] = {}
    for mod, n in (("brightfield", args.n_bf), ("fluorescence", args.n_fl)):
        xs, oks, ys = [], [], []
        for _, seed in PARTS(args.seed):
            with np.load(args.cache / f"fit-{mod}-{n}-{seed}.npz") as c:
                x, ok = features_of(c["gray"], c["steps"], c["mpp"], c["na"], mod)
                xs.append(x), oks.append(ok), ys.append(np.abs(c["z"]))
        x, ok, y = np.concatenate(xs), np.concatenate(oks), np.concatenate(ys)
        print(f"fitting {mod} on {ok.sum()} textured windows of {len(ok)}", flush=True)
        for member in range(args.members):
            params = fit_mlp(x[ok], y[ok], seed=args.seed + 100 * member, epochs=args.epochs, hidden=args.hidden)
            for k, v in params.items():
                arrays[f"{mod}/{member}/{k}"] = v
    meta = {"fit_script": "benchmarks/defocus_fit.py", "seed": args.seed, "n_brightfield": 2 * int(args.n_bf),
            "n_fluorescence": 2 * int(args.n_fl), "window_um": ds.WINDOW_UM, "hidden": args.hidden,
            "epochs": args.epochs, "members": args.members, "near_weight": NEAR_WEIGHT,
            "recipes": {r: ds.RECIPES[r].__dict__ for r, _ in PARTS(args.seed)}}
    arrays["meta"] = np.asarray(json.dumps(meta, default=str))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
