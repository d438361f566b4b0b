"""OpenSlide backend: NDPI, MRXS, SCN, BIF, VMS, Philips TIFF, DICOM, ...

OpenSlide returns RGBA with transparent pixels outside the scanned area; they
are composited onto white so that every read is ``(Y, X, 3)`` uint8 RGB.

Notes
-----
OpenSlide addresses every level in level-0 coordinates and uses one downsample
factor (the mean of the Y and X ratios) per level.  Where that factor is not an
integer, a region that does not start at ``(0, 0)`` maps to a fractional
position and OpenSlide resamples it by a sub-pixel shift.  Level 0, and levels
with integer downsamples, are read pixel-exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_deepr.errors import CorruptSlideError, UnsupportedFormatError
from wsi_deepr.readers._handles import HandleCache
from wsi_deepr.readers.slide import Modality, Slide

__all__ = ["OpenSlideRegionReader", "clear_cache", "open_openslide_slide", "rgba_to_rgb"]

logger = logging.getLogger(__name__)

_MPP_RANGE = (0.01, 100.0)
_ASSOCIATED = ("label", "macro", "thumbnail")


def _open(path: str) -> Any:
    import openslide

    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise UnsupportedFormatError(
            f"{path}: OpenSlide cannot read this file ({exc}); use backend='tifffile' for "
            "TIFF files, or convert the image to OME-TIFF"
        ) from exc
    except (openslide.OpenSlideError, OSError) as exc:
        raise CorruptSlideError(
            f"{path}: OpenSlide failed to open the slide ({exc}); the file is damaged") from exc


_HANDLES: HandleCache[Any] = HandleCache(_open, lambda osr: osr.close())


def _get_osr(path: str, *, revalidate: bool = False) -> Any:
    """Return the per-process ``OpenSlide`` of ``path``, opening it once."""
    return _HANDLES.get(path, revalidate=revalidate)


def clear_cache() -> None:
    """Close every slide opened by :class:`OpenSlideRegionReader` in this process."""
    _HANDLES.clear()


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA onto white, returning uint8 RGB.

    Parameters
    ----------
    rgba : numpy.ndarray
        ``(Y, X, 4)`` uint8 array, alpha last.

    Returns
    -------
    numpy.ndarray
        ``(Y, X, 3)`` uint8; opaque pixels are unchanged, transparent ones white.
    """
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    if alpha.size == 0 or alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint32)
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class OpenSlideRegionReader:
    """Picklable region reader backed by ``openslide.OpenSlide``.

    Parameters
    ----------
    path : str or Path
        The slide file (for MIRAX the ``.mrxs`` file).

    Notes
    -----
    The state is ``path`` only (no slide handle).  The slide is opened lazily,
    once per process, and shared by every reader of the same path; OpenSlide
    is thread-safe.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def __repr__(self) -> str:
        return f"OpenSlideRegionReader({self.path!r})"

    def read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Return pixels ``[y0:y1, x0:x1]`` of ``level`` as ``(Y, X, 3)`` uint8."""
        import openslide

        osr = _get_osr(self.path)
        width, height = osr.level_dimensions[level]
        if not (0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width):
            raise ValueError(
                f"region y={y0}:{y1}, x={x0}:{x1} is outside level {level} "
                f"({height}x{width}) of {self.path}; pad outside the image instead"
            )
        if y1 == y0 or x1 == x0:
            return np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        ds = osr.level_downsamples[level]
        location = (round(x0 * ds), round(y0 * ds)) if level else (x0, y0)
        try:
            image = osr.read_region(location, level, (x1 - x0, y1 - y0))
        except openslide.OpenSlideError as exc:
            raise CorruptSlideError(
                f"{self.path}: OpenSlide failed to read level {level} y={y0}:{y1} x={x0}:{x1} "
                f"({exc}); the file is damaged"
            ) from exc
        return rgba_to_rgb(np.asarray(image))


@dataclass(frozen=True)
class _OpenSlideAssociated:
    """Picklable loader of one OpenSlide associated image."""

    path: str
    name: str

    def __call__(self) -> np.ndarray:
        image = _get_osr(self.path).associated_images[self.name]
        return rgba_to_rgb(np.asarray(image.convert("RGBA")))


def _mpp(properties: dict[str, str]) -> tuple[float, float] | None:
    try:
        mpp = (float(properties["openslide.mpp-y"]), float(properties["openslide.mpp-x"]))
    except (KeyError, ValueError):
        return None
    lo, hi = _MPP_RANGE
    if not all(np.isfinite(v) and lo <= v <= hi for v in mpp):
        logger.debug("ignoring openslide mpp %s: outside %s-%s µm (placeholder)", mpp, lo, hi)
        return None
    return mpp


def open_openslide_slide(path: str | Path, *, tile: int = 512) -> Slide:
    """Build a :class:`Slide` for a file that OpenSlide reads.

    Parameters
    ----------
    path : str or Path
        The slide file.
    tile : int
        Chunk size of the Dask arrays.

    Raises
    ------
    UnsupportedFormatError
        OpenSlide does not recognise the file.
    CorruptSlideError
        OpenSlide recognises but cannot open it.
    """
    path = str(path)
    osr = _get_osr(path, revalidate=True)
    properties = {str(k): str(v) for k, v in osr.properties.items()}
    shapes = tuple((int(h), int(w), 3) for w, h in osr.level_dimensions)
    names = set(osr.associated_images.keys())
    associated = {n: _OpenSlideAssociated(path, n) for n in _ASSOCIATED if n in names}
    mpp = _mpp(properties)
    fmt = properties.get("openslide.vendor") or "openslide"
    logger.debug("%s: %s via OpenSlide, levels %s, mpp %s", path, fmt, shapes, mpp)
    return Slide(
        path=Path(path), backend="openslide", format=fmt, reader=OpenSlideRegionReader(path),
        level_shapes=shapes, dtype=np.dtype(np.uint8), mpp=mpp, channel_names=("R", "G", "B"),
        modality=Modality.BRIGHTFIELD, associated=associated, properties=properties, tile=int(tile),
    )
