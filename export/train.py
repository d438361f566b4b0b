"""Deep-R training: resumable GAN training on a ``wsi-deepr dataset`` pair dataset.

Usage (from the repository root)::

    python -m export.train --dataset D.zarr --out RUN_DIR [--width 16] [--iterations 2000]
                           [--warmup 200] [--crop 128] [--minutes 60] [--pause-file F] [-v]

One *iteration* is ``g_steps`` (6) generator updates and ``d_steps`` (3)
discriminator updates, each on a fresh batch; the first ``warmup`` iterations
train the generator alone (no adversarial term, no discriminator updates).
Every ``val_every`` (50) iterations the generator is validated on a fixed
subset of the validation split, ``RUN_DIR/last.pt`` is written (everything
needed to continue) and ``RUN_DIR/best.pt`` when the validation BerHu is the
lowest so far.  ``RUN_DIR/log.csv`` gets one row per ``log_every`` iterations
(training terms, weights and weighted contributions) and one per validation.

Running the same command again continues from ``last.pt`` with the stored
configuration (``--iterations`` and ``--minutes`` may be changed); batches are
drawn from a generator seeded by ``(seed, iteration, step)``, so a resumed run
sees the same batches as an uninterrupted one.  SIGTERM/SIGINT save a
checkpoint before exiting.  With ``--pause-file F`` training sleeps between
iterations while ``F`` exists (a shared machine's "quiet, benchmarking" flag).  Checkpoints load with ``torch.load(weights_only=True)``.

With ``ema`` > 0 an exponential moving average of the generator's weights
(decay per generator update) is kept beside them; validation, ``best.pt`` and
the export use the average, which is smoother than the last step's weights.

Loss weights: ``xi`` (BerHu) is fixed; with ``balance`` on, ``nu`` and
``lambda`` are re-set at every validation (geometric mean of the old value and
the one that makes the term's mean since the last validation equal to the
BerHu term's), so the three terms contribute about equally.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .data import NORMALIZATIONS, TorchPairs
from .losses import discriminator_loss, generator_terms
from .bookkeeping import _CsvLog, _rebalance, _train_row, _val_rows, validate
from .checkpoint import (
    _hardware,
    _load_init,
    _load_init_weights,
    _load_weights,
    _save,
    lineage_entry,
    load_checkpoint,
    resolve_device,
)
from .models import Discriminator, Generator, count_parameters

__all__ = ["TrainConfig", "build_generator", "lineage_entry", "load_checkpoint", "main", "resolve_device", "train",
           "validate"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in its checkpoints)."""

    dataset: str
    width: int = 16
    max_width: int | None = None
    levels: int = 4
    d_width: int = 16
    d_depth: int = 5
    normalization: str = "range"
    batch_size: int = 5
    crop: int | None = None
    lr_g: float = 5e-4
    lr_d: float = 1e-6
    g_steps: int = 6
    d_steps: int = 3
    iterations: int = 2000
    warmup: int = 0
    val_every: int = 50
    val_samples: int = 64
    log_every: int = 5
    lam: float = 0.05
    nu: float = 1.0
    xi: float = 1.0
    balance: bool = True
    berhu_fraction: float = 0.1
    gray_prob: float = 0.0
    contrast_jitter: float = 0.0
    contrast_range: tuple[float, float] | None = None
    identity_prob: float = 0.0
    ema: float = 0.0
    focus_weight_um: float = 0.0
    init: str | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    minutes: float | None = None
    pause_file: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From a stored dict (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("contrast_range") is not None:
            kw["contrast_range"] = tuple(kw["contrast_range"])
        return cls(**kw)


def build_generator(cfg: dict, stats: dict) -> Generator:
    """A generator from a checkpoint's ``generator_config`` and statistics."""
    return Generator(**cfg, mean=stats["mean"], std=stats["std"])




@dataclass
class _Run:
    """What the steps of a training run share: its networks, data, weights and counters.

    The counters (``it``, ``best``, ``best_it``, ``g_updates``), the loss
    ``weights``, the balancing sums ``bal`` and ``last_val`` are what a
    checkpoint stores; ``sums``/``counted`` accumulate the training terms
    since the last logged row.
    """

    config: TrainConfig
    path: Path
    device: torch.device
    data: TorchPairs
    val: TorchPairs
    gen: Generator
    disc: Discriminator
    ema: Generator | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    c: float
    meta: dict
    weights: dict[str, float]
    csv_log: _CsvLog
    val_rows: np.ndarray
    start: float
    deadline: float | None
    bal: dict[str, float]
    last_val: dict
    it: int = 0
    best: float = math.inf
    best_it: int = -1
    g_updates: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counted: int = 0

    @property
    def averaged(self) -> Generator:
        """The generator that is validated and saved as ``best.pt`` (the EMA one when kept)."""
        return self.gen if self.ema is None else self.ema


def train(config: TrainConfig, run_dir: str | Path, *, stop: Callable[[], bool] | None = None,
          progress: Callable[[dict], None] | None = None) -> dict:
    """Train (or continue training) into ``run_dir``.

    Parameters
    ----------
    config : TrainConfig
        Used for a new run; a run with ``last.pt`` continues with its stored
        configuration, taking only ``iterations``, ``minutes`` and ``threads``
        from ``config``.
    run_dir : str or Path
        Checkpoints, ``config.json`` and ``log.csv``.
    stop : callable, optional
        Polled after every iteration; ``True`` saves a checkpoint and returns.
    progress : callable, optional
        Called with each logged row (training and validation).

    Returns
    -------
    dict
        ``iteration``, ``best_val_berhu``, ``best_iteration`` and the last validation.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    config, state = _resume_config(config, run)
    r = _setup(config, run, state)
    if state is None:  # a new run is resumable (and shows its initial weights) from the start
        _checkpoint(r)
    r.gen.train()
    r.disc.train()
    while r.it < config.iterations:
        adversarial = r.it >= config.warmup
        _generator_updates(r, adversarial=adversarial)
        if adversarial:
            _discriminator_updates(r)
        r.it += 1
        if config.pause_file and Path(config.pause_file).exists():
            paused = _pause(Path(config.pause_file), stop)
            r.start += paused  # paused time counts neither as training time nor against --minutes
            r.deadline = None if r.deadline is None else r.deadline + paused
        stopping = (stop is not None and stop()) or (r.deadline is not None and time.perf_counter() > r.deadline)
        periodic = r.it % config.val_every == 0  # rebalancing only here, so resumed runs match
        validating = periodic or r.it == config.iterations
        if r.it % config.log_every == 0 or validating or stopping:
            _log_training(r, adversarial=adversarial, progress=progress)
        if validating:
            _validation(r, adversarial=adversarial, periodic=periodic, progress=progress)
        if validating or stopping:
            _checkpoint(r)
        if stopping:
            log.info("stopping at iteration %d (checkpoint saved)", r.it)
            break
    return {"iteration": r.it, "best_val_berhu": r.best, "best_iteration": r.best_it, "validation": r.last_val}


def _resume_config(config: TrainConfig, run: Path) -> tuple[TrainConfig, dict | None]:
    """The configuration to train with and ``run/last.pt`` when there is one.

    Parameters
    ----------
    config : TrainConfig
        The requested configuration.
    run : Path
        The run folder.

    Returns
    -------
    config : TrainConfig
        ``config`` for a new run; for a resumed one the stored configuration
        with ``iterations``, ``minutes``, ``threads``, ``pause_file`` and
        ``device`` taken from ``config``.
    state : dict or None
        The loaded ``last.pt``, or ``None`` for a new run.
    """
    last_path = run / "last.pt"
    state = load_checkpoint(last_path) if last_path.exists() else None
    if state is not None:
        stored = TrainConfig.from_dict(state["config"])
        if Path(config.dataset).resolve() != Path(stored.dataset).resolve():
            log.warning("resuming with the stored dataset %s (not %s)", stored.dataset, config.dataset)
        stored.iterations, stored.minutes = config.iterations, config.minutes
        stored.threads, stored.pause_file = config.threads, config.pause_file
        stored.device = config.device  # where it runs is not part of what the run is
        config = stored
        log.info("resuming %s at iteration %d", run, state["iteration"])
    return config, state


def _setup(config: TrainConfig, run: Path, state: dict | None) -> _Run:
    """Data, networks and optimisers of a run, restored from ``state`` (or ``--init``); writes ``config.json``.

    Parameters
    ----------
    config : TrainConfig
        The run's configuration (from :func:`_resume_config`).
    run : Path
        The run folder.
    state : dict or None
        The checkpoint to continue from.

    Returns
    -------
    _Run
        The run state the training loop works on.
    """
    if config.normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={config.normalization!r}: use one of {NORMALIZATIONS}")
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest convolutions once
    data = TorchPairs(config.dataset, split="train", normalization=config.normalization, crop=config.crop,
                      augment=True)
    val = TorchPairs(config.dataset, split="val", normalization=config.normalization)
    mean, std = data.generator_stats()
    init = _load_init(config.init) if config.init and state is None else None
    if init is not None:  # the initial weights' standardisation travels with them
        mean, std = init["meta"]["generator_stats"]["mean"], init["meta"]["generator_stats"]["std"]
    gen, disc, ema = _networks(config, data.channels, mean, std, device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr_g)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr_d)
    c = data.berhu_threshold(config.berhu_fraction)
    weights = {"lambda": config.lam, "nu": config.nu, "xi": config.xi}
    it, best, best_it, elapsed, g_updates = 0, math.inf, -1, 0.0, 0
    if state is not None:
        _load_weights(state, gen, disc, ema, opt_g, opt_d)
        it, best, best_it = int(state["iteration"]), float(state["best_val_berhu"]), int(state["best_iteration"])
        elapsed, g_updates = float(state["seconds"]), int(state["g_updates"])
        weights = dict(state["weights"])
    elif init is not None:
        _load_init_weights(init, gen, disc, ema)
        log.info("initial weights from %s (iteration %d)", config.init, int(init["iteration"]))
    meta = {**data.card_info(), "berhu_c": c, "hardware": _hardware(device), "generator_config": gen.config(),
            "generator_stats": {"mean": mean, "std": std}, "parameters": count_parameters(gen)}
    if state is not None and "lineage" in state.get("meta", {}):
        meta["lineage"] = state["meta"]["lineage"]
    elif init is not None:  # the runs these weights come from, oldest first (for the model card)
        meta["lineage"] = [*init["meta"].get("lineage", []), lineage_entry(config.init, init)]
    (run / "config.json").write_text(json.dumps({"config": asdict(config), "meta": meta}, indent=2))
    log.info("generator %s: %d parameters; discriminator %d; BerHu c = %.4f; %d train / %d val pairs; on %s",
             gen.widths, count_parameters(gen), count_parameters(disc), c, len(data), len(val), device)
    csv_log = _CsvLog(run / "log.csv", keep_until=it)
    val_rows = _val_rows(len(val), config.val_samples)
    # term sums since the last validation (for balancing; checkpointed so a resumed run matches)
    bal = dict(state["balance_sums"]) if state is not None else {}
    start = time.perf_counter() - elapsed
    deadline = None if config.minutes is None else time.perf_counter() + 60.0 * config.minutes
    last_val: dict = dict(state.get("validation", {})) if state is not None else {}
    return _Run(config=config, path=run, device=device, data=data, val=val, gen=gen, disc=disc, ema=ema,
                opt_g=opt_g, opt_d=opt_d, c=c, meta=meta, weights=weights, csv_log=csv_log, val_rows=val_rows,
                start=start, deadline=deadline, bal=bal, last_val=last_val, it=it, best=best, best_it=best_it,
                g_updates=g_updates)


def _networks(config: TrainConfig, channels: int, mean: list[float], std: list[float],
              device: torch.device) -> tuple[Generator, Discriminator, Generator | None]:
    """Freshly initialised generator, discriminator and (with ``config.ema``) the generator's average.

    Parameters
    ----------
    config : TrainConfig
        Widths, depths, levels and the EMA decay.
    channels : int
        Image channels.
    mean, std : list of float
        The generator's standardisation statistics.
    device : torch.device
        Where the networks live.

    Returns
    -------
    gen : Generator
    disc : Discriminator
    ema : Generator or None
        A frozen copy of ``gen`` to average into, or ``None`` without EMA.
    """
    gen = Generator(channels, width=config.width, max_width=config.max_width, levels=config.levels,
                    mean=mean, std=std)
    disc = Discriminator(channels, width=config.d_width, depth=config.d_depth)
    gen.to(device)
    disc.to(device)
    ema = None
    if config.ema:
        if not 0.0 < config.ema < 1.0:
            raise ValueError(f"ema={config.ema!r}: a decay in (0, 1), e.g. 0.995, or 0 for none")
        ema = copy.deepcopy(gen).requires_grad_(False)
    return gen, disc, ema



def _batch(r: _Run, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of step ``step`` of iteration ``r.it``, on ``r.device``.

    Parameters
    ----------
    r : _Run
        The run.
    step : int
        ``k`` for generator update ``k``, ``100 + k`` for discriminator update ``k``.

    Returns
    -------
    x, y : torch.Tensor
        Input and target, drawn with a generator seeded by ``(seed, iteration, step)``.
    """
    cfg = r.config
    x, y = r.data.batch(np.random.default_rng([cfg.seed, r.it, step]), cfg.batch_size,
                        gray_prob=cfg.gray_prob, contrast_jitter=cfg.contrast_jitter,
                        contrast_range=cfg.contrast_range, identity_prob=cfg.identity_prob,
                        focus_weight_um=cfg.focus_weight_um)
    return x.to(r.device, non_blocking=True), y.to(r.device, non_blocking=True)


def _generator_updates(r: _Run, *, adversarial: bool) -> None:
    """The ``g_steps`` generator updates of one iteration (discriminator frozen).

    Parameters
    ----------
    r : _Run
        The run; its optimiser, EMA, ``g_updates``, log sums and balancing sums advance.
    adversarial : bool
        Include the adversarial term (after the warm-up).
    """
    data, weights = r.data, r.weights
    for p in r.disc.parameters():
        p.requires_grad_(False)
    for k in range(r.config.g_steps):
        x, y = _batch(r, k)
        pred = r.gen(x)
        d_fake = r.disc(data.to_std(pred)) if adversarial else None
        terms = generator_terms(d_fake, data.to_std(pred), data.to_std(y), pred_range=data.to_range(pred),
                                target_range=data.to_range(y), c=r.c)
        loss = weights["lambda"] * terms["adv"] + weights["nu"] * terms["msssim"] + weights["xi"] * terms["berhu"]
        r.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        r.opt_g.step()
        if r.ema is not None:
            _ema_update(r.ema, r.gen, r.config.ema)
        r.g_updates += 1
        for key, v in terms.items():
            r.sums[key] = r.sums.get(key, 0.0) + v.item()
            r.bal[key] = r.bal.get(key, 0.0) + v.item()
        r.bal["n"] = r.bal.get("n", 0.0) + 1.0
        r.sums["g_loss"] = r.sums.get("g_loss", 0.0) + loss.item()
        r.counted += 1


def _discriminator_updates(r: _Run) -> None:
    """The ``d_steps`` discriminator updates of one (adversarial) iteration.

    Parameters
    ----------
    r : _Run
        The run; its discriminator, optimiser and log sums advance.
    """
    d_steps = r.config.d_steps
    for p in r.disc.parameters():
        p.requires_grad_(True)
    for k in range(d_steps):
        x, y = _batch(r, 100 + k)
        with torch.no_grad():
            pred = r.gen(x)
        d_fake, d_real = r.disc(r.data.to_std(pred)), r.disc(r.data.to_std(y))
        loss_d = discriminator_loss(d_fake, d_real)
        r.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        r.opt_d.step()
        r.sums["d_loss"] = r.sums.get("d_loss", 0.0) + loss_d.item() / d_steps
        r.sums["d_real"] = r.sums.get("d_real", 0.0) + d_real.mean().item() / d_steps
        r.sums["d_fake"] = r.sums.get("d_fake", 0.0) + d_fake.mean().item() / d_steps


def _log_training(r: _Run, *, adversarial: bool, progress: Callable[[dict], None] | None) -> None:
    """Write the training row (means since the last row) to ``log.csv``, ``progress`` and the log; reset the sums.

    Parameters
    ----------
    r : _Run
        The run.
    adversarial : bool
        Whether this iteration was past the warm-up (the row's ``phase``).
    progress : callable, optional
        Called with the row.
    """
    row = _train_row(r.it, adversarial, time.perf_counter() - r.start, r.g_updates, r.sums, r.counted,
                     r.config.g_steps, r.weights)
    r.csv_log.write(row)
    if progress is not None:
        progress(row)
    log.info("it %d (%s) %.0fs  adv %.4f  1-msssim %.4f  berhu %.4f  | weighted %.4f %.4f %.4f  d %s",
             r.it, row["phase"], row["seconds"], row.get("adv", 0.0), row.get("msssim", 0.0),
             row.get("berhu", 0.0), row["c_adv"], row["c_msssim"], row["c_berhu"],
             f"{row['d_loss']:.4f}" if "d_loss" in row else "-")
    r.sums, r.counted = {}, 0


def _validation(r: _Run, *, adversarial: bool, periodic: bool, progress: Callable[[dict], None] | None) -> None:
    """Rebalance (at periodic validations), validate, log, and save ``best.pt`` on a new best.

    Parameters
    ----------
    r : _Run
        The run; ``weights``, ``bal``, ``last_val``, ``best`` and ``best_it`` may change.
    adversarial : bool
        Whether this iteration was past the warm-up (``lambda`` is rebalanced only then).
    periodic : bool
        A ``val_every`` validation (not only the final one): the loss weights
        are rebalanced and the balancing sums restart.
    progress : callable, optional
        Called with the validation row.
    """
    if periodic:
        if r.config.balance and r.bal.get("n"):
            _rebalance(r.weights, {k: v / r.bal["n"] for k, v in r.bal.items()}, adversarial=adversarial)
        r.bal = {}
    last_val = validate(r.averaged, r.val, rows=r.val_rows, c=r.c)
    r.last_val = last_val
    vrow = {"iteration": r.it, "kind": "val", "phase": "gan" if adversarial else "warmup",
            "seconds": time.perf_counter() - r.start, "g_updates": r.g_updates, **last_val}
    r.csv_log.write(vrow)
    if progress is not None:
        progress(vrow)
    log.info("validation at %d: berhu %.4f  ssim %.4f (input %.4f)  psnr %.2f (input %.2f)", r.it,
             last_val["val_berhu"], last_val["val_ssim"], last_val["val_ssim_input"],
             last_val["val_psnr"], last_val["val_psnr_input"])
    if last_val["val_berhu"] < r.best:
        r.best, r.best_it = last_val["val_berhu"], r.it
        _save({"config": asdict(r.config), "meta": r.meta, "iteration": r.it, "validation": last_val,
               "seconds": time.perf_counter() - r.start, "g_updates": r.g_updates,
               "generator": r.averaged.state_dict()}, r.path / "best.pt")


def _checkpoint(r: _Run) -> None:
    """Write ``last.pt``: everything needed to continue the run exactly.

    Parameters
    ----------
    r : _Run
        The run.
    """
    _save({"config": asdict(r.config), "meta": r.meta, "iteration": r.it, "seconds": time.perf_counter() - r.start,
           "g_updates": r.g_updates, "weights": r.weights, "balance_sums": r.bal, "validation": r.last_val,
           "best_val_berhu": r.best, "best_iteration": r.best_it,
           "generator": r.gen.state_dict(), "discriminator": r.disc.state_dict(),
           **({"generator_ema": r.ema.state_dict()} if r.ema is not None else {}),
           "opt_g": r.opt_g.state_dict(), "opt_d": r.opt_d.state_dict()}, r.path / "last.pt")



@torch.no_grad()
def _ema_update(ema: Generator, gen: Generator, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * gen`` (parameters; buffers copied)."""
    for pe, p in zip(ema.parameters(), gen.parameters(), strict=True):
        pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), gen.buffers(), strict=True):
        be.copy_(b)



def _pause(flag: Path, stop: Callable[[], bool] | None) -> float:
    """Sleep while ``flag`` exists (someone else needs the CPUs); return the seconds paused."""
    t0 = time.perf_counter()
    log.info("%s exists: pausing", flag)
    while flag.exists() and not (stop is not None and stop()):
        time.sleep(5.0)
    paused = time.perf_counter() - t0
    log.info("resuming after %.0f s", paused)
    return paused



def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="pair dataset (.zarr) from `wsi-deepr dataset`")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.csv); resumes if it has last.pt")
    d = TrainConfig(dataset="")
    for f in fields(TrainConfig):
        if f.name == "dataset":
            continue
        default = getattr(d, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            if f.name == "contrast_range":
                p.add_argument(flag, type=float, nargs=2, default=None, metavar=("LO", "HI"),
                               help="contrast factor range (log-uniform), instead of --contrast-jitter")
                continue
            kind = {"max_width": int, "crop": int, "threads": int, "minutes": float,
                    "pause_file": str, "init": str, "device": str}.get(f.name, type(default))
            p.add_argument(flag, type=kind, default=default, help=f"(default: {default})")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    import signal

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    if values["contrast_range"] is not None:
        values["contrast_range"] = tuple(values["contrast_range"])
    config = TrainConfig(**values)
    flag = {"stop": False}

    def handler(signum: int, frame: object) -> None:
        log.warning("signal %d: finishing the iteration and saving a checkpoint", signum)
        flag["stop"] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = train(config, args.out, stop=lambda: flag["stop"])
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
