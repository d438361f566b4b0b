"""Area-mean reduction: the one way wsi-deepr makes an image smaller.

Every output pixel is the mean of an ``fy × fx`` block of input pixels (area
averaging: no aliasing, exact and deterministic, so a region reduced in
pieces equals the whole image reduced at once when the pieces start on
multiples of the factor).  Used for the pyramid's 2× levels
(:mod:`wsi_deepr.imaging.pyramid`), the reduced slide levels of scale-aware
inference (:class:`wsi_deepr.readers.reduced.ReducedReader`), thumbnails,
registration and block statistics.

Rules, in one place:

* **edges** — ``edge="partial"`` (default): a block cut by the bottom or
  right edge averages the pixels it has (the output is ``ceil(Y / fy)`` by
  ``ceil(X / fx)``); ``edge="crop"``: incomplete blocks are dropped
  (``Y // fy`` by ``X // fx``).
* **rounding** — integer images stay integers of their type, the mean rounded
  half up (``floor(mean + 1/2)``, computed exactly in integers); floating
  images keep their type (the 2× case sums in the input's precision, other
  factors in float64).  ``dtype`` asks for another output type: a float
  ``dtype`` keeps the exact mean unrounded.

Pure numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["area_mean", "reduced_shape"]


def reduced_shape(shape: tuple[int, ...], factor: int | tuple[int, int], *, edge: str = "partial") -> tuple[int, ...]:
    """``(Y, X, ...)`` of an image of ``shape`` reduced by ``factor`` (see the module's edge rules)."""
    fy, fx = _factors(factor)
    if edge == "crop":
        return (shape[0] // fy, shape[1] // fx, *shape[2:])
    return (-(-shape[0] // fy), -(-shape[1] // fx), *shape[2:])


def _factors(factor: int | tuple[int, int]) -> tuple[int, int]:
    fy, fx = (factor, factor) if np.isscalar(factor) else factor
    if int(fy) != fy or int(fx) != fx or fy < 1 or fx < 1:
        raise ValueError(f"factor={factor!r}: use a whole number >= 1 (or one per axis)")
    return int(fy), int(fx)


def area_mean(image: np.ndarray, factor: int | tuple[int, int], *, edge: str = "partial",
              dtype: np.dtype | type | None = None) -> np.ndarray:
    """Reduce the first two axes of ``image`` by block means.

    Parameters
    ----------
    image : numpy.ndarray
        ``(Y, X)`` or ``(Y, X, C)`` numeric array, not empty.
    factor : int or (int, int)
        Block size, the same along both axes or ``(fy, fx)``.
    edge : {"partial", "crop"}
        What happens to blocks cut by the bottom/right edge (module notes).
    dtype : numpy.dtype, optional
        Output type; default the input's.  Integer outputs are rounded half
        up; float outputs are the exact mean.

    Returns
    -------
    numpy.ndarray
        The reduced image.
    """
    image = np.asarray(image)
    fy, fx = _factors(factor)
    if edge not in ("partial", "crop"):
        raise ValueError(f"edge={edge!r}: use 'partial' or 'crop'")
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be a non-empty (Y, X) or (Y, X, C) array, got shape {image.shape}")
    if image.dtype.kind not in "uif":
        raise ValueError(f"image must be numeric, got dtype {image.dtype}")
    out_type = np.dtype(image.dtype if dtype is None else dtype)
    if edge == "crop":
        h, w = reduced_shape(image.shape, (fy, fx), edge="crop")[:2]
        if h < 1 or w < 1:
            raise ValueError(f"image of shape {image.shape} is smaller than one {fy}x{fx} block")
        image = image[: h * fy, : w * fx]
    if (fy, fx) == (1, 1):
        return image.astype(out_type, copy=False)
    if (fy, fx) == (2, 2) and out_type == image.dtype:
        return _halve(image)
    return _block_mean(image, fy, fx, out_type)


def _block_mean(image: np.ndarray, fy: int, fx: int, out_type: np.dtype) -> np.ndarray:
    """Any factor: block sums with ``np.add.reduceat``, divided by each block's own pixel count."""
    exact_ints = image.dtype.kind in "ui" and out_type.kind in "ui"
    acc = (np.int64 if image.dtype.kind == "i" else np.uint64) if exact_ints else np.float64
    rows, cols = np.arange(0, image.shape[0], fy), np.arange(0, image.shape[1], fx)
    sums = np.add.reduceat(np.add.reduceat(image.astype(acc, copy=False), rows, axis=0), cols, axis=1)
    counts = np.minimum(fy, image.shape[0] - rows)[:, None] * np.minimum(fx, image.shape[1] - cols)[None, :]
    if image.ndim == 3:
        counts = counts[..., None]
    if exact_ints:  # floor(sum / n + 1/2) = floor((2 sum + n) / 2n), exactly
        counts = counts.astype(acc)
        out = (2 * sums + counts) // (2 * counts)
        info = np.iinfo(out_type)
        return np.clip(out, info.min, info.max).astype(out_type)
    mean = sums / counts
    if out_type.kind in "ui":
        info = np.iinfo(out_type)
        return np.clip(np.floor(mean + 0.5), info.min, info.max).astype(out_type)
    return mean.astype(out_type)


def _halve(image: np.ndarray) -> np.ndarray:
    """The 2× case in the input's type: four strided adds (several times faster than a reshape-and-sum)."""
    dtype = image.dtype
    pad_y, pad_x = image.shape[0] % 2, image.shape[1] % 2
    if pad_y or pad_x:  # replicating the last row/column averages an edge block over the pixels it has
        image = np.pad(image, ((0, pad_y), (0, pad_x)) + ((0, 0),) * (image.ndim - 2), mode="edge")
    if dtype.kind == "f":
        acc = np.float64 if dtype.itemsize > 4 else np.float32
    elif dtype.itemsize <= 2:  # 4 * max fits: small accumulators are much faster
        acc = {(1, "u"): np.uint16, (1, "i"): np.int16, (2, "u"): np.uint32, (2, "i"): np.int32}[
            (dtype.itemsize, dtype.kind)]
    else:
        acc = np.uint64 if dtype.kind == "u" else np.int64
    total = image[0::2, 0::2].astype(acc)
    total += image[1::2, 0::2]
    total += image[0::2, 1::2]
    total += image[1::2, 1::2]
    if dtype.kind == "f":
        return (total * acc(0.25)).astype(dtype, copy=False)
    # Floor division of (sum + 2) by 4 rounds half up, negatives included.
    return ((total + acc(2)) // acc(4)).astype(dtype, copy=False)
