"""int8 variants of a model: ONNX Runtime static quantization, its speed and its quality loss.

The issue allows int8/fp16 variants "only with their measured quality loss".
This measures them; none is shipped (see ``export/README.md``).  For each
variant the float model is quantized with ``onnxruntime.quantization``
(QDQ format, per-channel int8 weights, uint8 activations, calibrated on
``--calibration`` input patches of the pair dataset's *training* split), then:

* ``s/MP``: one 512² window per call, two single-threaded sessions running at
  once, as the pipeline runs on this 2-core machine (the float model is timed
  the same way in the same run);
* the issue's quality table on the validation split (``export.evaluate``):
  mean SSIM gain for |z| >= 3 µm and "above RL with the true PSF in every bin";
* the real smear focal series: each plane's SSIM change with its 95 % block
  bootstrap interval.

Variants (``--variants``):

* ``conv``: only the convolutions, MinMax calibration;
* ``conv-ends``: only the convolutions, percentile calibration (99.99), the
  first and the last two convolutions left in float;
* ``all-ends``: every quantizable operator (activations stay int8 between
  layers), percentile calibration, first and last two convolutions in float.

Usage (from the repository root)::

    python benchmarks/quantization.py --dataset PAIRS.zarr [--model deepr-brightfield]
        [--smear ../shared/data/stacks/smear-brightfield] [--max-samples 200] [--json out.json]

Needs ``onnx`` (the ``train`` extra).  Creates ``/tmp/wd/QUIET`` while timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUIET = Path("/tmp/wd/QUIET")
SMEAR = ROOT / ".." / "shared" / "data" / "stacks" / "smear-brightfield"
VARIANTS = {
    "conv": {"ops": ["Conv"], "method": "MinMax", "float_ends": False},
    "conv-ends": {"ops": ["Conv"], "method": "Percentile", "float_ends": True},
    "all-ends": {"ops": ["Conv", "LeakyRelu", "Concat", "Add", "Resize", "AveragePool", "Mul"],
                 "method": "Percentile", "float_ends": True},
}


def calibration_patches(dataset: Path, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` input patches of the training split, as the model takes them (``1 x C x H x W``)."""
    from wsi_deepr.data.dataset import PairDataset

    ds = PairDataset(dataset, split="train", normalize=False, layout="HWC")
    picks = np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False)
    return [np.ascontiguousarray(ds[int(i)]["input"].transpose(2, 0, 1)[None], dtype=np.float32) for i in picks]


def quantize(src: Path, out: Path, patches: list[np.ndarray], *, ops: list[str], method: str,
             float_ends: bool) -> None:
    """Static QDQ quantization of ``src`` into ``out`` (the model card metadata is kept)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    name = graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: p} for p in patches])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                    calibrate_method=getattr(CalibrationMethod, method),
                    nodes_to_exclude=[convs[0], *convs[-2:]] if float_ends else None,
                    extra_options={"CalibPercentile": 99.99})
    pre.unlink()


def seconds_per_mp(path: Path, channels: int, *, tile: int = 512, workers: int = 2, repeats: int = 4) -> float:
    """Wall seconds per megapixel, ``workers`` single-threaded sessions running windows at once."""
    from wsi_deepr.inference.session import create_session

    sess = create_session(path, device="cpu", threads=1)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, channels, tile, tile), dtype=np.float32)
    sess.run(None, {name: x})

    def work() -> None:
        for _ in range(repeats):
            sess.run(None, {name: x})

    threads = [threading.Thread(target=work) for _ in range(workers)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return (time.perf_counter() - t) / (workers * repeats * tile * tile / 1e6)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from export.evaluate import Refocuser, evaluate_pairs, evaluate_stack
    from wsi_deepr.readers.slide import Modality
    from wsi_deepr.inference.registry import resolve_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deepr-brightfield")
    p.add_argument("--dataset", type=Path, required=True, help="pair dataset (calibration: train; quality: val)")
    p.add_argument("--smear", type=Path, default=SMEAR)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--calibration", type=int, default=32, help="training patches for calibration")
    p.add_argument("--max-samples", type=int, default=200, help="validation pairs scored")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    info = resolve_model(args.model, modality=Modality.BRIGHTFIELD)
    patches = calibration_patches(args.dataset, args.calibration)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"float": info.path}
        for v in args.variants:
            models[v] = Path(tmp) / f"{v}.onnx"
            quantize(info.path, models[v], patches, **VARIANTS[v])
        while QUIET.exists():
            time.sleep(5)
        QUIET.parent.mkdir(parents=True, exist_ok=True)
        QUIET.touch()
        time.sleep(10)  # let paused jobs finish their iteration
        try:
            speed = {k: seconds_per_mp(m, info.card.channels) for k, m in models.items()}
        finally:
            QUIET.unlink(missing_ok=True)
        for k, m in models.items():
            model = Refocuser(m, threads=2)
            pairs = evaluate_pairs(model, args.dataset, split="val", max_samples=args.max_samples)
            row = {"variant": k, "s_per_mp": round(speed[k], 3), "speedup": round(speed["float"] / speed[k], 2),
                   "gain_abs_z_ge_3": pairs["gain_abs_z_ge_3"], "beats_rl_everywhere": pairs["beats_rl_everywhere"],
                   "pairs": pairs["samples"]}
            if args.smear.exists():
                st = evaluate_stack(model, args.smear)
                near = {r["plane"]: r for r in st["rows"] if 1 <= abs(r["plane"]) <= 5}
                row |= {"smear_mean_change": st["mean_change_1_to_5"],
                        "smear_improves_all": st["improves_all_1_to_5"],
                        "smear_significantly_worse": sorted(p for p, r in near.items() if r["change_ci95"][1] < 0),
                        "smear_change": {p: [round(r["ssim_output"] - r["ssim_input"], 4),
                                             *[round(c, 4) for c in r["change_ci95"]]] for p, r in near.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| variant | s/MP (2 x 1 thread) | speed-up | SSIM gain, |z| >= 3 µm | above RL everywhere | "
          "smear: mean change ±1…±5 | smear planes significantly worse |")
    print("|---|---:|---:|---:|---|---:|---|")
    for r in rows:
        worse = ", ".join(f"{p:+d}" for p in r.get("smear_significantly_worse", [])) or "none"
        mean, gain = r.get("smear_mean_change"), r["gain_abs_z_ge_3"]  # None: no such pairs or no stack
        print(f"| {r['variant']} | {r['s_per_mp']:.3f} | {r['speedup']:.2f} | {'–' if gain is None else f'{gain:+.3f}'} | "
              f"{r['beats_rl_everywhere']} | {'–' if mean is None else f'{mean:+.4f}'} | {worse} |")
    if args.json:
        args.json.write_text(json.dumps({"model": info.name, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
