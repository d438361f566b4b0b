"""Export a trained generator to ONNX with its model card, and check parity.

Usage (from the repository root)::

    python -m export.onnx_export RUN_DIR --out deepr-brightfield.onnx \\
        [--checkpoint best|last|PATH] [--card version=1.0 --card description=...] [--default]

Steps: load the checkpoint (``weights_only=True``); measure the receptive
field (``halo``); ``torch.onnx.export`` with dynamic batch, height and width
(opset 18); write the model card of the model contract (README, "Model
contract") into ``metadata_props``; check that ONNX Runtime and torch agree
within ``1e-4`` on random tiles, an odd-sized tile and real tiles of the
dataset (otherwise the file is deleted and the export fails); validate the
card with :func:`wsi_deepr.inference.card.load_model_info`; record the file's sha256
(``OUT.sha256``) and an export report (``OUT.export.json``).

Halo: the radius ``r`` of the smallest centred square holding >= 99.9 % of
``sum |d(out - in)/d in|`` of the centre output pixel (the network's
correction, averaged over several real or textured inputs).  The identity path
is left out because it would put most of the mass on the centre pixel and
hide the context the correction reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from wsi_deepr.inference.session import create_session
from wsi_deepr.writers.atomic import atomic_file, atomic_write_text

from .models import Generator, count_parameters
from .train import build_generator, lineage_entry, load_checkpoint

if TYPE_CHECKING:
    import onnx

__all__ = ["ExportError", "export_onnx", "main", "measure_halo", "parity_check"]

log = logging.getLogger(__name__)

OPSET = 18
PARITY_TOL = 1e-4
MAX_BYTES = 10 * 2**20


class ExportError(RuntimeError):
    """The export failed its checks (parity, card, size)."""


def _radius(mass: np.ndarray, fraction: float) -> int:
    """Smallest ``r`` whose centred ``(2r+1)**2`` square holds ``fraction`` of ``mass``."""
    cy, cx = mass.shape[0] // 2, mass.shape[1] // 2
    total = float(mass.sum())
    if total <= 0:
        return 0
    for r in range(min(cy, cx) + 1):
        if mass[cy - r : cy + r + 1, cx - r : cx + r + 1].sum() >= fraction * total:
            return r
    return min(cy, cx)


def measure_halo(gen: Generator, samples: list[np.ndarray], *, size: int = 320,
                 fractions: tuple[float, ...] = (0.99, 0.999)) -> dict:
    """Measured receptive field of ``gen`` (see the module docstring).

    Parameters
    ----------
    gen : Generator
        The trained generator.
    samples : list of numpy.ndarray
        ``(C, H, W)`` model-space images; reflect-padded or cropped to ``size``.
    size : int
        Side of the probe images.

    Returns
    -------
    dict
        ``halo`` (the 99.9 % radius of the correction), ``radius_<f>`` for each
        fraction, for the correction and for the whole output, and ``probe``.
    """
    gen.eval()
    total = np.zeros((size, size))
    corr = np.zeros((size, size))
    c = size // 2
    for img in samples:
        h, w = img.shape[1:]
        ph, pw = max(0, size - h), max(0, size - w)
        padded = np.pad(img, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")
        y0, x0 = (padded.shape[1] - size) // 2, (padded.shape[2] - size) // 2
        x = torch.from_numpy(np.ascontiguousarray(padded[:, y0 : y0 + size, x0 : x0 + size]))[None].float()
        x.requires_grad_(True)
        out = gen(x)
        (g_out,) = torch.autograd.grad(out[0, :, c, c].sum(), x, retain_graph=True)
        (g_corr,) = torch.autograd.grad((out - x)[0, :, c, c].sum(), x)
        total += g_out[0].abs().sum(0).numpy()
        corr += g_corr[0].abs().sum(0).numpy()
    result = {"probe": f"{len(samples)} images of {size}x{size}, centre pixel"}
    for f in fractions:
        result[f"radius_{f:g}_correction"] = _radius(corr, f)
        result[f"radius_{f:g}_output"] = _radius(total, f)
    result["halo"] = result["radius_0.999_correction"]
    if result["halo"] >= c - 1:
        log.warning("the receptive field reaches the probe's edge (%d px): the halo may be underestimated", c)
    return result


def parity_check(path: Path, gen: Generator, tiles: list[np.ndarray], *, tol: float = PARITY_TOL) -> dict:
    """Max |ONNX Runtime - torch| over ``tiles`` (each ``(N, C, H, W)``); raise above ``tol``."""
    sess = create_session(path, device="cpu", threads=2)
    name = sess.get_inputs()[0].name
    worst, shapes = 0.0, []
    gen.eval()
    with torch.no_grad():
        for t in tiles:
            t = np.ascontiguousarray(t, dtype=np.float32)
            ref = gen(torch.from_numpy(t)).numpy()
            got = sess.run(None, {name: t})[0]
            if got.shape != ref.shape:
                raise ExportError(f"ONNX output shape {got.shape} differs from torch's {ref.shape} for input {t.shape}")
            worst = max(worst, float(np.abs(got - ref).max()))
            shapes.append(list(t.shape))
    if not worst <= tol:
        raise ExportError(f"parity check failed: max |onnxruntime - torch| = {worst:.3g} > {tol:g}")
    return {"max_abs_diff": worst, "tolerance": tol, "shapes": shapes}


def _to_onnx(gen: Generator, path: Path, *, exporter: str) -> None:
    x = torch.rand(1, gen.channels, 64, 64)
    gen.eval()
    if exporter == "dynamo":
        dims = (torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("height", min=2, max=65536),
                torch.export.Dim("width", min=2, max=65536))
        with warnings.catch_warnings():  # torch's own pytree deprecation, raised inside torch.export
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            prog = torch.onnx.export(gen, (x,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                     output_names=["output"], external_data=False, verbose=False,
                                     dynamic_shapes={"x": {0: dims[0], 2: dims[1], 3: dims[2]}})
        prog.save(str(path), external_data=False)
    elif exporter == "legacy":
        torch.onnx.export(gen, (x,), str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                                                 "output": {0: "batch", 2: "height", 3: "width"}})
    else:
        raise ValueError(f"exporter={exporter!r}: use 'dynamo' or 'legacy'")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _real_tiles(dataset: str | None, normalization: str, k: int = 4) -> list[np.ndarray]:
    if not dataset or not Path(dataset).exists():
        return []
    from .data import TorchPairs

    val = TorchPairs(dataset, split="val", normalization=normalization, preload=False)
    rows = np.unique(np.linspace(0, len(val) - 1, min(k, len(val))).round().astype(int))
    return [val.sample(int(i))[0] for i in rows]


def _lineage(init: str | None, depth: int = 0) -> list[dict]:
    """The runs a run's initial weights came from (oldest first), read from their checkpoints if present."""
    if not init or depth > 20:
        return []
    p = Path(init)
    p = p / "best.pt" if p.is_dir() else p
    if not p.is_file():
        log.warning("initial checkpoint %s is gone: the model card lists it without its details", p)
        return [{"checkpoint": str(init)}]
    state = load_checkpoint(p)
    earlier = state.get("meta", {}).get("lineage") or _lineage(state.get("config", {}).get("init"), depth + 1)
    return [*earlier, lineage_entry(init, state)]


def export_onnx(checkpoint: str | Path, out: str | Path, *, card: dict | None = None, default: bool = False,
                exporter: str = "dynamo", halo: int | None = None, overwrite: bool = False) -> dict:
    """Export the generator of ``checkpoint`` to ``out`` with its card; return the export report.

    Parameters
    ----------
    checkpoint : str or Path
        A ``best.pt``/``last.pt`` from :mod:`export.train`.
    out : str or Path
        The ``.onnx`` file to write.
    card : dict, optional
        Card values overriding the ones derived from the run (``version``,
        ``description``, ``name``, extra keys).
    default : bool
        Mark it the default model of its modality.
    exporter : {"dynamo", "legacy"}
        ``torch.onnx.export`` path (``dynamo`` needs ``onnxscript``).
    halo : int, optional
        Override the measured halo (recorded as such).
    overwrite : bool
        Replace ``out``.

    Raises
    ------
    ExportError
        Parity above 1e-4, an invalid card, or a model over 10 MB.
    """
    import onnx

    from wsi_deepr.inference.card import load_model_info

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass overwrite=True (--overwrite) to replace it")
    ckpt_path = Path(checkpoint)
    state = load_checkpoint(ckpt_path)
    meta = state["meta"]
    gen = build_generator(meta["generator_config"], meta["generator_stats"])
    gen.load_state_dict(state.get("generator_ema", state["generator"]))  # the averaged weights of --ema runs
    gen.eval()
    real = _real_tiles(meta.get("dataset"), state["config"].get("normalization", "range"))
    rng = np.random.default_rng(0)
    probes = real or [rng.random((gen.channels, 256, 256), dtype=np.float32) for _ in range(2)]
    measured = measure_halo(gen, probes)
    card_halo = int(halo) if halo is not None else int(measured["halo"])
    props = _card_props(state, gen, ckpt_path, name=out.name.removesuffix(".onnx"), halo=card_halo,
                        measured={**measured, "override": halo}, default=default, card=card)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = _onnx_model(gen, props, exporter=exporter, scratch=out.parent)
    onnx.checker.check_model(model)
    tiles = [rng.random((2, gen.channels, 256, 256), dtype=np.float32),
             rng.random((1, gen.channels, 200, 264), dtype=np.float32)]
    if real:
        tiles.append(np.stack(real))
    with atomic_file(out, "wb") as fh:  # renamed onto ``out`` only when every check below passes
        onnx.save(model, fh)
        fh.flush()
        staged = Path(fh.name)
        parity = parity_check(staged, gen, tiles)
        size = staged.stat().st_size
        if size > MAX_BYTES:
            raise ExportError(f"{out.name}: {size / 2**20:.1f} MB exceeds the 10 MB package limit; lower --width")
    info = load_model_info(out)  # validates the card as wsi-deepr reads it
    digest = _sha256(out)
    atomic_write_text(Path(str(out) + ".sha256"), f"{digest}  {out.name}\n")
    report = {"model": str(out), "sha256": digest, "bytes": size, "opset": OPSET, "exporter": exporter,
              "parity": parity, "halo": measured, "card": info.card.as_dict(),
              "parameters": count_parameters(gen), "checkpoint": str(ckpt_path), "iteration": state["iteration"]}
    atomic_write_text(Path(str(out) + ".export.json"), json.dumps(report, indent=2))
    log.info("exported %s (%.2f MB, sha256 %s), halo %d px, parity %.2g", out, size / 2**20, digest[:12],
             card_halo, parity["max_abs_diff"])
    return report


def _card_props(state: dict, gen: Generator, ckpt_path: Path, *, name: str, halo: int, measured: dict,
                default: bool, card: dict | None) -> dict[str, str]:
    """The model card (``metadata_props``) of the generator of checkpoint ``state``.

    Parameters
    ----------
    state : dict
        The checkpoint (its ``meta``, ``config``, ``iteration`` and ``validation``).
    gen : Generator
        The generator being exported.
    ckpt_path : Path
        The checkpoint's file (its sha256 goes into the card).
    name : str
        The card's default ``name``.
    halo : int
        The card's ``halo`` (measured or overridden).
    measured : dict
        The halo measurement, with its ``override``.
    default : bool
        Mark it the default model of its modality.
    card : dict, optional
        Values overriding the derived ones.

    Returns
    -------
    dict of str to str
        Card keys and values, in the order they are written.
    """
    meta, config = state["meta"], state["config"]
    props = {
        "modality": meta["modality"], "channels": str(meta["channels"]),
        "mpp": "unknown" if meta.get("mpp") is None else f"{meta['mpp']:g}",
        "defocus_range_um": json.dumps(meta["defocus_range_um"]), "normalization": meta["normalization"],
        "halo": str(halo), "version": "0.1.0",
        # the training pixel sizes: scale-aware inference (wsi_deepr.tiling.scale) compares the slide's with these
        **({"mpp_range": json.dumps(meta["mpp_range"])} if meta.get("mpp_range") else {}),
        "description": (f"Deep-R residual U-Net (width {gen.width}, {count_parameters(gen)} parameters), "
                        f"{state['iteration']} training iterations"),
        "name": name,
        "training": json.dumps({"iterations": state["iteration"], "seconds": state.get("seconds"),
                                "generator_updates": state.get("g_updates"), "hardware": meta.get("hardware"),
                                "config": config,
                                "dataset": meta.get("dataset"), "sources": meta.get("sources"),
                                "mpp_range": meta.get("mpp_range"), "validation": state.get("validation", {}),
                                "lineage": meta.get("lineage") or _lineage(config.get("init"))}),
        "halo_measurement": json.dumps(measured),
        "checkpoint_sha256": _sha256(ckpt_path),
        "generator": json.dumps(meta["generator_config"]),
    }
    if default:
        props["default"] = "true"
    props.update({k: str(v) for k, v in (card or {}).items()})
    return props


def _onnx_model(gen: Generator, props: dict[str, str], *, exporter: str, scratch: Path) -> onnx.ModelProto:
    """``gen`` as an ONNX model with named dynamic dimensions and ``props`` as its ``metadata_props``.

    Parameters
    ----------
    gen : Generator
        The generator.
    props : dict of str to str
        The model card.
    exporter : {"dynamo", "legacy"}
        ``torch.onnx.export`` path.
    scratch : Path
        Folder for the intermediate file (removed).

    Returns
    -------
    onnx.ModelProto
        The model, not yet checked or saved.
    """
    import onnx

    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        raw = Path(tmp) / "raw.onnx"
        _to_onnx(gen, raw, exporter=exporter)
        model = onnx.load(str(raw))
    for value in (model.graph.input[0], model.graph.output[0]):  # readable dynamic dims
        dims = value.type.tensor_type.shape.dim
        for i, label in ((0, "batch"), (2, "height"), (3, "width")):
            dims[i].Clear()
            dims[i].dim_param = label
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model


def _checkpoint_path(run_dir: Path, which: str) -> Path:
    if which in ("best", "last"):
        path = run_dir / f"{which}.pt"
    else:
        path = Path(which)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint (train first: python -m export.train ... --out {run_dir})")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m export.onnx_export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="training run folder")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path (default: best)")
    p.add_argument("--card", action="append", default=[], metavar="KEY=VALUE",
                   help="card value (version, description, name, or an extra key); repeatable")
    p.add_argument("--default", action="store_true", help="mark it the default model of its modality")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo")
    p.add_argument("--halo", type=int, default=None, help="override the measured halo (px)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # "torchvision is not installed. Skipping torchvision::nms" and the like
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    card = {}
    for item in args.card:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--card {item!r}: write KEY=VALUE")
        card[key.strip()] = value
    report = export_onnx(_checkpoint_path(args.run_dir, args.checkpoint), args.out, card=card,
                         default=args.default, exporter=args.exporter, halo=args.halo, overwrite=args.overwrite)
    print(json.dumps({k: report[k] for k in ("model", "sha256", "bytes", "parity")} | {"halo": report["card"]["halo"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
