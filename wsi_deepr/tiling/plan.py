"""The refocusing plan: which pixels the model sees, in which windows, with what.

Pure decisions on a slide's metadata and a few low-resolution reads; no Dask
and no model run (the model session is only described here, by a
:class:`~wsi_deepr.inference.session.SessionSpec`):

* :func:`choose_geometry` — the pixel size the model runs at
  (:func:`wsi_deepr.tiling.scale.choose_scale`), the reader at that size, the
  window grid and the windows per task;
* :func:`detect_background` — windows of blank glass, on a thumbnail;
* :func:`build_plan` — the slide statistics and the skip mask, into a
  :class:`RefocusPlan`, the one object the Dask layer
  (:mod:`wsi_deepr.parallel.graph`) computes;
* :func:`plan_refocus` — all three at once, for notebooks and tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wsi_deepr.errors import OptionError
from wsi_deepr.inference.card import ModelInfo, check_compatible
from wsi_deepr.inference.normalization import NormStats, compute_stats, stats_sample
from wsi_deepr.inference.session import SessionSpec, get_session, providers_for
from wsi_deepr.options import BACKGROUND_MODES
from wsi_deepr.readers.reduced import ReducedReader
from wsi_deepr.readers.slide import Modality, RegionReader, Slide
from wsi_deepr.tiling.background import OD_THRESHOLD, BackgroundMask, glass_level, tissue_mask, window_skip_mask
from wsi_deepr.tiling.geometry import TileGrid, choose_tile
from wsi_deepr.tiling.scale import ScaleDecision, choose_scale

if TYPE_CHECKING:
    from wsi_deepr.restore import Deconvolution, Handoff

__all__ = [
    "BACKGROUND_MODES", "DEFAULT_OVERLAP", "Geometry", "RefocusPlan", "build_plan", "choose_geometry",
    "default_batch", "detect_background", "detects_background", "level_mpps", "output_mpp", "plan_refocus",
    "slide_stats",
]

log = logging.getLogger(__name__)

#: default feather between window cores, px (capped by the halo)
DEFAULT_OVERLAP = 16


@dataclass(frozen=True)
class RefocusPlan:
    """What to compute: the slide level, the window grid, the model and stats.

    Attributes
    ----------
    reader : RegionReader
        Picklable pixel source.
    level : int
        Level of ``reader`` the grid is laid on.  After an area-mean reduction
        the reduced image is ``reader``'s only level, so this is 0 then; the
        slide's own level and the factor are in ``scale``.
    grid : TileGrid
        Model windows over that level.
    n_channels : int
        Channels of the slide.
    session : SessionSpec, Deconvolution, Handoff or None
        Model session, non-blind method (:mod:`wsi_deepr.restore`), or both
        (``None`` only if every window is skipped).
    model_channels : int
        Channels the model takes (1 = per channel).
    stats : NormStats
        Slide normalisation statistics.
    dtype : numpy.dtype or None
        Output type (``None``: float32, not rounded).
    skip : numpy.ndarray or None
        Boolean ``grid.grid_shape`` mask of windows passed through unchanged.
    batch : int
        Windows per inference task (on CUDA also the ONNX Runtime batch; on the
        CPU the calls are bounded, :data:`wsi_deepr.inference.session.CPU_PIXELS_PER_CALL`).
    scale : ScaleDecision or None
        Where the model runs relative to the slide (see :mod:`wsi_deepr.tiling.scale`);
        ``reader``/``level`` already read at that scale.
    background : dict or None
        What background detection found (:meth:`wsi_deepr.tiling.background.BackgroundMask.to_dict`),
        or ``None`` when it did not run.
    focus : dict or None
        Which windows the defocus map sent to the network
        (:meth:`wsi_deepr.focus.select.FocusSelection.to_dict`), or ``None``
        when every window with tissue runs (``--where all``, or no threshold).
    defocus : numpy.ndarray or None
        ``grid.grid_shape`` estimated ``|z|`` (µm) of every window, for a
        non-blind method (:class:`wsi_deepr.restore.Deconvolution`); ``None``
        for a network, which is blind.
    """

    reader: RegionReader
    level: int
    grid: TileGrid
    n_channels: int
    session: SessionSpec | Deconvolution | Handoff | None
    model_channels: int
    stats: NormStats
    dtype: np.dtype | None
    skip: np.ndarray | None = None
    batch: int = 4
    scale: ScaleDecision | None = None
    background: dict | None = None
    focus: dict | None = None
    defocus: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output shape ``(Y, X, C)``."""
        return (*self.grid.shape, self.n_channels)

    @property
    def block_grid(self) -> tuple[int, int]:
        """Number of output blocks along Y (window rows) and X (window groups)."""
        ny, nx = self.grid.grid_shape
        return ny, -(-nx // self.batch)

    @property
    def chunks(self) -> tuple[int, int, int]:
        """Chunk shape for a zarr target: the size of an interior block."""
        s = self.grid.y.stride
        h, w = self.grid.shape
        return min(s, h), min(s * self.batch, w), self.n_channels

    def _cuts(self, axis_len: int, step: int, n: int, i: int) -> tuple[int, int]:
        return i * step, (axis_len if i == n - 1 else (i + 1) * step)

    def block_box(self, by: int, bx: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of output block ``(by, bx)``.

        Interior blocks are one stride tall and ``batch`` strides wide; the
        last row and column run to the image edge.
        """
        nby, nbx = self.block_grid
        h, w = self.grid.shape
        y0, y1 = self._cuts(h, self.grid.y.stride, nby, by)
        x0, x1 = self._cuts(w, self.grid.x.stride * self.batch, nbx, bx)
        return y0, x0, y1, x1

    def windows_in_block(self, by: int, bx: int) -> int:
        """Number of model windows whose output block is ``(by, bx)``."""
        nx = self.grid.grid_shape[1]
        return min((bx + 1) * self.batch, nx) - bx * self.batch

    @property
    def block_local_levels(self) -> int:
        """How many 2× pyramid levels each block can reduce on its own.

        Level ``k`` is exact per block when every block starts at a multiple
        of ``2**k`` (interior blocks are ``stride`` by ``batch * stride``).
        """
        k, s, w = 0, self.grid.y.stride, self.grid.x.stride * self.batch
        while s % 2 ** (k + 1) == 0 and w % 2 ** (k + 1) == 0 and k < 16:
            k += 1
        return k

    def block_chunks(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int]]:
        """Dask ``chunks`` of the output: one chunk per block."""
        nby, nbx = self.block_grid
        ys = tuple(self.block_box(b, 0)[2] - self.block_box(b, 0)[0] for b in range(nby))
        xs = tuple(self.block_box(0, g)[3] - self.block_box(0, g)[1] for g in range(nbx))
        return ys, xs, (self.n_channels,)




@dataclass(frozen=True)
class Geometry:
    """Where and how the model runs over a slide (decided from metadata only).

    Attributes
    ----------
    scale : ScaleDecision
        The pixel size the model runs at, and why.
    reader : RegionReader
        Pixels at that size (the slide's reader, or an area-mean reduction of
        one of its levels).
    level : int
        Level of ``reader`` the grid is laid on (0 after a reduction).
    grid : TileGrid
        The model windows.
    batch : int
        Windows per inference task.
    """

    scale: ScaleDecision
    reader: RegionReader
    level: int
    grid: TileGrid
    batch: int


def level_mpps(slide: Slide) -> list[float | None]:
    """µm/px (mean of y and x) of every level of ``slide`` (``None`` when unknown)."""
    if slide.mpp is None:
        return [None] * slide.level_count
    base = 0.5 * (slide.mpp[0] + slide.mpp[1])
    return [base * d for d in slide.level_downsamples]


def default_batch(device: str, tile: int) -> int:
    """Windows per inference task: 2 of 512 px on the CPU, 8 on CUDA, fewer for larger windows.

    The batch keeps about the same pixels per task whatever the window size,
    so memory stays bounded (one window per task from 592 px on the CPU).
    Why these numbers: the *Tiling* section of the README, with the
    benchmark that measures them.
    """
    base = 8 if "CUDAExecutionProvider" in providers_for(device) else 2
    return max(1, round(base * (512 / tile) ** 2))


def choose_geometry(slide: Slide, model: ModelInfo, *, device: str = "auto", tile: int | str = 512,
                    halo: int | None = None, overlap: int | None = None, batch: int | None = None,
                    parallel: int = 1, scale: str = "auto") -> Geometry:
    """Decide the pixel size, the reader, the window grid and the batch for ``slide``.

    ``halo`` defaults to the model card's, ``overlap`` to ``min(halo, 16)``;
    ``tile="auto"`` picks the window size that runs the model on the fewest
    pixels (:func:`wsi_deepr.tiling.geometry.choose_tile`, with ``parallel``
    windows at a time); ``batch=None`` runs :func:`default_batch` windows per
    task.

    Raises
    ------
    ModelMismatchError
        The model cannot run on this slide (modality, channels).
    TilingError
        ``tile`` is too small for ``halo`` and ``overlap``.
    """
    check_compatible(model, n_channels=slide.n_channels, modality=slide.modality)
    halo = model.card.halo if halo is None else int(halo)
    overlap = min(halo, DEFAULT_OVERLAP) if overlap is None else int(overlap)
    decision = choose_scale(level_mpps(slide), model_mpp=model.card.mpp, model_mpp_range=model.card.mpp_range,
                            mode=scale)
    log.info("scale: %s", decision.reason)
    reader, level = slide.reader, decision.level
    h, w, _ = slide.level_shapes[level]
    if decision.action == "downsample":
        reader = ReducedReader(slide.reader, decision.level, decision.factor, slide.level_shapes[level],
                               np.dtype(slide.dtype))
        (h, w, _), level = reader.shape, 0
    if tile == "auto":
        tile = choose_tile((h, w), halo=halo, overlap=overlap, parallel=max(1, int(parallel)))
    elif isinstance(tile, str) and not tile.isdigit():
        raise OptionError(f"tile={tile!r}: give a window size in pixels or 'auto'")
    grid = TileGrid((h, w), tile=int(tile), halo=halo, overlap=overlap)
    return Geometry(decision, reader, level, grid, default_batch(device, grid.tile) if batch is None else batch)


def detects_background(mode: str, slide: Slide) -> bool:
    """Whether background detection runs for ``mode`` on ``slide`` (brightfield only).

    Raises
    ------
    OptionError
        ``mode`` is unknown, or ``"skip"`` on a slide that is not brightfield.
    """
    if mode not in BACKGROUND_MODES:
        raise OptionError(f"background={mode!r}: use one of {BACKGROUND_MODES}")
    if mode == "process":
        return False
    brightfield = slide.modality is Modality.BRIGHTFIELD
    if mode == "skip" and not brightfield:
        raise OptionError(f"background='skip' finds glass by optical density, which needs a brightfield slide "
                          f"(this one is {slide.modality.value}); use background='process'")
    return brightfield


def detect_background(slide: Slide, grid: TileGrid, *, max_ratio: int = 32,
                      max_pixels: int = 4_000_000) -> BackgroundMask:
    """Find the windows of ``grid`` that hold only glass, on a low-resolution thumbnail.

    The thumbnail is the coarsest pyramid level at most ``max_ratio`` times
    smaller than the grid's image (a 512-px window then covers >= 16
    thumbnail pixels), block-averaged further if it has over ``max_pixels``
    (a 2048-px window still covers >= 64 of them at the default 4 MP).
    """
    h, w = grid.shape
    chosen = 0  # levels run from fine to coarse: the last that is fine enough
    for i, (ly, lx, _) in enumerate(slide.level_shapes):
        if h / ly <= max_ratio and w / lx <= max_ratio:
            chosen = i
    ly, lx, lc = slide.level_shapes[chosen]
    factor = max(1, int(np.ceil(np.sqrt(ly * lx / max_pixels))))
    reader, level, (ty, tx) = slide.reader, chosen, (ly, lx)
    if factor > 1:  # block means, kept in float (no rounding back to the slide's type)
        reader = ReducedReader(slide.reader, chosen, factor, (ly, lx, lc), np.dtype(np.float32))
        level, (ty, tx) = 0, reader.shape[:2]
    step = max(1, 256 // factor)  # strips of <= ~256 source rows: a large level is never held whole
    thumb = np.concatenate([np.asarray(reader.read(level, y0, 0, min(y0 + step, ty), tx))
                            for y0 in range(0, ty, step)], axis=0)
    dt = np.dtype(slide.dtype)
    full = float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0
    glass = glass_level(thumb, full_scale=full)
    tissue = tissue_mask(thumb, full_scale=full, glass=glass, od_threshold=OD_THRESHOLD)
    source = f"level {chosen} ({lx}x{ly}){f' averaged {factor}x{factor}' if factor > 1 else ''}"
    return BackgroundMask(skip=window_skip_mask(tissue, grid), tissue_fraction=float(tissue.mean()),
                          glass=tuple(float(g) for g in glass), source=source, od_threshold=OD_THRESHOLD)


def slide_stats(slide: Slide, model: ModelInfo) -> NormStats:
    """The slide's normalisation statistics for the model card's spec, from a low-resolution level."""
    pixels, source = stats_sample(slide.level_shapes, slide.read_region)
    stats = compute_stats(model.card.normalization, pixels, dtype=slide.dtype, source=source)
    log.info("normalisation %s from %s: offset %s scale %s", stats.spec, source,
             np.round(stats.offset, 3).tolist(), np.round(stats.scale, 3).tolist())
    return stats


def build_plan(slide: Slide, model: ModelInfo, geometry: Geometry, *,
               session: SessionSpec | Deconvolution | Handoff,
               skip: np.ndarray | None = None, background: str = "auto",
               refocus: np.ndarray | None = None, focus: dict | None = None,
               defocus: np.ndarray | None = None) -> RefocusPlan:
    """The :class:`RefocusPlan`: ``geometry`` with the slide statistics, the skip mask and the session.

    ``skip`` (a boolean window-grid mask) wins over everything else; without
    it, ``background`` decides whether blank glass is found and passed
    through (:func:`detects_background`), and windows outside ``refocus`` (a
    boolean window-grid mask from the defocus map, summarised by ``focus``)
    are passed through as well.  ``defocus`` (window-grid ``|z|``) goes to
    a non-blind method.
    """
    stats = slide_stats(slide, model)
    found = None
    if skip is None and detects_background(background, slide):
        found = detect_background(slide, geometry.grid)
        skip = found.skip
        log.info("background: %d of %d windows are blank glass (tissue %.1f %% of %s); passed through",
                 np.count_nonzero(skip), skip.size, 100 * found.tissue_fraction, found.source)
    if refocus is not None and (found is not None or skip is None):
        skip = ~geometry.grid.check_mask(refocus) | geometry.grid.check_mask(skip)
        log.info("defocus map: the network runs on %d of %d windows", np.count_nonzero(~skip), skip.size)
    return RefocusPlan(
        reader=geometry.reader, level=geometry.level, grid=geometry.grid, n_channels=slide.n_channels,
        session=session, model_channels=model.card.channels, stats=stats, dtype=slide.dtype,
        skip=geometry.grid.check_mask(skip), batch=geometry.batch, scale=geometry.scale,
        background=None if found is None else found.to_dict(), focus=focus,
        defocus=None if defocus is None else np.asarray(defocus, dtype=np.float64).reshape(geometry.grid.grid_shape),
    )


def plan_refocus(
    slide: Slide,
    model: ModelInfo,
    *,
    device: str = "auto",
    tile: int | str = 512,
    halo: int | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    parallel: int = 1,
    threads_per_task: int = 0,
    skip: np.ndarray | None = None,
    check_session: bool = True,
    scale: str = "auto",
    background: str = "auto",
) -> RefocusPlan:
    """Check the model against ``slide`` and build the :class:`RefocusPlan` in one call.

    :func:`choose_geometry`, then (unless ``check_session`` is false) the
    ONNX Runtime session is opened once, so that ``device="cuda"`` without a
    working CUDA provider fails before any work is done, then
    :func:`build_plan`.  ``threads_per_task`` is the sessions' intra-op
    thread count (0: ONNX Runtime's default).
    """
    detects_background(background, slide)  # a bad mode fails before any read
    geometry = choose_geometry(slide, model, device=device, tile=tile, halo=halo, overlap=overlap, batch=batch,
                               parallel=parallel, scale=scale)
    session = SessionSpec(str(model.path), device, threads_per_task)
    if check_session:
        get_session(session)  # fail fast: provider, model loads
    return build_plan(slide, model, geometry, session=session, skip=skip, background=background)


def output_mpp(slide: Slide, decision: ScaleDecision | None) -> tuple[float, float] | None:
    """µm/px ``(y, x)`` of the refocused image: the slide's, scaled by the decision's level and factor."""
    if slide.mpp is None:
        return None
    level, factor = (decision.level, decision.factor) if decision is not None else (0, 1)
    (y0, x0, _), (yk, xk, _) = slide.level_shapes[0], slide.level_shapes[level]
    return slide.mpp[0] * y0 / yk * factor, slide.mpp[1] * x0 / xk * factor
