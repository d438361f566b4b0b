"""Shared by the benchmarks: ONNX Runtime CPU time of one tile."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def time_onnx_tile(path: str | Path, channels: int, *, threads: int = 2, repeats: int = 7,
                   tile: int = 512) -> list[float]:
    """Seconds of ``repeats`` runs of one ``1 x channels x tile x tile`` window (after two warm-ups)."""
    from wsi_deepr.inference.session import create_session

    sess = create_session(path, device="cpu", threads=threads)
    x = np.random.default_rng(0).random((1, channels, tile, tile), dtype=np.float32)
    name = sess.get_inputs()[0].name
    for _ in range(2):
        sess.run(None, {name: x})
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: x})
        out.append(time.perf_counter() - t)
    return out
