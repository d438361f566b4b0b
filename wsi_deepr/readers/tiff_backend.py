"""tifffile backend: Aperio SVS, OME-TIFF, QPTIFF, ImageJ and generic TIFF.

Pixels are read through ``TiffFile.series[i].aszarr(level=...)`` opened with
``zarr.open(store, mode="r")``; every level is returned as ``(Y, X, C)``.
Metadata (µm per pixel, channel names, modality, associated images) is taken
from the vendor description when there is one, else from the TIFF tags.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree

import numpy as np

from wsi_deepr.errors import CorruptSlideError, UnsupportedFormatError
from wsi_deepr.readers._handles import HandleCache
from wsi_deepr.readers.slide import Modality, Slide

__all__ = ["TiffRegionReader", "clear_cache", "open_tiff_slide", "quiet_tifffile"]

logger = logging.getLogger(__name__)

#: tifffile series kind -> ``Slide.format`` (other kinds, e.g. "ndpi", are kept as is).
_FORMATS = {"svs": "aperio", "ome": "ome-tiff", "qpi": "qptiff", "imagej": "imagej-tiff",
            "generic": "generic-tiff", "uniform": "generic-tiff", "shaped": "generic-tiff"}
#: normalised series/page names that denote associated images.
_ASSOCIATED = {"label": "label", "macro": "macro", "overview": "macro", "thumbnail": "thumbnail"}
#: micrometres per unit, for OME and ImageJ unit spellings.
_UM_PER_UNIT = {
    "m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0,
    "micron": 1.0, "microns": 1.0, "\\u00b5m": 1.0, "nm": 1e-3, "pm": 1e-6, "å": 1e-4,
    "inch": 25400.0, "in": 25400.0,
}
_RESUNIT_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}  # TIFF ResolutionUnit: inch, cm, mm, µm
_MPP_RANGE = (0.01, 100.0)  # µm/px; outside it a value is a placeholder (72/96 dpi, ...)
_PARSE_ERRORS = (OSError, ValueError, IndexError, KeyError, struct.error)  # TiffFileError too


# --------------------------------------------------------------------------- reader


class _ThisThread(logging.Filter):
    """Demote the ``tifffile`` logger's records from one thread to our debug log."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        logger.debug("tifffile: %s", record.getMessage())
        return False


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's warnings about a damaged file while this thread parses it.

    The caller raises a :class:`CorruptSlideError` instead; other threads are unaffected.
    """
    tifffile_logger = logging.getLogger("tifffile")
    quiet = _ThisThread()
    tifffile_logger.addFilter(quiet)
    try:
        yield
    finally:
        tifffile_logger.removeFilter(quiet)


@dataclass
class _Level:
    array: Any  # zarr.Array
    order: tuple[int, ...]  # transpose to (..., Y, X[, C])
    y_axis: int
    x_axis: int
    n_channels: int  # channels stored in the file
    keep: int  # channels returned (3 for RGBA)


@dataclass
class _Handle:
    tif: Any  # tifffile.TiffFile
    levels: list[_Level]


def _layout(axes: str, shape: tuple[int, ...], path: str) -> tuple[tuple[int, ...], int | None]:
    """Return the transpose order to ``(..., Y, X[, C])`` and the channel axis, if any."""
    extra = [a for a, n in zip(axes, shape, strict=True) if a not in "YXCS" and n > 1]
    chan = [i for i, a in enumerate(axes) if a in "CS" and shape[i] > 1]
    if extra or len(chan) > 1 or "Y" not in axes or "X" not in axes:
        sizes = ", ".join(f"{a}={n}" for a, n in zip(axes, shape, strict=True))
        raise UnsupportedFormatError(
            f"{path}: image has axes {axes} ({sizes}); wsi-deepr reads single-plane 2-D "
            "images only: export a single Z plane / time point (e.g. in Fiji or bfconvert)"
        )
    yi, xi = axes.index("Y"), axes.index("X")
    singles = [i for i in range(len(axes)) if i not in (yi, xi, *chan)]
    return (*singles, yi, xi, *chan), (chan[0] if chan else None)


def _keep_rgb(page: Any) -> int | None:
    """3 if ``page`` is RGB with extra (alpha) samples, which are dropped."""
    if int(page.photometric) == 2 and page.samplesperpixel > 3:
        logger.debug("dropping %d extra samples of an RGB page", page.samplesperpixel - 3)
        return 3
    return None


def _geometry(lvl: Any, path: str) -> tuple[tuple[int, ...], int, int, int, int]:
    """Return ``(order, y_axis, x_axis, stored channels, returned channels)`` of a level."""
    order, chan = _layout(lvl.axes, lvl.shape, path)
    n = lvl.shape[chan] if chan is not None else 1
    keep = min(n, _keep_rgb(lvl.keyframe) or n)
    return order, lvl.axes.index("Y"), lvl.axes.index("X"), n, keep


def _open_handle(path: str, series: int) -> _Handle:
    import tifffile
    import zarr

    # maxworkers > 1 makes the zarr store decode tiles in worker threads instead of
    # on zarr's single event-loop thread, so concurrent reads decode in parallel
    workers = max(2, os.cpu_count() or 2)
    tif = tifffile.TiffFile(path)
    try:
        ser = tif.series[series]
        levels = []
        for i, lvl in enumerate(ser.levels):
            array = zarr.open(ser.aszarr(level=i, maxworkers=workers), mode="r")
            if tuple(array.shape) != tuple(lvl.shape):
                raise CorruptSlideError(
                    f"{path}: level {i} has shape {array.shape}, expected {lvl.shape}")
            levels.append(_Level(array, *_geometry(lvl, path)))
    except Exception:
        tif.close()
        raise
    return _Handle(tif, levels)


_HANDLES: HandleCache[_Handle] = HandleCache(_open_handle, lambda handle: handle.tif.close())


def _get_handle(path: str, series: int, *, revalidate: bool = False) -> _Handle:
    """Return this process's handle of ``(path, series)``, opening it once."""
    return _HANDLES.get(path, series, revalidate=revalidate)


def clear_cache() -> None:
    """Close every file opened by :class:`TiffRegionReader` in this process."""
    _HANDLES.clear()


class TiffRegionReader:
    """Picklable region reader of one TIFF series.

    Parameters
    ----------
    path : str or Path
        The TIFF file.
    series : int
        Index into ``TiffFile.series`` of the main image.

    Notes
    -----
    The state is ``path`` and ``series`` only (no file handle).  The file is
    opened lazily, once per process, and shared by every reader of the same
    series; file reads are serialised on the handle's lock while tiles decode
    in worker threads.
    """

    def __init__(self, path: str | Path, series: int = 0) -> None:
        self.path = str(path)
        self.series = int(series)

    def __repr__(self) -> str:
        return f"TiffRegionReader({self.path!r}, series={self.series})"

    def read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Return pixels ``[y0:y1, x0:x1]`` of ``level`` as ``(Y, X, C)``."""
        lvl = _get_handle(self.path, self.series).levels[level]
        shape = lvl.array.shape
        height, width = shape[lvl.y_axis], shape[lvl.x_axis]
        if not (0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width):
            raise ValueError(
                f"region y={y0}:{y1}, x={x0}:{x1} is outside level {level} "
                f"({height}x{width}) of {self.path}; pad outside the image instead"
            )
        key = [slice(None)] * len(shape)
        key[lvl.y_axis] = slice(y0, y1)
        key[lvl.x_axis] = slice(x0, x1)
        data = np.asarray(lvl.array[tuple(key)]).transpose(lvl.order)
        data = data.reshape(y1 - y0, x1 - x0, lvl.n_channels)[..., : lvl.keep]
        return np.ascontiguousarray(data)


@dataclass(frozen=True)
class _TiffAssociated:
    """Picklable loader of an associated image (a whole series or one page)."""

    path: str
    series: int | None = None
    page: int | None = None

    def __call__(self) -> np.ndarray:
        import tifffile

        with tifffile.TiffFile(self.path) as tif:
            obj = tif.series[self.series] if self.series is not None else tif.pages[self.page]
            data, axes = obj.asarray(), obj.axes
        data = data.transpose(_layout(axes, data.shape, self.path)[0])
        return np.ascontiguousarray(data if data.ndim == 3 else data[..., None])


# --------------------------------------------------------------------------- metadata


def _sane_mpp(mpp: tuple[float, ...] | None, source: str) -> tuple[float, float] | None:
    if mpp is None:
        return None
    lo, hi = _MPP_RANGE
    if not all(np.isfinite(v) and lo <= v <= hi for v in mpp):
        logger.debug("ignoring mpp %s from %s: outside %s-%s µm, a placeholder",
                     mpp, source, lo, hi)
        return None
    return (float(mpp[0]), float(mpp[1]))


def _mpp_from_tags(page: Any, unit: str | None = None) -> tuple[float, float] | None:
    """µm/px from the resolution tags, in ``unit`` (ImageJ) or the ResolutionUnit tag."""
    factor = _UM_PER_UNIT.get(unit.strip().lower()) if unit else None
    factor = factor or _RESUNIT_UM.get(int(page.resolutionunit))
    xres, yres = page.resolution
    if factor is None or not xres or not yres:
        return None
    source = f"resolution tags ({unit or page.resolutionunit!r})"
    return _sane_mpp((factor / yres, factor / xres), source)


def _xml(text: str | None) -> ElementTree.Element | None:
    try:  # drop the declaration: QPTIFF declares utf-16 for an already decoded str
        return ElementTree.fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", text or ""))
    except ElementTree.ParseError:
        return None


def _children(element: ElementTree.Element | None, name: str) -> list[ElementTree.Element]:
    """Children of ``element`` whose tag, without namespace, is ``name``."""
    return [] if element is None else [e for e in element if e.tag.rsplit("}", 1)[-1] == name]


def _ome_meta(
    tif: Any, index: int, name: str | None
) -> tuple[tuple[float, float] | None, list[str]]:
    """µm/px and channel names of OME Image ``index`` (matched by name if counts differ)."""
    images = _children(_xml(tif.ome_metadata), "Image")
    if len(images) != len(tif.series):
        images = [e for e in images if e.get("Name") == name]
        index = 0
    pixels = next(iter(_children(images[index], "Pixels")), None) if images else None
    if pixels is None:
        return None, []
    names = [c.get("Name", "") for c in _children(pixels, "Channel")]
    axes = "YX" if pixels.get("PhysicalSizeY") else "XX"  # square pixels when Y is missing
    try:
        mpp = tuple(
            float(pixels.get(f"PhysicalSize{a}"))
            * _UM_PER_UNIT[pixels.get(f"PhysicalSize{a}Unit", "µm").strip().lower()]
            for a in axes
        )
    except (TypeError, ValueError, KeyError):
        return None, names
    return _sane_mpp(mpp, "OME PhysicalSize"), names


def _qpi_meta(series: Any) -> tuple[tuple[float, float] | None, list[str], bool]:
    """µm/px, channel names (one ``<Name>`` per page) and fluorescence flag of QPTIFF."""
    roots = [_xml(p.description) for p in series.pages if p is not None]
    names = [(r.findtext("Name") or "") if r is not None else "" for r in roots]
    first = roots[0] if roots and roots[0] is not None else ElementTree.Element("none")
    fluorescence = "fluorescence" in (first.findtext(".//Mode") or "").lower()
    mpp = _mpp_from_tags(series.keyframe)
    size = first.findtext(".//ScanResolution/PixelSizeMicrons")
    if mpp is None and size:
        mpp = _sane_mpp((float(size), float(size)), "QPTIFF ScanResolution")
    return mpp, names, fluorescence


def _svs_metadata(description: str) -> dict[str, str]:
    """Return the ``key = value`` fields of an Aperio ImageDescription."""
    fields = (f.split("=", 1) for f in description.split("|")[1:] if "=" in f)
    return {k.strip(): v.strip() for k, v in fields}


def _associated_name(name: str | None) -> str | None:
    return _ASSOCIATED.get(re.sub(r"\s+image$", "", (name or "").strip().lower()))


def _associated(tif: Any, kind: str, main: int, path: str) -> dict[str, _TiffAssociated]:
    found: dict[str, _TiffAssociated] = {}
    if kind not in ("svs", "ome", "qpi"):
        return found
    for i, series in enumerate(tif.series):
        name = _associated_name(series.name)
        if i != main and name and name not in found:
            found[name] = _TiffAssociated(path, series=i)
    if kind == "qpi":  # Overview/Label pages that tifffile leaves out of its series
        used = {p.index for s in tif.series for lv in s.levels for p in lv.pages if p is not None}
        for page in tif.pages:
            root = _xml(page.description) if page.index not in used else None
            name = _associated_name(root.findtext("ImageType")) if root is not None else None
            if name and name not in found:
                found[name] = _TiffAssociated(path, page=page.index)
    return found


# --------------------------------------------------------------------------- slide


def open_tiff_slide(path: str | Path, *, tile: int = 512) -> Slide:
    """Build a :class:`Slide` for a TIFF-based file read with tifffile.

    :func:`~wsi_deepr.readers.open_slide` checks first that the file is complete.

    Parameters
    ----------
    path : str or Path
        An existing, non-empty TIFF file.
    tile : int
        Chunk size of the Dask arrays.

    Raises
    ------
    CorruptSlideError
        tifffile cannot parse the file, or it holds no image.
    UnsupportedFormatError
        The image is a Z/T stack, palette-coloured or of a non-numeric type.
    """
    import tifffile

    path = str(path)
    try:
        with quiet_tifffile():
            tif = tifffile.TiffFile(path)
            len(tif.pages)  # parse every page directory now, quietly
    except _PARSE_ERRORS as exc:
        raise CorruptSlideError(
            f"{path}: damaged TIFF file ({exc}); copy it again or re-export it") from exc
    with tif:
        try:
            if not len(tif.pages) or not tif.series:
                raise CorruptSlideError(f"{path}: no readable image in this TIFF; the file is "
                                        "truncated or damaged: copy it again")
            slide = _build(tif, path, tile)
        except (CorruptSlideError, UnsupportedFormatError):
            raise
        except _PARSE_ERRORS as exc:
            raise CorruptSlideError(
                f"{path}: cannot read the TIFF metadata ({exc}); the file is damaged") from exc
    _get_handle(path, slide.reader.series, revalidate=True)  # open the zarr levels now
    return slide


def _build(tif: Any, path: str, tile: int) -> Slide:
    kind = tif.series[0].kind
    main = 0
    if kind == "ome":  # the first image that is not a label/macro/thumbnail
        main = next((i for i, s in enumerate(tif.series) if not _associated_name(s.name)), 0)
    series = tif.series[main]
    page = series.levels[0].keyframe
    if int(page.photometric) == 3:
        raise UnsupportedFormatError(
            f"{path}: palette (indexed-colour) TIFF; convert it to RGB first")
    if series.dtype.kind not in "uif":
        raise UnsupportedFormatError(
            f"{path}: pixel type {series.dtype} is not supported; use integers or floats")
    shapes = []
    for lvl in series.levels:
        _, yi, xi, _, keep = _geometry(lvl, path)
        shapes.append((lvl.shape[yi], lvl.shape[xi], keep))
    n_channels = shapes[0][2]

    names: list[str] = []
    fluorescence = False
    aperio = _svs_metadata(page.description) if kind == "svs" else {}
    if "MPP" in aperio:
        try:
            mpp = _sane_mpp((float(aperio["MPP"]),) * 2, "Aperio MPP")
        except ValueError:
            mpp = None
    elif kind == "ome":
        mpp, names = _ome_meta(tif, main, series.name)
        mpp = mpp or _mpp_from_tags(page)
    elif kind == "qpi":
        mpp, names, fluorescence = _qpi_meta(series)
    elif kind == "imagej":
        mpp = _mpp_from_tags(page, str((tif.imagej_metadata or {}).get("unit", "")))
    else:
        mpp = _mpp_from_tags(page)

    rgb = int(page.photometric) in (2, 6)  # RGB, YCbCr
    bright = n_channels == 3 and series.dtype == np.uint8 and rgb and not fluorescence
    if bright:
        channels: tuple[str, ...] = ("R", "G", "B")
    elif len(names) == n_channels and all(names):
        channels = tuple(names)
    else:
        channels = tuple(f"C{i}" for i in range(n_channels))

    keep = ("ImageDescription", "Software", "DateTime", "Make", "Model", "Artist",
            "XResolution", "YResolution", "ResolutionUnit")
    properties = {f"tiff.{t.name}": str(t.value) for t in page.tags if t.name in keep}
    properties.update({f"aperio.{k}": v for k, v in aperio.items()})
    fmt = _FORMATS.get(kind, kind)
    logger.debug("%s: %s, series %d, levels %s, mpp %s", path, fmt, main, shapes, mpp)
    return Slide(
        path=Path(path), backend="tifffile", format=fmt, reader=TiffRegionReader(path, main),
        level_shapes=tuple(shapes), dtype=np.dtype(series.dtype), mpp=mpp,
        channel_names=channels,
        modality=Modality.BRIGHTFIELD if bright else Modality.FLUORESCENCE,
        associated=_associated(tif, kind, main, path), properties=properties, tile=int(tile),
    )
