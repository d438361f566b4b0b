"""What the data-consistency fit costs end to end: the default brightfield card with and without it.

CMU-1-Small-Region is defocused everywhere by ``--z`` µm (incoherent, NA
0.75, 0.5 µm/px: :func:`wsi_deepr.optics.defocus`) and written as a TIFF
slide, so the defocus map sends every window with tissue to the network.  It
is refocused by :func:`wsi_deepr.refocus` with default settings by the
shipped ``deepr-brightfield`` and by a copy of it whose card lacks
``consistency_max_step`` (the network's output unfitted), alternately,
``--repeats`` times each (threads scheduler, all cores).  Prints the fastest
wall-clock seconds per megapixel of each and their ratio, measured in the
same run.  Needs the ``onnx`` package (the ``train`` extra) to write the copy.

Usage (from the repository root)::

    python benchmarks/consistency_cost.py [--z 3] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def _without_fit(src: Path, dst: Path) -> Path:
    """A copy of the model ``src`` whose card has no ``consistency_max_step``."""
    import onnx

    model = onnx.load(str(src))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != "consistency_max_step"]
    del model.metadata_props[:]
    for key, value in keep:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return dst


def defocused_slide(z_um: float, folder: Path) -> tuple[Path, float]:
    """CMU-1-Small-Region defocused everywhere by ``z_um`` (NA 0.75, 0.5 µm/px), as a TIFF slide in ``folder``;
    its path and megapixels."""
    import tifffile

    from wsi_deepr import open_slide
    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, OpticalSetting, defocus

    src = open_slide(SLIDE)
    pixels = src.read_region(0, 0, 0, *src.shape[:2]).astype(np.float64) / 255
    setting = OpticalSetting(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5)
    blurred = np.clip(np.rint(defocus(pixels, setting, z_um) * 255), 0, 255).astype(np.uint8)
    slide = folder / "defocused.tif"
    tifffile.imwrite(slide, blurred, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return slide, blurred.shape[0] * blurred.shape[1] / 1e6


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--z", type=float, default=3.0, help="defocus of the whole slide (µm)")
    p.add_argument("--repeats", type=int, default=2, help="runs per card; the fastest counts")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from wsi_deepr import refocus
    from wsi_deepr.inference.registry import resolve_model
    from wsi_deepr.readers.slide import Modality

    shipped = resolve_model("deepr-brightfield", modality=Modality.BRIGHTFIELD)
    if shipped.card.consistency_max_step is None:
        raise SystemExit(f"{shipped.path}: its card has no consistency_max_step; nothing to compare")
    best = {"fitted": float("inf"), "unfitted": float("inf")}
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        slide, mp = defocused_slide(args.z, Path(tmp))
        models = {"fitted": shipped.path, "unfitted": _without_fit(shipped.path, Path(tmp) / "unfitted.onnx")}
        for _ in range(args.repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                result = refocus(slide, Path(tmp) / f"{name}.ome.tif", model=model, overwrite=True, resume=False,
                                 scheduler="threads", compression="zlib")
                best[name] = min(best[name], time.perf_counter() - t0)
                focus = result.provenance.get("focus") or {}
                records[name] = {"refocused_windows": focus.get("refocused_windows"), "windows": focus.get("windows")}
    report = {"slide": SLIDE.name, "z_um": args.z, "megapixels": round(mp, 2),
              **{name: {"seconds": round(best[name], 2), "s_per_mp": round(best[name] / mp, 3), **records[name]}
                 for name in best},
              "fitted_over_unfitted": round(best["fitted"] / best["unfitted"], 3)}
    print(f"{SLIDE.name} defocused by {args.z:g} µm ({mp:.2f} MP; {records['fitted']['refocused_windows']} of "
          f"{records['fitted']['windows']} windows refocused): fitted {report['fitted']['s_per_mp']:.3f} s/MP, "
          f"unfitted {report['unfitted']['s_per_mp']:.3f} s/MP, ratio {report['fitted_over_unfitted']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
