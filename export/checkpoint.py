"""Checkpoints of the training stage: saving, loading, resuming, initialising from earlier runs, the device.

``last.pt`` / ``best.pt`` hold the networks, the optimisers and the run's
config and meta; they are written atomically
(:func:`wsi_deepr.writers.atomic.atomic_file`), so a run killed at any time
resumes from its last complete checkpoint.  A checkpoint's training lineage
(:func:`lineage_entry`) goes into the exported model's card.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from wsi_deepr.writers.atomic import atomic_file

from .models import Discriminator, Generator

__all__ = ["lineage_entry", "load_checkpoint", "resolve_device"]

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)



def _save(obj: dict, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (a killed run never leaves half a checkpoint)."""
    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)



def _load_weights(state: dict, gen: Generator, disc: Discriminator, ema: Generator | None,
                  opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer) -> None:
    """Restore networks and optimisers from a run's own ``last.pt`` ``state``.

    Parameters
    ----------
    state : dict
        The checkpoint.
    gen : Generator
        Restored in place.
    disc : Discriminator
        Restored in place.
    ema : Generator or None
        Restored in place from ``generator_ema``, or from the generator's
        weights when the checkpoint has none.
    opt_g, opt_d : torch.optim.Optimizer
        Restored in place.
    """
    gen.load_state_dict(state["generator"])
    if ema is not None:
        ema.load_state_dict(state.get("generator_ema", state["generator"]))
    disc.load_state_dict(state["discriminator"])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])



def _load_init_weights(init: dict, gen: Generator, disc: Discriminator, ema: Generator | None) -> None:
    """Start a new run from another run's checkpoint ``init`` (its averaged generator when it has one).

    Parameters
    ----------
    init : dict
        The ``--init`` checkpoint.
    gen : Generator
        Loaded in place.
    disc : Discriminator
        Loaded in place when ``init`` has a discriminator.
    ema : Generator or None
        Loaded in place.
    """
    gen.load_state_dict(init.get("generator_ema", init["generator"]))
    if ema is not None:
        ema.load_state_dict(init.get("generator_ema", init["generator"]))
    if "discriminator" in init:
        disc.load_state_dict(init["discriminator"])



def lineage_entry(checkpoint: str | Path, state: dict) -> dict:
    """What a model card records of a run its weights came from (``state``: that run's checkpoint)."""
    meta = state.get("meta", {})
    return {"checkpoint": str(checkpoint), "dataset": meta.get("dataset"), "iteration": int(state["iteration"]),
            "seconds": float(state.get("seconds", 0.0)), "hardware": meta.get("hardware"),
            "config": state.get("config", {})}



def _load_init(path: str) -> dict:
    """Initial weights for a new run: a checkpoint, a run folder (its ``best.pt``) or an exported ``.onnx``.

    The generator's configuration must match the new run's; a discriminator is
    taken when the checkpoint has one (``last.pt``).
    """
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return init_from_onnx(p)
    if p.is_dir():
        p = p / "best.pt"
    if not p.is_file():
        raise FileNotFoundError(f"--init {path}: no checkpoint there; pass a .pt file or a run folder with best.pt")
    return load_checkpoint(p)



def init_from_onnx(path: str | Path) -> dict:
    """A checkpoint-shaped ``--init`` from an exported model: its generator weights, standardisation and lineage.

    Fine-tunes a shipped model whose training checkpoints are gone: the
    export stores every generator tensor under its ``state_dict`` name
    (:mod:`export.onnx_export`), and its ``training`` card entry the run it
    came from.  No discriminator: it starts afresh.

    Raises
    ------
    ValueError
        When the file is not a Deep-R generator exported by this project.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    if "generator" not in meta or "training" not in meta:
        raise ValueError(f"--init {path}: not a Deep-R generator exported by export.onnx_export (no 'generator' "
                         "and 'training' in its metadata); pass a checkpoint or a run folder")
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    config = json.loads(meta["generator"])
    gen = Generator(int(config["channels"]), width=int(config["width"]), levels=int(config["levels"]),
                    max_width=config.get("max_width"), residual=bool(config.get("residual", True)))
    missing = [k for k in gen.state_dict() if k not in arrays]
    if missing:
        raise ValueError(f"--init {path}: the ONNX lacks generator tensors {missing[:4]} (exported by another "
                         "version?); pass a checkpoint instead")
    state = {k: torch.from_numpy(np.array(arrays[k])) for k in gen.state_dict()}
    training = json.loads(meta["training"])
    stats = {"mean": [float(v) for v in state["mean"].reshape(-1)], "std": [float(v) for v in state["std"].reshape(-1)]}
    return {"generator": state, "iteration": int(training["iterations"]), "seconds": float(training.get("seconds", 0)),
            "config": training.get("config", {}),
            "meta": {"generator_stats": stats, "dataset": training.get("dataset"), "hardware": training.get("hardware"),
                     "lineage": list(training.get("lineage", []))}}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when there is a GPU, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device={name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: torch {torch.__version__} sees no CUDA GPU; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r}: use auto, cpu, cuda or cuda:N")
    return device



def _hardware(device: torch.device) -> str:
    import platform

    where = (f"{torch.cuda.get_device_name(device)} GPU" if device.type == "cuda"
             else f"{torch.get_num_threads()} CPU threads, no GPU")
    return f"{where} ({os.cpu_count()} CPU cores, {platform.machine()}), torch {torch.__version__}"
