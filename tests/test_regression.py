"""Refocusing every shared slide with fixed test models gives the recorded pixels and provenance.

The reference (``tests/data/refocus_reference.json``) was recorded from the
pipeline before the architecture refactor (issue 11).  Any change to the
pixels written or to the provenance record (times, host and temporary paths
aside) fails here: refactors must keep both; a deliberate change re-records
the reference with ``WSI_DEEPR_RECORD_REFERENCE=1 python -m pytest tests/test_regression.py``
and says why in its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_deepr import refocus
from wsi_deepr.testing import conv_model, default_card, save_model

from .conftest import SHARED_DATA, shared_path

REFERENCE = Path(__file__).parent / "data" / "refocus_reference.json"
RECORD = os.environ.get("WSI_DEEPR_RECORD_REFERENCE") == "1"

#: provenance keys that differ from run to run (or from one copy of the shared data to another) by nature
VOLATILE = {"timings", "started", "finished", "host", "platform", "python", "input_mtime"}

# case id: (slide, model kind, refocus options)
CASES = {
    "cmu": ("CMU-1-Small-Region.svs", "rgb", {}),
    "cmu-reduced": ("CMU-1-Small-Region.svs", "rgb-coarse", {"compression": "zlib"}),
    "cmu-process": ("CMU-1-Small-Region.svs", "rgb", {"background": "process", "tile": 384, "batch": 3}),
    "tcga": ("tcga-cr-7395-01a-01-ts1.svs", "rgb", {}),
    "small-svs": ("small.svs", "rgb", {}),
    "boxes": ("boxes.tiff", "rgb", {"compression": "zstd"}),
    "vectra": ("small_vectra.qptiff", "mono", {}),
    "smalltif": ("smalltif.tif", "mono", {"halo": 6, "overlap": 10}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("regression-models")
    fluo = default_card(modality="fluorescence", channels=1, normalization="percentile:1:99.8", halo=5)
    return {
        "rgb": save_model(conv_model(channels=3, depth=3, seed=11, card=default_card(halo=5)), d / "rgb.onnx"),
        "rgb-coarse": save_model(conv_model(channels=3, depth=3, seed=12, card=default_card(
            halo=5, mpp="1.0", mpp_range="[0.9, 1.1]")), d / "rgb-coarse.onnx"),
        "mono": save_model(conv_model(channels=1, depth=3, seed=13, card=fluo), d / "mono.onnx"),
    }


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.shape}{array.dtype}".encode() + array.tobytes()).hexdigest()


def _pixels(path: Path) -> dict:
    """SHA-256 of the decoded pixels of every pyramid level and associated image."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series
        levels = [_digest(level.asarray()) for level in series[0].levels]
        associated = {s.name: _digest(s.asarray()) for s in series[1:]}
    return {"levels": levels, "associated": associated}


def _normalise(record: dict, folders: dict[str, Path]) -> dict:
    """The provenance record without volatile keys, each folder replaced by its placeholder."""
    text = json.dumps({k: v for k, v in record.items() if k not in VOLATILE}, sort_keys=True, default=str)
    for placeholder, folder in folders.items():
        text = text.replace(str(folder.resolve()), placeholder).replace(str(folder), placeholder)
    return json.loads(text)


def _run(case: str, models: dict[str, Path], tmp_path: Path) -> dict:
    name, kind, options = CASES[case]
    model_dir = models[kind].parent
    out = tmp_path / "out.ome.tif"
    result = refocus(shared_path("slides", name), out, model=models[kind], workers=2, **options)
    record = json.loads(result.sidecar.read_text())
    provenance = _normalise(record, {"<out>": tmp_path, "<models>": model_dir, "<shared>": SHARED_DATA})
    return {"pixels": _pixels(out), "provenance": provenance}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_refocus_output_and_provenance_match_the_reference(case: str, models, tmp_path) -> None:
    got = _run(case, models, tmp_path)
    if RECORD:
        reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
        reference[case] = got
        REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded reference of {case}")
    expected = json.loads(REFERENCE.read_text())[case]
    assert got["pixels"]["levels"] == expected["pixels"]["levels"]
    assert got["pixels"]["associated"] == expected["pixels"]["associated"]
    assert got["provenance"] == expected["provenance"]
