"""The thin Dask layer: a task graph of :mod:`wsi_deepr.compute` calls.

Two layers of tasks:

* ``deepr-infer-*``: one task per run of ``batch`` adjacent windows of a grid
  row (:func:`~wsi_deepr.compute.infer_windows`); every window runs exactly
  once.
* ``deepr-out-*``: one task per output block of the ``chunk`` grid, summing
  the canvases that touch it (:func:`~wsi_deepr.compute.assemble`).

:func:`refocus_dask` returns the output as a lazy ``dask.array``;
:func:`store_to_zarr` writes it block by block into a zarr array (each block
written as soon as it is computed, so memory does not grow with slide size),
skipping blocks that are already there.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .compute import assemble, infer_windows
from .geometry import TileGrid
from .inference import SessionSpec
from .io.slide import RegionReader
from .normalization import NormStats

__all__ = ["RefocusPlan", "refocus_dask", "store_to_zarr"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefocusPlan:
    """What to compute: the slide level, the window grid, the model and stats.

    Attributes
    ----------
    reader : RegionReader
        Picklable pixel source.
    level : int
        Pyramid level refocused (0 = full resolution).
    grid : TileGrid
        Model windows over that level.
    n_channels : int
        Channels of the slide.
    spec : SessionSpec or None
        Model session (``None`` only if every window is skipped).
    model_channels : int
        Channels the model takes (1 = per channel).
    stats : NormStats
        Slide normalisation statistics.
    dtype : numpy.dtype or None
        Output type (``None``: float32, not rounded).
    skip : numpy.ndarray or None
        Boolean ``grid.grid_shape`` mask of windows passed through unchanged.
    batch : int
        Windows per inference task (ONNX Runtime batch size).
    chunk : int
        Output block size (the output file's tile size).
    """

    reader: RegionReader
    level: int
    grid: TileGrid
    n_channels: int
    spec: SessionSpec | None
    model_channels: int
    stats: NormStats
    dtype: np.dtype | None
    skip: np.ndarray | None = None
    batch: int = 4
    chunk: int = 512

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output shape ``(Y, X, C)``."""
        return (*self.grid.shape, self.n_channels)

    @property
    def block_grid(self) -> tuple[int, int]:
        """Number of output blocks along Y and X."""
        h, w = self.grid.shape
        return -(-h // self.chunk), -(-w // self.chunk)

    def block_box(self, by: int, bx: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of output block ``(by, bx)``."""
        h, w = self.grid.shape
        y0, x0 = by * self.chunk, bx * self.chunk
        return y0, x0, min(y0 + self.chunk, h), min(x0 + self.chunk, w)


def _graph(plan: RefocusPlan, token: str, blocks: list[tuple[int, int]]):
    """Build the task dict for ``blocks``; return ``(dsk, block_keys)``."""
    infer_name, out_name = f"deepr-infer-{token}", f"deepr-out-{token}"
    grid, skip = plan.grid, plan.grid.check_mask(plan.skip)
    ny, nx = grid.grid_shape
    groups = [(g, ix, min(ix + plan.batch, nx)) for g, ix in enumerate(range(0, nx, plan.batch))]
    dsk: dict = {}

    def infer_key(iy: int, ix: int):
        g = ix // plan.batch
        key = (infer_name, iy, g)
        if key not in dsk:
            _, a, b = groups[g]
            row_skip = tuple(bool(v) for v in skip[iy, a:b])
            spec = None if all(row_skip) else plan.spec
            dsk[key] = (
                _infer_task, plan.reader, plan.level, grid, iy, a, b, spec, plan.stats,
                plan.model_channels, row_skip,
            )
        return key

    keys = []
    for by, bx in blocks:
        box = plan.block_box(by, bx)
        needed = []
        for iy in grid.y.windows_touching(box[0], box[2]):
            for ix in grid.x.windows_touching(box[1], box[3]):
                k = infer_key(iy, ix)
                if k not in needed:
                    needed.append(k)
        key = (out_name, by, bx, 0)
        dsk[key] = (_assemble_task, box, needed, plan.stats, plan.dtype, plan.n_channels)
        keys.append(key)
    return dsk, keys, out_name


def _infer_task(reader, level, grid, iy, a, b, spec, stats, model_channels, skip):
    return infer_windows(reader, level, grid, iy, a, b, spec=spec, stats=stats,
                         model_channels=model_channels, skip=skip)


def _assemble_task(box, canvases, stats, dtype, n_channels):
    return assemble(box, canvases, stats=stats, dtype=dtype, n_channels=n_channels)


def refocus_dask(plan: RefocusPlan):
    """The refocused level as a lazy ``dask.array`` of shape ``(Y, X, C)``.

    Chunks are ``plan.chunk`` square; each window is inferred once.
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    nby, nbx = plan.block_grid
    blocks = [(by, bx) for by in range(nby) for bx in range(nbx)]
    token = uuid.uuid4().hex[:12]
    dsk, _, name = _graph(plan, token, blocks)
    h, w, c = plan.shape
    chunks = (
        tuple(min(plan.chunk, h - i) for i in range(0, h, plan.chunk)),
        tuple(min(plan.chunk, w - i) for i in range(0, w, plan.chunk)),
        (c,),
    )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks, dtype=plan.dtype or np.float32)


def _store_task(target, box, block):
    y0, x0, y1, x1 = box
    target[y0:y1, x0:x1, :] = block
    return (y1 - y0) * (x1 - x0)


def store_to_zarr(
    plan: RefocusPlan,
    target,
    *,
    done: Callable[[int, int], bool] | None = None,
    scheduler: str | object = "threads",
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Compute the refocused level into ``target`` block by block.

    Parameters
    ----------
    plan : RefocusPlan
        What to compute.
    target : zarr.Array
        ``(Y, X, C)`` array with ``plan.chunk`` chunks, of ``plan.dtype``.
    done : callable, optional
        ``done(by, bx) -> bool``; blocks for which it is true are not computed
        (resume after an interruption).
    scheduler : str or distributed.Client
        ``"threads"``/``"sync"`` for Dask's local schedulers, or a
        ``distributed.Client``.
    num_workers : int, optional
        Threads of the local threaded scheduler.
    progress : callable, optional
        Called with ``1`` after each block is written.

    Returns
    -------
    int
        Number of blocks computed (skipped blocks not counted).
    """
    nby, nbx = plan.block_grid
    blocks = [(by, bx) for by in range(nby) for bx in range(nbx) if not (done and done(by, bx))]
    if not blocks:
        return 0
    token = uuid.uuid4().hex[:12]
    dsk, out_keys, _ = _graph(plan, token, blocks)
    store_name = f"deepr-store-{token}"
    store_keys = []
    for (by, bx), key in zip(blocks, out_keys, strict=True):
        skey = (store_name, by, bx)
        dsk[skey] = (_store_task, target, plan.block_box(by, bx), key)
        store_keys.append(skey)

    if hasattr(scheduler, "get") and hasattr(scheduler, "dashboard_link"):
        _run_distributed(scheduler, dsk, store_keys, progress)
    else:
        _run_local(dsk, store_keys, scheduler, num_workers, store_name, progress)
    return len(blocks)


def _run_local(dsk, keys, scheduler, num_workers, store_name, progress) -> None:
    import dask
    from dask.callbacks import Callback

    class _Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401
            if progress is not None and isinstance(key, tuple) and key[0] == store_name:
                progress(1)

    get = dask.get if scheduler in ("sync", "synchronous", "single-threaded") else None
    with _Progress():
        if get is not None:
            get(dsk, keys)
        else:
            from dask.threaded import get as threaded_get

            threaded_get(dsk, keys, num_workers=num_workers)


def _run_distributed(client, dsk, keys, progress) -> None:
    from distributed import as_completed

    futures = client.get(dsk, keys, sync=False)
    for future in as_completed(futures):
        future.result()  # re-raise the first task error here
        if progress is not None:
            progress(1)
