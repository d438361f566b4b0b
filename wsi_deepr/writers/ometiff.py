"""Streaming writer of pyramidal OME-TIFF files.

The pyramid is ONE OME Image: level 0 in the top-level IFD(s), the reduced
levels in SubIFDs (``NewSubfileType = 1``), the layout Bio-Formats and QuPath
read as one series with several resolutions.  Pixels are read one band of
``tile`` rows at a time and handed to :class:`tifffile.TiffWriter` as tiles, so
peak memory is ``O(width * tile * C)`` whatever the slide height.

Brightfield RGB is stored JPEG-compressed as YCbCr with 2x2 chroma subsampling
(what tifffile does for ``photometric='rgb', compression='jpeg'``, the usual
whole-slide layout); Bio-Formats decodes it to the right RGB values, whereas
YCbCr JPEG without subsampling came back with wrong colours.  Fluorescence is
stored lossless, one plane per channel (OME ``Interleaved="false"``).

The file is first written to a hidden temporary file beside the target and
moved into place at the end (:mod:`wsi_deepr.writers.atomic`), so a failure
never leaves a half-written output.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_deepr._version import __version__
from wsi_deepr.errors import OptionError
from wsi_deepr.options import COMPRESSIONS
from wsi_deepr.writers.atomic import atomic_file
from wsi_deepr.writers.levels import check_levels, check_mpp
from wsi_deepr.writers.omexml import OmeImage, build_ome_xml, ome_pixel_type
from wsi_deepr.writers.paths import check_output, image_stem

__all__ = ["COMPRESSIONS", "check_compression", "level0_tile_count", "write_ome_tiff"]

logger = logging.getLogger(__name__)


_JPEG_SUBSAMPLING = (2, 2)


def level0_tile_count(shape: Sequence[int], *, rgb: bool, tile: int = 512) -> int:
    """Return the total that ``progress`` adds up to for a level 0 of ``shape``.

    Every channel plane of a non-RGB image counts its own tiles.
    """
    y, x, c = (int(v) for v in shape)
    return math.ceil(y / tile) * math.ceil(x / tile) * (1 if rgb else c)


def _bands(level: Any, tile: int, channel: int | None) -> Iterator[np.ndarray]:
    """Yield ``tile``-row bands: ``(rows, X, C)``, or ``(rows, X)`` of one channel."""
    height = int(level.shape[0])
    for y0 in range(0, height, tile):
        y1 = min(y0 + tile, height)
        if channel is None:
            yield np.asarray(level[y0:y1])
        else:
            yield np.asarray(level[y0:y1, :, channel])


class _Progress:
    """Report tiles to ``callback`` one band late: when the writer has taken them.

    tifffile stops pulling from the tile iterator after the last tile, so code
    after the final ``yield`` never runs; :meth:`flush` reports the last band.
    """

    def __init__(self, callback: Callable[[int], None] | None) -> None:
        self.callback = callback
        self.pending = 0

    def add(self, count: int) -> None:
        self.flush()
        self.pending = count

    def flush(self) -> None:
        if self.callback is not None and self.pending:
            self.callback(self.pending)
        self.pending = 0


def _tiles(
    level: Any,
    *,
    tile: int,
    channels: Sequence[int | None],
    pad_edges: bool,
    progress: _Progress | None,
) -> Iterator[np.ndarray]:
    """Yield the tiles of ``level`` in TIFF order, plane by plane, band by band."""
    for channel in channels:
        for band in _bands(level, tile, channel):
            if progress is not None:
                progress.add(math.ceil(band.shape[1] / tile))
            for x0 in range(0, band.shape[1], tile):
                piece = band[:, x0 : x0 + tile]
                if pad_edges and piece.shape[:2] != (tile, tile):
                    # Edge replication instead of tifffile's zero padding keeps
                    # JPEG ringing out of the last real rows and columns.
                    pad = [(0, tile - piece.shape[0]), (0, tile - piece.shape[1])]
                    pad += [(0, 0)] * (piece.ndim - 2)
                    piece = np.pad(piece, pad, mode="edge")
                yield piece
            del band


def _resolution(
    mpp: tuple[float, float] | None, base: Sequence[int], shape: Sequence[int]
) -> dict[str, Any]:
    if mpp is None:
        return {}
    um_y = mpp[0] * base[0] / shape[0]
    um_x = mpp[1] * base[1] / shape[1]
    return {"resolution": (1e4 / um_x, 1e4 / um_y), "resolutionunit": "CENTIMETER"}


def check_compression(compression: str, *, rgb: bool, quality: int) -> str:
    """The compression to write (``"auto"`` resolved), or :class:`OptionError` naming the bad value.

    JPEG is for brightfield RGB only (``rgb``); ``quality`` must be 1-100.
    """
    value = str(compression).lower()
    if value not in COMPRESSIONS:
        raise OptionError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )
    if value == "auto":
        value = "jpeg" if rgb else "zlib"
    if value == "jpeg" and not rgb:
        raise OptionError("compression='jpeg' is for brightfield RGB (8-bit, 3 channels) output only; "
                         "use 'zlib' or 'zstd'")
    if not 1 <= int(quality) <= 100:
        raise OptionError(f"jpeg_quality must be in 1-100, got {quality!r}")
    return value


def _channel_names(
    names: Sequence[str] | None, *, rgb: bool, channels: int
) -> list[str] | None:
    if not names:
        return None
    if rgb:
        if len(names) not in (1, 3):
            raise ValueError(
                f"channel_names for an RGB image must have 1 or 3 names, "
                f"got {list(names)!r}"
            )
        return [",".join(names)]
    if len(names) != channels:
        raise ValueError(
            f"channel_names has {len(names)} names for {channels} channel(s)"
        )
    return list(names)


def _check_associated(associated: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Return the associated images as uint8 RGB (grey replicated, alpha dropped)."""
    extra = {}
    for key, value in (associated or {}).items():
        image = np.asarray(value)
        if image.ndim == 2:
            image = image[..., None]
        if (
            image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] not in (1, 3, 4)
        ):
            raise ValueError(
                f"associated image {key!r} must be uint8 (H, W), (H, W, 1), "
                f"(H, W, 3) or (H, W, 4), got {image.dtype} {image.shape}"
            )
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        extra[str(key)] = np.ascontiguousarray(image[..., :3])
    return extra


def _write_pyramid(writer: Any, levels: Sequence[Any], *, rgb: bool, tile: int, compression: str,
                   jpeg_quality: int, mpp: tuple[float, float] | None, description: str,
                   progress: _Progress) -> None:
    """Level 0 as the top-level IFD(s), the reduced levels as its SubIFDs, streamed band by band."""
    first_level = levels[0]
    channels, dtype = int(first_level.shape[2]), np.dtype(first_level.dtype)
    options: dict[str, Any] = {"compression": compression}
    if compression == "jpeg":
        options["compressionargs"] = {"level": int(jpeg_quality)}
        options["subsampling"] = _JPEG_SUBSAMPLING
    if rgb:
        options.update(photometric="rgb", planarconfig="contig")
    else:
        options.update(photometric="minisblack")
    workers = min(8, os.cpu_count() or 1)
    tile_bytes = tile * tile * (channels if rgb else 1) * dtype.itemsize
    base = tuple(int(v) for v in first_level.shape)
    # tifffile buffers this many bytes of tiles; one band's worth is enough.
    buffer = max(workers * tile_bytes, math.ceil(base[1] / tile) * tile_bytes)
    planes: list[int | None] = [None] if rgb else list(range(channels))
    for index, level in enumerate(levels):
        shape = tuple(int(v) for v in level.shape)
        first = index == 0
        tiles = _tiles(level, tile=tile, channels=planes, pad_edges=compression == "jpeg",
                       progress=progress if first else None)
        writer.write(
            tiles,
            shape=shape if rgb else (channels, *shape[:2]),
            dtype=dtype,
            tile=(tile, tile),
            subifds=len(levels) - 1 if first else None,
            subfiletype=0 if first else 1,
            description=description.encode("utf-8") if first else None,
            software=f"wsi-deepr {__version__}" if first else False,
            metadata=None,
            maxworkers=workers,
            buffersize=buffer,
            **_resolution(mpp, base, shape),
            **options,
        )
        if first:
            progress.flush()


def _write_associated(writer: Any, extra: Mapping[str, np.ndarray], *, compression: str,
                      jpeg_quality: int) -> None:
    """The associated images as further top-level images (the label kept lossless for its barcode)."""
    for key, image in extra.items():
        jpeg = key != "label" and compression == "jpeg"
        writer.write(
            image,
            photometric="rgb",
            planarconfig="contig",
            compression="jpeg" if jpeg else "zlib",
            compressionargs={"level": int(jpeg_quality)} if jpeg else None,
            subsampling=_JPEG_SUBSAMPLING if jpeg else None,
            software=False,
            metadata=None,
        )


def write_ome_tiff(
    path: str | os.PathLike[str],
    levels: Sequence[Any],
    *,
    mpp: tuple[float, float] | None = None,
    channel_names: Sequence[str] | None,
    rgb: bool,
    compression: str = "auto",
    jpeg_quality: int = 90,
    associated: Mapping[str, np.ndarray] | None = None,
    annotations: Mapping[str, str] | None = None,
    name: str | None = None,
    tile: int = 512,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a pyramid as one tiled, multi-resolution OME-TIFF image.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, conventionally ``*.ome.tif``.
    levels : sequence of array-like
        Pyramid levels of shape ``(Y, X, C)`` (zarr arrays in practice), level 0
        first, each smaller than the previous one, all of one dtype.  They are
        read in bands of ``tile`` rows, never whole.
    mpp : tuple of float, optional
        Level-0 pixel size ``(y, x)`` in micrometres; written as OME
        ``PhysicalSizeY/X`` and as TIFF resolution tags (pixels per centimetre).
    channel_names : sequence of str or None
        One name per channel; for RGB one name (three are joined with commas).
    rgb : bool
        Brightfield RGB (uint8, ``C == 3``, samples interleaved) if true, else
        one grey plane per channel (fluorescence).
    compression : {"auto", "jpeg", "zlib", "zstd"}, optional
        ``"auto"`` is JPEG for RGB, zlib otherwise.  JPEG needs ``rgb=True``.
    jpeg_quality : int, optional
        JPEG quality, 1-100.
    associated : mapping of str to numpy.ndarray, optional
        Small uint8 RGB ``(H, W, 3)`` images (grey is replicated, alpha dropped)
        stored as extra OME Images with these names; QuPath recognises
        ``"label"``, ``"macro"`` and ``"thumbnail"``.
        The label is kept lossless, the others are JPEG-compressed.
    annotations : mapping of str to str, optional
        Provenance key/values, stored as an OME ``MapAnnotation`` of the pyramid.
    name : str, optional
        OME Image name of the pyramid; default the file name without suffix.
    tile : int, optional
        Tile edge in pixels, a multiple of 16.
    overwrite : bool, optional
        Replace an existing ``path``.
    progress : callable, optional
        Called with the number of level-0 tiles just written, once per band of
        ``tile`` rows (per channel plane for non-RGB); the calls add up to
        :func:`level0_tile_count`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    OutputError
        If the output directory is missing or not writable.
    ValueError
        If the levels, options or associated images are inconsistent.
    """
    import tifffile  # heavy; only the writing path needs it

    path = Path(path).absolute()
    channels, dtype = check_levels(levels, rgb=rgb)
    ome_pixel_type(dtype)
    compression = check_compression(compression, rgb=rgb, quality=jpeg_quality)
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile!r}")
    mpp = check_mpp(mpp)
    names = _channel_names(channel_names, rgb=rgb, channels=channels)
    extra = _check_associated(associated)
    check_output(path, overwrite=overwrite)

    base = tuple(int(v) for v in levels[0].shape)
    images = [
        OmeImage(
            name or image_stem(path), base[0], base[1], channels, dtype, rgb, 0, names, mpp
        )
    ]
    for key, image in extra.items():
        ifd = images[-1].first_ifd + images[-1].ifd_count
        height, width = image.shape[:2]
        images.append(OmeImage(key, height, width, 3, image.dtype, True, ifd))
    omexml = build_ome_xml(
        images, annotations=annotations, creator=f"wsi-deepr {__version__}"
    )
    logger.info("writing %s: %d level(s) of %s %s", path, len(levels), base, dtype)
    with atomic_file(path) as handle, tifffile.TiffWriter(handle, bigtiff=True, ome=False) as writer:
        _write_pyramid(writer, levels, rgb=rgb, tile=tile, compression=compression, jpeg_quality=jpeg_quality,
                       mpp=mpp, description=omexml, progress=_Progress(progress))
        _write_associated(writer, extra, compression=compression, jpeg_quality=jpeg_quality)
    logger.info("wrote %s", path)
    return path
