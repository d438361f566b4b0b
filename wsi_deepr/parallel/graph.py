"""The thin Dask layer: a task graph of :mod:`wsi_deepr.inference.kernel` calls.

The output is cut into *blocks* that follow the window grid: block ``(b, g)``
spans window row ``b`` (``stride`` rows) and window group ``g`` (``batch``
windows, ``batch * stride`` columns).  The tasks:

* ``deepr-infer-*``: one per group of ``batch`` adjacent windows of a grid row
  (:func:`~wsi_deepr.inference.kernel.infer_windows`); every window runs exactly once.
  Its canvas is split into the block it owns and three thin tails (the
  ``overlap`` rows below, the columns to the right, the corner) that belong
  to the neighbouring blocks.
* ``deepr-merge-*``: one per block: sums the block's own part of its canvas
  with the tails of the blocks above and to the left
  (:func:`~wsi_deepr.inference.kernel.assemble`), and hands its own tails on.  A
  canvas is freed as soon as its block is merged; the merged blocks of one
  row (small: the block plus thin tails) wait for the next row.
* ``deepr-out-*``: the block alone (the chunks of the Dask array).
* ordering: inference of group ``(b, g)`` waits until output block
  ``(b - 1, g + 1)`` is assembled.  Without that, Dask's static ordering may
  start windows all over the slide and hold their canvases; with it the work
  moves down the slide as a diagonal wavefront, one row deep, with enough
  ready tasks for every worker and no stall at row ends.

Memory therefore does not grow with the slide's area.
:func:`refocus_dask` returns the output as a lazy ``dask.array``;
:func:`store_to_zarr` writes it block by block into a zarr array, skipping
blocks that are already there.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import numpy as np

from wsi_deepr.inference.kernel import Canvas, assemble, infer_windows
from wsi_deepr.imaging.pyramid import downsample2
from wsi_deepr.tiling.plan import RefocusPlan

__all__ = ["refocus_dask", "store_to_zarr"]

log = logging.getLogger(__name__)


def _split(canvas: Canvas, box: tuple[int, int, int, int]) -> dict[str, Canvas]:
    """Split a canvas into its own block ``box`` and the tails beyond it.

    The tails are copied so that the big canvas can be freed once its own
    block is assembled.
    """
    y0, x0, y1, x1 = canvas.box
    by1, bx1 = box[2], box[3]
    hy, hx = by1 - y0, bx1 - x0
    data = canvas.data  # (C, Y, X)
    parts = {"main": Canvas((y0, x0, by1, bx1), data[:, :hy, :hx])}
    if y1 > by1:
        parts["bottom"] = Canvas((by1, x0, y1, bx1), data[:, hy:, :hx].copy())
    if x1 > bx1:
        parts["right"] = Canvas((y0, bx1, by1, x1), data[:, :hy, hx:].copy())
    if y1 > by1 and x1 > bx1:
        parts["corner"] = Canvas((by1, bx1, y1, x1), data[:, hy:, hx:].copy())
    return parts


def _graph(plan: RefocusPlan, token: str, blocks: list[tuple[int, int]]):
    """Build the task dict for ``blocks``; return ``(dsk, block_keys, name)``."""
    infer_name, merge_name = f"deepr-infer-{token}", f"deepr-merge-{token}"
    out_name = f"deepr-out-{token}"
    grid, skip = plan.grid, plan.grid.check_mask(plan.skip)
    nx = grid.grid_shape[1]
    nbx = plan.block_grid[1]
    wanted = set(blocks)
    dsk: dict = {}

    def infer(by: int, bx: int):
        key = (infer_name, by, bx)
        if key not in dsk:
            a, b = bx * plan.batch, min((bx + 1) * plan.batch, nx)
            row_skip = tuple(bool(v) for v in skip[by, a:b])
            session = None if all(row_skip) else plan.session
            row_z = None if plan.defocus is None else tuple(float(v) for v in plan.defocus[by, a:b])
            wait = (by - 1, min(bx + 1, nbx - 1))
            dsk[key] = (
                _infer_task, plan.reader, plan.level, grid, by, a, b, session, plan.stats,
                plan.model_channels, row_skip, row_z, (merge_name, *wait) if wait in wanted else None,
            )
        return key

    def merge(by: int, bx: int):
        """Key of ``(block or None, tails)`` for block ``(by, bx)``."""
        key = (merge_name, by, bx)
        if key in dsk or by < 0 or bx < 0:
            return key if key in dsk else None
        box = plan.block_box(by, bx)
        if (by, bx) in wanted:
            dsk[key] = (
                _merge_task, box, infer(by, bx), merge(by - 1, bx), merge(by, bx - 1),
                merge(by - 1, bx - 1), plan.stats, plan.dtype, plan.n_channels,
            )
        else:  # a finished block: only its tails are needed by its neighbours
            dsk[key] = (_tails_task, box, infer(by, bx))
        return key

    keys = []
    for by, bx in blocks:
        key = (out_name, by, bx, 0)
        dsk[key] = (_block_of, merge(by, bx))
        keys.append(key)
    return dsk, keys, out_name


def _infer_task(reader, level, grid, iy, a, b, session, stats, model_channels, skip, defocus, _after=None):
    return infer_windows(reader, level, grid, iy, a, b, session=session, stats=stats,
                         model_channels=model_channels, skip=skip, defocus=defocus)


def _tails_task(box, canvas):
    parts = _split(canvas, box)
    parts.pop("main")
    return None, parts


def _merge_task(box, canvas, up, left, upleft, stats, dtype, n_channels):
    parts = _split(canvas, box)
    sources = [parts.pop("main")]
    for neighbour, which in ((up, "bottom"), (left, "right"), (upleft, "corner")):
        if neighbour is not None and which in neighbour[1]:
            sources.append(neighbour[1][which])
    block = assemble(box, sources, stats=stats, dtype=dtype, n_channels=n_channels)
    return block, parts


def _block_of(merged):
    return merged[0]


def refocus_dask(plan: RefocusPlan):
    """The refocused level as a lazy ``dask.array`` of shape ``(Y, X, C)``.

    One chunk per output block (see :meth:`RefocusPlan.block_box`); each
    window is inferred once.
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    nby, nbx = plan.block_grid
    blocks = [(by, bx) for by in range(nby) for bx in range(nbx)]
    token = uuid.uuid4().hex[:12]
    dsk, _, name = _graph(plan, token, blocks)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, plan.block_chunks(), dtype=plan.dtype or np.float32)


def _store_task(target, reduced, box, block, mark=None, index=None):
    y0, x0, y1, x1 = box
    target[y0:y1, x0:x1, :] = block
    for level, array in enumerate(reduced, start=1):
        block = downsample2(block)
        ry, rx = y0 >> level, x0 >> level
        array[ry:ry + block.shape[0], rx:rx + block.shape[1], :] = block
    if mark is not None:  # only once every chunk of the block is written
        mark(*index)
    return (y1 - y0) * (x1 - x0)


def store_to_zarr(
    plan: RefocusPlan,
    target,
    *,
    reduced: tuple = (),
    done: Callable[[int, int], bool] | None = None,
    mark: Callable[[int, int], None] | None = None,
    scheduler: str | object = "threads",
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    infer_resources: dict[str, float] | None = None,
) -> int:
    """Compute the refocused level into ``target`` block by block.

    Parameters
    ----------
    plan : RefocusPlan
        What to compute.
    target : zarr.Array
        ``(Y, X, C)`` array of ``plan.dtype`` with ``plan.chunks`` chunks, so
        that no two blocks write into the same chunk.
    reduced : sequence of zarr.Array
        Pyramid levels 1, 2, ... (each ``ceil(previous / 2)``, chunks
        ``plan.chunks`` shrunk by ``2**level``), filled with each block's
        successive 2×2 means as the block is stored, so those pyramid steps
        cost no extra pass over the slide.  At most
        :attr:`RefocusPlan.block_local_levels` levels.
    done : callable, optional
        ``done(by, bx) -> bool``; blocks for which it is true are not computed
        (resume after an interruption).
    mark : callable, optional
        ``mark(by, bx)``, called by the store task (in the worker) after all
        of the block's chunks, level 0 and ``reduced``, are written: the
        record that lets ``done`` trust a block after a crash.  Must be
        picklable for a distributed scheduler.
    scheduler : str or distributed.Client
        ``"threads"``/``"sync"`` for Dask's local schedulers, or a
        ``distributed.Client``.
    num_workers : int, optional
        Threads of the local threaded scheduler.
    progress : callable, optional
        Called with the number of windows of each block once it is written
        (blocks and window groups correspond one to one), so the calls add
        up to ``plan.grid.n_windows`` for a full run.
    infer_resources : dict, optional
        Distributed only: worker resources each inference task needs, e.g.
        ``{"GPU": 1}``; the merge and store tasks need none.

    Returns
    -------
    int
        Number of blocks computed (skipped blocks not counted).
    """
    if len(reduced) > plan.block_local_levels:
        raise ValueError(
            f"{len(reduced)} reduced levels requested, but blocks of {plan.chunks[:2]} allow only "
            f"{plan.block_local_levels}; build the others with wsi_deepr.imaging.pyramid.build_pyramid"
        )
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
        dsk[skey] = (_store_task, target, tuple(reduced), plan.block_box(by, bx), key, mark, (by, bx))
        store_keys.append(skey)

    if hasattr(scheduler, "get") and hasattr(scheduler, "dashboard_link"):
        if infer_resources:
            dsk = _annotate_inference(dsk, f"deepr-infer-{token}", infer_resources)
        _run_distributed(scheduler, dsk, store_keys, progress, plan.windows_in_block)
    else:
        _run_local(dsk, store_keys, scheduler, num_workers, store_name, progress, plan.windows_in_block)
    return len(blocks)


def _run_local(dsk, keys, scheduler, num_workers, store_name, progress, windows) -> None:
    import dask
    from dask.callbacks import Callback

    class _Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401
            if progress is not None and isinstance(key, tuple) and key[0] == store_name:
                progress(windows(key[1], key[2]))

    get = dask.get if scheduler in ("sync", "synchronous", "single-threaded") else None
    with _Progress():
        if get is not None:
            get(dsk, keys)
        else:
            from dask.threaded import get as threaded_get

            threaded_get(dsk, keys, num_workers=num_workers)


class _InferResources:
    """Layer annotation: ``resources`` for the inference keys, none for the rest."""

    def __init__(self, infer_name: str, resources: dict) -> None:
        self.infer_name, self.resources = infer_name, dict(resources)

    def __call__(self, key):
        return self.resources if isinstance(key, tuple) and key[0] == self.infer_name else None


def _annotate_inference(dsk: dict, infer_name: str, resources: dict):
    """The graph as a HighLevelGraph whose inference tasks need ``resources``."""
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    layer = MaterializedLayer(dsk, annotations={"resources": _InferResources(infer_name, resources)})
    return HighLevelGraph({"deepr": layer}, {"deepr": set()})


def _run_distributed(client, dsk, keys, progress, windows) -> None:
    from distributed import as_completed

    futures = client.get(dsk, keys, sync=False)
    block_of = {f.key: (k[1], k[2]) for f, k in zip(futures, keys, strict=True)}
    for future in as_completed(futures):
        future.result()  # re-raise the first task error here
        if progress is not None:
            progress(windows(*block_of[future.key]))
