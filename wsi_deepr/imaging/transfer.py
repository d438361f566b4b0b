"""Bring a correction computed at a coarser pixel size back onto the scan's own pixels.

A model trained at 0.5-1.0 µm/px refocuses a 40× (0.25 µm/px) scan at a
reduced scale (:mod:`wsi_deepr.tiling.scale`); returning that reduced image
would throw away half of the scan's resolution.  Instead the *correction*
is transferred: ``residual = refocused - model input`` at the processing
scale, upsampled by bilinear interpolation to the scan's level 0 and added to
the scan's own pixels::

    native_out = round(native_in + bilinear(refocused_p - input_p))

so the scan's fine detail is kept and only what the model changed is added.
Where the model did not run (glass, in-focus windows passed through) the
residual is exactly zero and the scan's pixels come back bit for bit.

The interpolation is separable and each output row or column depends only on
the two processing rows or columns around it, so any band of rows gives
exactly the pixels the whole image would: the transfer streams in bands.
Pure numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["native_coordinates", "transfer_band", "upsample_bilinear"]


def native_coordinates(n_native: int, n_processing: int) -> np.ndarray:
    """Processing-scale coordinate of every native pixel centre along one axis (clamped to the image).

    Pixel ``i`` of ``n_native`` sits at ``(i + 0.5) * n_processing / n_native - 0.5``:
    the two grids share their outer edges.
    """
    if n_native < 1 or n_processing < 1:
        raise ValueError(f"axis lengths must be >= 1, got {n_native} and {n_processing}")
    u = (np.arange(n_native, dtype=np.float64) + 0.5) * (n_processing / n_native) - 0.5
    return np.clip(u, 0.0, n_processing - 1.0)


def _weights(u: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index (relative to ``first``), upper index and upper weight of each coordinate."""
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, last)
    return lo - first, hi - first, (u - lo).astype(np.float32)


def upsample_bilinear(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, first_row: int = 0,
                      last_row: int | None = None) -> np.ndarray:
    """Sample ``values`` (``(h, w, C)``) at processing coordinates ``rows`` × ``cols`` by bilinear interpolation.

    ``values`` holds processing rows ``first_row ... first_row + h - 1`` of an
    image whose last row is ``last_row`` (default: the last row held);
    ``rows`` must lie inside what is held.
    """
    values = np.asarray(values, dtype=np.float32)
    last = first_row + values.shape[0] - 1 if last_row is None else last_row
    r0, r1, wr = _weights(rows, first_row, last)
    c0, c1, wc = _weights(cols, 0, values.shape[1] - 1)
    if r0.min() < 0 or r1.max() >= values.shape[0]:
        raise ValueError("rows outside the processing rows held: read one more row on each side")
    by_rows = values[r0] * (1 - wr)[:, None, None] + values[r1] * wr[:, None, None]
    return by_rows[:, c0] * (1 - wc)[None, :, None] + by_rows[:, c1] * wc[None, :, None]


def transfer_band(native: np.ndarray, inputs: np.ndarray, outputs: np.ndarray, rows: np.ndarray,
                  cols: np.ndarray, *, first_row: int, last_row: int) -> np.ndarray:
    """One band of the native-resolution output: ``native + bilinear(outputs - inputs)``, rounded.

    Parameters
    ----------
    native : numpy.ndarray
        ``(len(rows), len(cols), C)`` scan pixels at level 0.
    inputs, outputs : numpy.ndarray
        What the model saw and what it returned, processing rows
        ``first_row ...`` covering ``rows`` (one row of margin each side).
    rows, cols : numpy.ndarray
        Processing coordinates of the band's pixels (:func:`native_coordinates`).
    first_row, last_row : int
        First processing row held, and the processing image's last row.

    Returns
    -------
    numpy.ndarray
        The band in ``native``'s dtype (integers rounded and clipped).
    """
    residual = outputs.astype(np.float32) - inputs.astype(np.float32)
    up = upsample_bilinear(residual, rows, cols, first_row=first_row, last_row=last_row)
    out = native.astype(np.float32) + up
    dt = np.dtype(native.dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dt)
