"""Multi-resolution pyramids built level by level in zarr, in bounded memory.

Each level halves the previous one (sizes rounded up) with a 2x2 mean.  Levels are
streamed in horizontal bands, so building a pyramid of a slide of any size needs
memory proportional to its width times the band height only.  A level that was
finished before (attribute ``"complete": True``) is reused, which makes an
interrupted build restartable.

Pure numpy and zarr: no Dask here (callers that want parallelism wrap it).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from wsi_deepr.imaging.reduce import area_mean

__all__ = ["CHUNK", "build_pyramid", "downsample2", "pyramid_shapes"]

logger = logging.getLogger(__name__)

#: Chunk edge (pixels) of the pyramid levels written by :func:`build_pyramid`.
CHUNK = 512

_COMPLETE = "complete"


def pyramid_shapes(
    shape_yx: tuple[int, int], *, min_size: int = 1024
) -> list[tuple[int, int]]:
    """Return the ``(Y, X)`` shape of every pyramid level, level 0 first.

    Each level is the previous one halved, rounded up, until the largest side of
    the smallest level is at most ``min_size``.

    Parameters
    ----------
    shape_yx : tuple of int
        Height and width of level 0 (both at least 1).
    min_size : int, optional
        Stop once ``max(Y, X) <= min_size``.  A slide already that small has a
        single level.

    Returns
    -------
    list of tuple of int
        ``[(Y0, X0), (ceil(Y0 / 2), ceil(X0 / 2)), ...]``.

    Raises
    ------
    ValueError
        If a side or ``min_size`` is smaller than 1.
    """
    if len(shape_yx) != 2:
        raise ValueError(f"shape_yx must be (Y, X), got {shape_yx!r}")
    y, x = (int(v) for v in shape_yx)
    if y < 1 or x < 1:
        raise ValueError(f"shape_yx must be positive, got {shape_yx!r}")
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size!r}")
    shapes = [(y, x)]
    while max(y, x) > min_size:
        y, x = math.ceil(y / 2), math.ceil(x / 2)
        shapes.append((y, x))
    return shapes


def downsample2(block: np.ndarray) -> np.ndarray:
    """Halve a ``(Y, X, C)`` block with a 2x2 mean (:func:`wsi_deepr.imaging.reduce.area_mean`).

    An odd last row or column is averaged over the pixels it has, so the
    result has shape ``(ceil(Y / 2), ceil(X / 2), C)``.  Integer inputs are
    rounded half up and returned in their dtype; floating inputs keep theirs.

    Raises
    ------
    ValueError
        If ``block`` is not three-dimensional, is empty or is not numeric.
    """
    block = np.asarray(block)
    if block.ndim != 3:
        raise ValueError(f"block must be (Y, X, C), got shape {block.shape}")
    return area_mean(block, 2)


def _is_complete(array: zarr.Array, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return (
        tuple(array.shape) == shape
        and array.dtype == dtype
        and array.attrs.get(_COMPLETE) is True
    )


def _downsample_level(src: zarr.Array, dst: zarr.Array, *, band: int,
                      progress: Callable[[int], None] | None = None) -> None:
    """Write ``downsample2(src)`` into ``dst`` in bands of ``band`` output rows."""
    out_h = dst.shape[0]
    for y0 in range(0, out_h, band):
        y1 = min(y0 + band, out_h)
        block = np.asarray(src[2 * y0 : min(2 * y1, src.shape[0])])
        dst[y0:y1] = downsample2(block)
        if progress is not None:
            progress(y1 - y0)


def build_pyramid(
    base: zarr.Array,
    group: zarr.Group,
    *,
    min_size: int = 1024,
    band: int = CHUNK,
    prefix: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> list[zarr.Array]:
    """Build the reduced levels of ``base`` into ``group``.

    Level ``i + 1`` is computed from level ``i`` (already on disk) one band of
    ``band`` output rows at a time, so peak memory is a small multiple of
    ``width * band * C`` items whatever the slide height.  Levels are stored
    as ``group[f"{prefix}{i}"]`` for ``i >= 1``, chunked ``512 x 512 x C`` and
    compressed with zstd level 1, and get the attribute ``"complete": True``
    once fully written.  A level already complete with the expected shape and
    dtype is reused; anything else under that name is overwritten, and so are
    all the levels after a recomputed one.

    Parameters
    ----------
    base : zarr.Array
        Level 0, shape ``(Y, X, C)``.
    group : zarr.Group
        Writable group that receives the reduced levels.
    min_size : int, optional
        Passed to :func:`pyramid_shapes`.
    band : int, optional
        Output rows per band; a multiple of 512 avoids partial chunk writes.
    prefix : str, optional
        Prefix of the level array names.
    progress : callable, optional
        ``progress(level, rows)``, called after each band of ``rows`` output
        rows of ``level`` is written (reused levels are not reported).

    Returns
    -------
    list of zarr.Array
        ``[base, level1, level2, ...]``.

    Raises
    ------
    ValueError
        If ``base`` is not ``(Y, X, C)``, or ``band`` or ``min_size`` is below 1.
    """
    if len(base.shape) != 3:
        raise ValueError(f"base must be (Y, X, C), got shape {base.shape}")
    if band < 1:
        raise ValueError(f"band must be at least 1, got {band!r}")
    shapes = pyramid_shapes(base.shape[:2], min_size=min_size)
    channels = base.shape[2]
    dtype = np.dtype(base.dtype)
    levels: list[zarr.Array] = [base]
    reuse = True
    for i, (h, w) in enumerate(shapes[1:], start=1):
        name = f"{prefix}{i}"
        shape = (h, w, channels)
        existing = group.get(name) if reuse else None
        if isinstance(existing, zarr.Array) and _is_complete(existing, shape, dtype):
            logger.debug("reusing complete pyramid level %s %s", name, shape)
            levels.append(existing)
            continue
        reuse = False
        logger.debug("building pyramid level %s %s", name, shape)
        dst = group.create_array(
            name,
            shape=shape,
            chunks=(CHUNK, CHUNK, channels),
            dtype=dtype,
            compressors=ZstdCodec(level=1),
            fill_value=0,
            overwrite=True,
        )
        report = {} if progress is None else {"progress": functools.partial(progress, i)}
        _downsample_level(levels[-1], dst, band=band, **report)
        dst.attrs[_COMPLETE] = True
        levels.append(dst)
    return levels
