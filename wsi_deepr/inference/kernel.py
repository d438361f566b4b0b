"""The work of one task, in numpy: read → normalise → infer → weight, and merge.

These functions know nothing about Dask.  :mod:`wsi_deepr.parallel.graph`
wires them into a task graph; :func:`refocus_array` runs them over an
in-memory image (evaluation, benchmarks, notebooks); tests call them directly.

* :func:`infer_windows` runs the model on a run of horizontally adjacent
  windows of one grid row and returns a :class:`Canvas`: the weighted sum of
  their cores.
* :func:`assemble` sums the canvases that cover an output block, undoes the
  normalisation and casts to the output type.  Because the weights form a
  partition of unity, the sum is the final value: no renormalisation.
* :func:`refocus_array` — normalise, window, run, blend, denormalise an array,
  exactly as a slide is refocused, without Dask.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wsi_deepr.inference.normalization import NormStats
from wsi_deepr.inference.session import SessionSpec, run_model
from wsi_deepr.readers.slide import RegionReader
from wsi_deepr.tiling.geometry import TileGrid, pad_reflect

if TYPE_CHECKING:
    from wsi_deepr.restore import Deconvolution, Handoff

__all__ = ["ArrayReader", "Canvas", "assemble", "infer_windows", "read_padded", "refocus_array", "restore",
           "to_dtype"]


@dataclass(frozen=True)
class Canvas:
    """Weighted model output over a box of the image (normalised space).

    Attributes
    ----------
    box : tuple of int
        ``(y0, x0, y1, x1)`` in image coordinates.
    data : numpy.ndarray
        ``float32`` array of shape ``(C, y1-y0, x1-x0)``: channels first, the
        model's layout, so windows are copied in and out with contiguous rows.
    """

    box: tuple[int, int, int, int]
    data: np.ndarray


def read_padded(reader: RegionReader, level: int, box: tuple[int, int, int, int],
                shape: tuple[int, int]) -> np.ndarray:
    """Read ``box`` (may leave the image) and fill the outside by reflection."""
    y0, x0, y1, x1 = box
    h, w = shape
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    block = reader.read(level, cy0, cx0, cy1, cx1)
    return pad_reflect(block, (cy0 - y0, cx0 - x0), (y1 - cy1, x1 - cx1))


def infer_windows(
    reader: RegionReader,
    level: int,
    grid: TileGrid,
    iy: int,
    ix0: int,
    ix1: int,
    *,
    session: SessionSpec | Deconvolution | Handoff | None,
    stats: NormStats,
    model_channels: int,
    skip: Sequence[bool] | None = None,
    defocus: Sequence[float] | None = None,
) -> Canvas:
    """Run the model on windows ``(iy, ix0) ... (iy, ix1 - 1)`` and blend them.

    Parameters
    ----------
    reader : RegionReader
        Pixel source.
    level : int
        Pyramid level the grid is laid on.
    grid : TileGrid
        Window layout over that level.
    iy, ix0, ix1 : int
        Grid row and half-open range of grid columns.
    session : SessionSpec, Deconvolution, Handoff or None
        Model session to use, a non-blind method or both
        (:mod:`wsi_deepr.restore`); ``None`` only when every window is
        skipped.
    stats : NormStats
        Slide normalisation statistics.
    model_channels : int
        Channels the model takes (1 = run each channel separately).
    skip : sequence of bool, optional
        Per window: ``True`` passes the input through unchanged.
    defocus : sequence of float, optional
        Per window: the estimated ``|z|`` (µm) a non-blind method needs.

    Returns
    -------
    Canvas
        Weighted sum of the windows' cores, in normalised space.
    """
    windows = [grid.window(iy, ix) for ix in range(ix0, ix1)]
    skip = [False] * len(windows) if skip is None else list(skip)
    union = (windows[0].read[0], windows[0].read[1], windows[0].read[2], windows[-1].read[3])
    pixels = read_padded(reader, level, union, grid.shape)
    normed = _normalize_chw(pixels, stats)  # (C, T, union width)

    outputs: dict[int, np.ndarray] = {}
    run = [k for k, s in enumerate(skip) if not s]
    if run:
        if session is None:
            raise ValueError("session is required when some windows are not skipped")
        t = grid.tile
        batch = np.empty((len(run), normed.shape[0], t, t), dtype=np.float32)
        for j, k in enumerate(run):
            off = windows[k].read[1] - union[1]
            batch[j] = normed[:, :, off:off + t]
        z = None if defocus is None else np.asarray([defocus[k] for k in run], dtype=np.float64)
        result = restore(session, batch, model_channels=model_channels, defocus=z)
        outputs = dict(zip(run, result, strict=True))

    box = (windows[0].core[0], windows[0].core[1], windows[0].core[2], windows[-1].core[3])
    canvas = np.zeros((normed.shape[0], box[2] - box[0], box[3] - box[1]), dtype=np.float32)
    wy = grid.y.weights(iy).astype(np.float32)[None, :, None]
    for k, win in enumerate(windows):
        ys, xs = win.core_in_window
        if k in outputs:
            core = outputs[k][:, ys, xs]
        else:  # pass-through: the input itself, in normalised space
            off = win.read[1] - union[1]
            core = normed[:, ys, off + xs.start:off + xs.stop]
        wx = grid.x.weights(ix0 + k).astype(np.float32)[None, None, :]
        cx0 = win.core[1] - box[1]
        target = canvas[:, :, cx0:cx0 + core.shape[2]]
        target += core * wy * wx  # separable weights: their product sums to one
    return Canvas(box, canvas)


def restore(session: SessionSpec | Deconvolution | Handoff, batch: np.ndarray, *, model_channels: int,
            defocus: np.ndarray | None = None) -> np.ndarray:
    """Run a network session, a non-blind method or a hand-off with the windows' ``defocus`` on ``(N, C, H, W)``.

    ``session``: a :class:`SessionSpec`, a :class:`wsi_deepr.restore.Deconvolution`
    (needs ``defocus``) or a :class:`wsi_deepr.restore.Handoff` (without
    ``defocus`` every window goes to its network).
    """
    if isinstance(session, SessionSpec):
        return run_model(session, batch, model_channels=model_channels)
    return session.run(batch, defocus, model_channels=model_channels)


def assemble(box: tuple[int, int, int, int], canvases: Sequence[Canvas], *, stats: NormStats,
             dtype: np.dtype | None, n_channels: int) -> np.ndarray:
    """Sum the parts of ``canvases`` inside ``box`` and map back to pixel values.

    Parameters
    ----------
    box : tuple of int
        ``(y0, x0, y1, x1)`` of the output block.
    canvases : sequence of Canvas
        Every canvas that intersects ``box`` (their weights sum to one).
    stats : NormStats
        Normalisation to undo.
    dtype : numpy.dtype or None
        Output type; integers are rounded and clipped, ``None`` keeps float32.
    n_channels : int
        Channels of the output.
    """
    y0, x0, y1, x1 = box
    acc = np.zeros((n_channels, y1 - y0, x1 - x0), dtype=np.float32)
    for c in canvases:
        cy0, cx0, cy1, cx1 = c.box
        iy0, ix0, iy1, ix1 = max(y0, cy0), max(x0, cx0), min(y1, cy1), min(x1, cx1)
        if iy1 <= iy0 or ix1 <= ix0:
            continue
        acc[:, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] += c.data[:, iy0 - cy0:iy1 - cy0, ix0 - cx0:ix1 - cx0]
    acc *= np.asarray(stats.scale, dtype=np.float32)[:, None, None]  # denormalise in place
    acc += np.asarray(stats.offset, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray(to_dtype(acc, dtype).transpose(1, 2, 0))


def _normalize_chw(pixels: np.ndarray, stats: NormStats) -> np.ndarray:
    """``(Y, X, C)`` pixels → normalised ``float32`` ``(C, Y, X)`` in one pass."""
    out = np.empty((pixels.shape[2], pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    for c in range(pixels.shape[2]):
        plane = out[c]
        np.subtract(pixels[:, :, c], np.float32(stats.offset[c]), out=plane, dtype=np.float32)
        plane *= np.float32(1.0 / stats.scale[c])
    return out


def to_dtype(block: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """Round and clip ``block`` into integer ``dtype`` (``None`` keeps float32)."""
    if dtype is None:
        return block.astype(np.float32, copy=False)
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        rounded = np.rint(block)
        np.clip(rounded, info.min, info.max, out=rounded)
        return rounded.astype(dt)
    return block.astype(dt)


class ArrayReader:
    """An in-memory ``(Y, X, C)`` image as a :class:`~wsi_deepr.readers.slide.RegionReader` (one level)."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image

    def read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (``level`` must be 0)."""
        if level != 0:
            raise ValueError(f"an in-memory image has one level; got level {level}")
        return self.image[y0:y1, x0:x1]


def refocus_array(
    image: np.ndarray,
    model: str | os.PathLike | SessionSpec | Deconvolution,
    *,
    stats: NormStats,
    defocus: float | np.ndarray | None = None,
    model_channels: int | None = None,
    tile: int | None = 512,
    halo: int = 0,
    overlap: int = 0,
    dtype: np.dtype | None = None,
    device: str = "cpu",
    threads: int = 0,
) -> np.ndarray:
    """Refocus an in-memory image: normalise, window, run, blend, denormalise (no Dask).

    Parameters
    ----------
    image : numpy.ndarray
        ``(Y, X, C)`` pixels.
    model : path, SessionSpec or Deconvolution
        The ONNX model (a path is run with ``device`` and ``threads``), or a
        non-blind method (:class:`wsi_deepr.restore.Deconvolution`).
    stats : NormStats
        Normalisation (``NormStats.identity(C)`` for values already in model space).
    defocus : float or numpy.ndarray, optional
        For a non-blind method: one ``|z|`` (µm) for the whole image, or one
        per window (the grid's shape).
    model_channels : int, optional
        Channels the model takes (1 = run each channel alone); default ``C``.
    tile : int or None
        Window size; ``None`` runs the model once on the whole image as it is
        (no padding: its sides must suit the model).
    halo, overlap : int
        As in :class:`~wsi_deepr.tiling.geometry.TileGrid` (with ``tile``).
    dtype : numpy.dtype, optional
        Output type (integers rounded and clipped); default float32.

    Returns
    -------
    numpy.ndarray
        ``(Y, X, C)``, the same pixels a slide of this image would get with
        the same windows and statistics.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be (Y, X, C), got shape {image.shape}")
    session = SessionSpec(os.fspath(model), device, threads) if isinstance(model, (str, os.PathLike)) else model
    channels = image.shape[2] if model_channels is None else int(model_channels)
    h, w, c = image.shape
    if tile is None:
        normed = _normalize_chw(image, stats)[None]
        z = None if defocus is None else np.full(1, float(np.asarray(defocus).reshape(-1)[0]))
        out = restore(session, normed, model_channels=channels, defocus=z)[0]
        return assemble((0, 0, h, w), [Canvas((0, 0, h, w), out)], stats=stats, dtype=dtype, n_channels=c)
    grid = TileGrid((h, w), tile=tile, halo=halo, overlap=overlap)
    reader = ArrayReader(image)
    z_grid = None if defocus is None else np.broadcast_to(np.asarray(defocus, dtype=np.float64), grid.grid_shape)
    rows = [infer_windows(reader, 0, grid, iy, 0, grid.grid_shape[1], session=session, stats=stats,
                          model_channels=channels, defocus=None if z_grid is None else z_grid[iy])
            for iy in range(grid.grid_shape[0])]
    return assemble((0, 0, h, w), rows, stats=stats, dtype=dtype, n_channels=c)
