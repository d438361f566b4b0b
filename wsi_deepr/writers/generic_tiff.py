"""Streaming writer of an OpenSlide-readable tiled pyramidal TIFF (Aperio layout).

OpenSlide cannot see the SubIFD pyramid of an OME-TIFF (it reads level 0 only),
so this writer lays the pyramid out the way Aperio SVS files do, which both
OpenSlide (``aperio`` vendor) and Bio-Formats (``SVSReader``, QuPath) read as
one multi-resolution image:

==========  ==================================================================
IFD         content
==========  ==================================================================
0           level 0, tiled; ``ImageDescription`` starts with
            ``Aperio Image Library`` and carries ``|MPP = <µm>`` (OpenSlide:
            ``openslide.mpp-x/y``) and the provenance key/values
1           thumbnail, stripped (given, or the smallest level reduced to at
            most 1024 px; omitted when that level is larger than 2048 px)
2 ...       the reduced levels, tiled like level 0
last        ``label`` (stripped, LZW, lossless) and ``macro`` (stripped, JPEG),
            named by the second line of their ``ImageDescription``
==========  ==================================================================

Every level is a top-level tiled IFD (no SubIFDs), which is also what
OpenSlide's ``generic-tiff`` reader wants.  Resolution tags (pixels per cm) are
written on every level.  The provenance is appended to the level-0 description
as ``|wsi_deepr.<key> = <value>`` (OpenSlide shows it as
``aperio.wsi_deepr.<key>``); ``%``, ``|``, CR and LF in values are
percent-encoded, and :func:`read_tiff_annotations` decodes them.

OpenSlide decodes 8-bit RGB(A) only, so fluorescence (``rgb=False``: several
channels, 16-bit) is refused with an :class:`~wsi_deepr.errors.OutputError`
that names ``--format ome-tiff`` and ``--format ome-zarr``; nothing is written.

Pixels are read one band of ``tile`` rows at a time (peak memory
``O(width * tile * 3)``), written to a hidden temporary file beside the target
and moved into place at the end, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_deepr._version import __version__
from wsi_deepr.errors import OutputError
from wsi_deepr.writers.atomic import atomic_file
from wsi_deepr.writers.levels import check_levels, check_mpp
from wsi_deepr.writers.ometiff import _check_associated, _Progress, _tiles
from wsi_deepr.writers.paths import check_output

__all__ = ["TIFF_COMPRESSIONS", "read_tiff_annotations", "write_tiled_tiff"]

logger = logging.getLogger(__name__)

#: Accepted values of ``compression`` (all decoded by OpenSlide and Bio-Formats).
TIFF_COMPRESSIONS = ("auto", "jpeg", "zlib", "lzw", "zstd")

#: What every description starts with: OpenSlide's Aperio detection needs it.
APERIO_PREFIX = "Aperio Image Library"

_JPEG_SUBSAMPLING = (2, 2)
_THUMBNAIL_SIZE = 1024
_ESCAPES = {"%": "%25", "|": "%7C", "\r": "%0D", "\n": "%0A"}
_UNESCAPE = re.compile("%(25|7C|0D|0A)", re.IGNORECASE)


def _escape(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def _check_compression(compression: str, *, quality: int) -> str:
    value = str(compression).lower()
    if value not in TIFF_COMPRESSIONS:
        raise ValueError(
            f"compression must be one of {', '.join(TIFF_COMPRESSIONS)}, "
            f"got {compression!r}"
        )
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg_quality must be in 1-100, got {quality!r}")
    return "jpeg" if value == "auto" else value


def _check_mpp(mpp: tuple[float, float] | None) -> tuple[float, float] | None:
    value = check_mpp(mpp)
    if value is None:
        return None
    if abs(value[0] - value[1]) > 0.01 * max(value):
        logger.warning(
            "pixels are not square (mpp y=%g, x=%g): the Aperio MPP field holds "
            "x only; the TIFF resolution tags keep both", *value
        )
    return value


def _refuse_fluorescence(path: Path, levels: Sequence[Any], rgb: bool) -> None:
    first = levels[0] if len(levels) else None
    if rgb or first is None:
        return
    shape, dtype = tuple(first.shape), np.dtype(first.dtype)
    raise OutputError(
        f"cannot write {path} as an OpenSlide TIFF: OpenSlide reads 8-bit RGB only "
        f"and this image has {shape[-1] if len(shape) == 3 else '?'} channel(s) of "
        f"{dtype}; write an OME-TIFF (--format ome-tiff, -o *.ome.tif) or OME-Zarr "
        f"(--format ome-zarr, -o *.ome.zarr) instead"
    )


def _level0_description(
    shape: Sequence[int],
    *,
    tile: int,
    compression: str,
    quality: int,
    mpp: tuple[float, float] | None,
    annotations: Mapping[str, str] | None,
    name: str,
) -> bytes:
    height, width = int(shape[0]), int(shape[1])
    codec = {"jpeg": f"JPEG/YCbCr Q={int(quality)}", "zlib": "Deflate/RGB",
             "lzw": "LZW/RGB", "zstd": "ZSTD/RGB"}[compression]
    head = (
        f"{APERIO_PREFIX} wsi-deepr {__version__}\r\n"
        f"{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) {codec}"
    )
    fields = [head]
    if mpp is not None:
        fields.append(f"MPP = {mpp[1]:.6g}")
    fields.append(f"Filename = {_escape(name)}")
    for key, value in (annotations or {}).items():
        key = re.sub(r"[\s=|]+", "_", str(key))
        fields.append(f"{key} = {_escape(str(value))}")
    return "|".join(fields).encode("utf-8")


def _thumbnail(levels: Sequence[Any], extra: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The given thumbnail, else the smallest level reduced to <= 1024 px."""
    if "thumbnail" in extra:
        return extra["thumbnail"]
    from wsi_deepr.imaging.pyramid import downsample2

    last = levels[-1]
    if max(int(last.shape[0]), int(last.shape[1])) > 2 * _THUMBNAIL_SIZE:
        return None
    image = np.asarray(last[:])
    while max(image.shape[:2]) > _THUMBNAIL_SIZE:
        image = downsample2(image)
    return np.ascontiguousarray(image)


def _resolution(
    mpp: tuple[float, float] | None, base: Sequence[int], shape: Sequence[int]
) -> dict[str, Any]:
    if mpp is None:
        return {}
    um_y = mpp[0] * base[0] / shape[0]
    um_x = mpp[1] * base[1] / shape[1]
    return {"resolution": (1e4 / um_x, 1e4 / um_y), "resolutionunit": "CENTIMETER"}


def _write_small(
    writer: Any, image: np.ndarray, *, description: str, subfiletype: int,
    jpeg: bool, quality: int,
) -> None:
    """Write one stripped associated image (Aperio: thumbnail, label, macro)."""
    writer.write(
        image,
        photometric="rgb",
        planarconfig="contig",
        compression="jpeg" if jpeg else "lzw",
        compressionargs={"level": int(quality)} if jpeg else None,
        subsampling=_JPEG_SUBSAMPLING if jpeg else None,
        rowsperstrip=64,
        subfiletype=subfiletype,
        description=description.encode("utf-8"),
        software=False,
        metadata=None,
    )


def _write_levels(
    writer: Any, levels: Sequence[Any], *, tile: int, compression: str,
    quality: int, mpp: tuple[float, float] | None, description: bytes,
    thumbnail: np.ndarray | None, reporter: _Progress,
) -> None:
    base = tuple(int(v) for v in levels[0].shape)
    options: dict[str, Any] = {"compression": compression}
    if compression == "jpeg":
        options["compressionargs"] = {"level": int(quality)}
        options["subsampling"] = _JPEG_SUBSAMPLING
    workers = min(8, os.cpu_count() or 1)
    tile_bytes = tile * tile * 3
    buffer = max(workers * tile_bytes, math.ceil(base[1] / tile) * tile_bytes)
    for index, level in enumerate(levels):
        shape = tuple(int(v) for v in level.shape)
        first = index == 0
        tiles = _tiles(
            level, tile=tile, channels=[None], pad_edges=compression == "jpeg",
            progress=reporter if first else None,
        )
        text = description if first else (
            f"{APERIO_PREFIX} wsi-deepr {__version__}\r\n{base[1]}x{base[0]} "
            f"({tile}x{tile}) -> {shape[1]}x{shape[0]}"
        ).encode("utf-8")
        writer.write(
            tiles, shape=shape, dtype=np.uint8, tile=(tile, tile),
            photometric="rgb", planarconfig="contig", subfiletype=0,
            description=text, software=f"wsi-deepr {__version__}" if first else False,
            metadata=None, maxworkers=workers, buffersize=buffer,
            **_resolution(mpp, base, shape), **options,
        )
        if first:
            reporter.flush()
            if thumbnail is not None:  # Aperio: the second IFD, stripped
                _write_small(
                    writer, thumbnail, subfiletype=0, jpeg=True, quality=quality,
                    description=(
                        f"{APERIO_PREFIX} wsi-deepr {__version__}\n{base[1]}x{base[0]}"
                        f" -> {thumbnail.shape[1]}x{thumbnail.shape[0]} - "
                    ),
                )


def write_tiled_tiff(
    path: str | os.PathLike[str],
    levels: Sequence[Any],
    *,
    mpp: tuple[float, float] | None = None,
    channel_names: Sequence[str] | None = None,
    rgb: bool,
    compression: str = "auto",
    jpeg_quality: int = 90,
    associated: Mapping[str, np.ndarray] | None = None,
    annotations: Mapping[str, str] | None = None,
    tile: int = 512,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write an RGB pyramid as a tiled pyramidal TIFF that OpenSlide opens.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, conventionally ``*.tif`` or ``*.tiff``.
    levels : sequence of array-like
        Pyramid levels ``(Y, X, 3)`` uint8 (zarr arrays in practice), level 0
        first, each smaller than the previous one; read in bands of ``tile``
        rows, never whole.
    mpp : tuple of float, optional
        Level-0 pixel size ``(y, x)`` in micrometres; written as the Aperio
        ``MPP`` (x; OpenSlide's ``openslide.mpp-x`` and ``-y``) and as TIFF
        resolution tags on every level.
    channel_names : sequence of str, optional
        Accepted for symmetry with the other writers; an RGB TIFF has no
        channel names, so they are not stored.
    rgb : bool
        Must be true: OpenSlide reads 8-bit RGB only.  ``False`` raises
        :class:`~wsi_deepr.errors.OutputError` pointing to OME-TIFF/OME-Zarr.
    compression : {"auto", "jpeg", "zlib", "lzw", "zstd"}, optional
        ``"auto"`` is JPEG (YCbCr, 2x2 chroma subsampling); the others are
        lossless.  All are decoded by OpenSlide 4 and Bio-Formats.
    jpeg_quality : int, optional
        JPEG quality, 1-100.
    associated : mapping of str to numpy.ndarray, optional
        Small uint8 images (grey, RGB or RGBA; stored as RGB).  ``"thumbnail"``
        goes to the second IFD, ``"label"`` is kept lossless, others are JPEG;
        OpenSlide lists them under their names (whitespace becomes ``_``).
    annotations : mapping of str to str, optional
        Provenance key/values, appended to the level-0 description.
    tile : int, optional
        Tile edge in pixels, a multiple of 16.
    overwrite : bool, optional
        Replace an existing ``path``.
    progress : callable, optional
        Called with the number of level-0 tiles just written, once per band.

    Returns
    -------
    pathlib.Path
        ``path`` (absolute).

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    OutputError
        If the output directory is missing or not writable, or ``rgb`` is false.
    ValueError
        If the levels, options or associated images are inconsistent.
    """
    import tifffile  # heavy; only the writing path needs it

    path = Path(path).absolute()
    _refuse_fluorescence(path, levels, rgb)
    check_levels(levels, rgb=True)
    compression = _check_compression(compression, quality=jpeg_quality)
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile!r}")
    mpp = _check_mpp(mpp)
    extra = _check_associated(associated)
    if channel_names and len(channel_names) not in (1, 3):
        raise ValueError(
            f"channel_names for RGB must have 1 or 3 names, got {list(channel_names)!r}"
        )
    check_output(path, overwrite=overwrite)

    base = tuple(int(v) for v in levels[0].shape)
    description = _level0_description(
        base, tile=tile, compression=compression, quality=jpeg_quality, mpp=mpp,
        annotations=annotations, name=path.name,
    )
    logger.info("writing %s: %d level(s) of %s (%s)", path, len(levels), base, compression)
    reporter = _Progress(progress)
    with atomic_file(path) as handle, tifffile.TiffWriter(handle, bigtiff=True, ome=False) as writer:
        _write_levels(
            writer, levels, tile=tile, compression=compression,
            quality=jpeg_quality, mpp=mpp, description=description,
            thumbnail=_thumbnail(levels, extra), reporter=reporter,
        )
        for key, image in extra.items():
            if key == "thumbnail":
                continue
            name = re.sub(r"\s+", "_", key) or "associated"
            _write_small(
                writer, image, jpeg=key != "label", quality=jpeg_quality,
                subfiletype=9 if key == "macro" else 1,
                description=(
                    f"{APERIO_PREFIX} wsi-deepr {__version__}\n"
                    f"{name} {image.shape[1]}x{image.shape[0]}"
                ),
            )
    logger.info("wrote %s", path)
    return path


def read_tiff_annotations(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the provenance key/values a :func:`write_tiled_tiff` file carries.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF written by :func:`write_tiled_tiff`.

    Returns
    -------
    dict of str to str
        The ``annotations`` given to the writer (values decoded); empty when
        the file has no Aperio description.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get("ImageDescription")
        text = tag.value if tag is not None else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text.startswith(APERIO_PREFIX):
        return {}
    out = {}
    for field in text.split("|")[1:]:
        key, sep, value = field.partition(" = ")
        if sep and key not in ("MPP", "Filename", "AppMag"):
            out[key] = _unescape(value)
    return out
