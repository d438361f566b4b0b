"""Streaming writer of OME-Zarr (OME-NGFF 0.4, zarr format 2) multiscale images.

Layout of ``<name>.ome.zarr/`` (what ``ome-zarr``, napari, OMERO and
bioformats2raw-era readers expect):

* a zarr v2 group whose attributes hold ``multiscales`` (NGFF 0.4: axes
  ``c, y, x`` with ``y``/``x`` in ``micrometer`` when the pixel size is known,
  one ``scale`` coordinate transform per level), ``omero`` (channel labels,
  colours and display windows; brightfield RGB is a ``c`` axis of three
  channels ``R, G, B`` coloured red/green/blue) and ``wsi_deepr`` (the
  provenance record, JSON values parsed back to objects);
* one array per level, ``0``, ``1``, ..., shape ``(C, Y, X)``, chunks
  ``(1, 512, 512)``, ``/`` as the chunk-key separator, Blosc-zstd.

NGFF orders axes channel-before-space, whereas the scratch pyramid of
:func:`wsi_deepr.pyramid.build_pyramid` is ``(Y, X, C)``, so its chunks cannot
be moved into place as they are: every level is copied in ONE streaming pass,
one band of ``chunk`` rows at a time (read once, transposed, recompressed),
peak memory ``O(width * chunk * C)``.  No level is recomputed from another: the
reduced levels are the scratch pyramid's, read as they are.  For fluorescence
the smallest level (at most 1024 px a side in ``refocus``) is also read whole
once, for the per-channel display windows (0.1 / 99.9 percentiles).

The image is written into a hidden folder ``.<stem>.<random>.tmp`` beside the
target and renamed at the end, so a failure never leaves a partial output
(an existing output replaced with ``overwrite`` is renamed aside first and
deleted once the new one is in place).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_deepr._version import __version__
from wsi_deepr.writers.atomic import atomic_folder
from wsi_deepr.writers.levels import check_levels, check_mpp
from wsi_deepr.writers.paths import check_output, image_stem

__all__ = ["NGFF_VERSION", "write_ome_zarr"]

logger = logging.getLogger(__name__)

#: OME-NGFF version of the metadata written.
NGFF_VERSION = "0.4"

_RGB_COLOURS = ("FF0000", "00FF00", "0000FF")
_PALETTE = ("0000FF", "00FF00", "FF0000", "FFFF00", "FF00FF", "00FFFF", "FFFFFF", "FF8000")
_PREFIX = "wsi_deepr."


def _channels(
    names: Sequence[str] | None, *, rgb: bool, channels: int, dtype: np.dtype,
    window: np.ndarray,
) -> list[dict[str, Any]]:
    """The ``omero.channels`` entries: label, colour and display window."""
    if rgb:
        if channels != 3 or dtype != np.uint8:
            raise ValueError(
                f"rgb=True needs uint8 levels with 3 channels, got {channels} "
                f"channel(s) of {dtype}"
            )
        labels, colours = ["R", "G", "B"], list(_RGB_COLOURS)
    else:
        if names and len(names) != channels:
            raise ValueError(f"channel_names has {len(names)} names for {channels} channel(s)")
        labels = list(names) if names else [f"Channel {i}" for i in range(channels)]
        colours = [_PALETTE[i % len(_PALETTE)] for i in range(channels)]
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        low, high = float(info.min), float(info.max)
    else:
        low, high = float(np.nanmin(window[0])), float(np.nanmax(window[1]))
    entries = []
    for i, (label, colour) in enumerate(zip(labels, colours, strict=True)):
        start, end = (low, high) if rgb else (float(window[0][i]), float(window[1][i]))
        entries.append({
            "label": str(label), "color": colour, "active": True,
            "coefficient": 1.0, "family": "linear", "inverted": False,
            "window": {"min": low, "max": high, "start": start, "end": max(end, start + 1e-6)},
        })
    return entries


def _window(level: Any) -> np.ndarray:
    """Per-channel 0.1 / 99.9 percentiles of the smallest level (display window)."""
    data = np.asarray(level[:]).reshape(-1, int(level.shape[2])).astype(np.float64)
    return np.nanpercentile(data, [0.1, 99.9], axis=0)


def _provenance(annotations: Mapping[str, str] | None) -> dict[str, Any]:
    """``wsi_deepr.*`` key/values as a JSON object (prefix removed, JSON parsed)."""
    record: dict[str, Any] = {}
    for key, text in (annotations or {}).items():
        value: Any = text
        if isinstance(text, str) and (text[:1] in "{[" or text.isdigit()):
            try:
                value = json.loads(text)
            except ValueError:
                pass
        record[key.removeprefix(_PREFIX)] = value
    return record


def _multiscales(
    name: str, shapes: Sequence[tuple[int, ...]], mpp: tuple[float, float] | None
) -> list[dict[str, Any]]:
    unit = {"unit": "micrometer"} if mpp is not None else {}
    base = shapes[0]
    pixel = mpp if mpp is not None else (1.0, 1.0)
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [{
                "type": "scale",
                "scale": [1.0, pixel[0] * (base[0] / s[0]), pixel[1] * (base[1] / s[1])],
            }],
        }
        for i, s in enumerate(shapes)
    ]
    return [{
        "version": NGFF_VERSION,
        "name": name,
        "axes": [
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", **unit},
            {"name": "x", "type": "space", **unit},
        ],
        "datasets": datasets,
        "type": "mean",
        "metadata": {"method": "wsi_deepr.imaging.pyramid.downsample2 (2x2 mean)",
                     "version": __version__},
    }]


def _copy_level(
    level: Any, dst: Any, *, chunk: int, report: Callable[[int], None] | None,
    per_band: int,
) -> None:
    """Copy ``(Y, X, C)`` ``level`` into ``(C, Y, X)`` ``dst`` band by band."""
    height = int(level.shape[0])
    for y0 in range(0, height, chunk):
        y1 = min(y0 + chunk, height)
        band = np.asarray(level[y0:y1])
        dst[:, y0:y1, :] = np.ascontiguousarray(band.transpose(2, 0, 1))
        del band
        if report is not None:
            report(per_band)


def write_ome_zarr(
    path: str | os.PathLike[str],
    levels: Sequence[Any],
    *,
    mpp: tuple[float, float] | None = None,
    channel_names: Sequence[str] | None = None,
    rgb: bool,
    annotations: Mapping[str, str] | None = None,
    chunk: int = 512,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a pyramid as an OME-Zarr (NGFF 0.4, zarr v2) multiscale image.

    Parameters
    ----------
    path : str or os.PathLike
        Output folder, conventionally ``*.ome.zarr``.
    levels : sequence of array-like
        Pyramid levels ``(Y, X, C)`` (zarr arrays in practice), level 0 first,
        each smaller than the previous one, one dtype; read in bands of
        ``chunk`` rows, never whole.
    mpp : tuple of float, optional
        Level-0 pixel size ``(y, x)`` in micrometres.  Each level gets a
        ``scale`` transform ``[1, mpp_y * Y0 / Y, mpp_x * X0 / X]`` and the
        spatial axes the unit ``micrometer``; without it the scales are in
        level-0 pixels and the axes have no unit.
    channel_names : sequence of str, optional
        One name per channel (fluorescence); RGB channels are ``R, G, B``.
    rgb : bool
        Brightfield RGB (uint8, ``C == 3``), shown as red/green/blue channels.
    annotations : mapping of str to str, optional
        Provenance key/values (``wsi_deepr.*``), stored as the group attribute
        ``wsi_deepr`` with the prefix removed and JSON values parsed.
    chunk : int, optional
        Chunk edge in pixels (chunks are ``(1, chunk, chunk)``).
    overwrite : bool, optional
        Replace an existing ``path``: a file, or a folder that is a zarr store
        (a previous output); any other folder is refused, never deleted.
    progress : callable, optional
        Called with the number of level-0 tiles (per channel plane for
        non-RGB) just written, once per band; the calls add up to
        :func:`wsi_deepr.io.ometiff.level0_tile_count` with ``tile=chunk``.

    Returns
    -------
    pathlib.Path
        ``path`` (absolute).

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    OutputError
        If the output directory is missing or not writable, or ``path`` is a
        folder that is not a zarr store.
    ValueError
        If the levels or options are inconsistent.
    """
    import zarr
    from numcodecs import Blosc

    path = Path(path).absolute()
    channels, dtype = check_levels(levels)
    if chunk < 16:
        raise ValueError(f"chunk must be at least 16, got {chunk!r}")
    mpp = check_mpp(mpp)
    omero_channels = _channels(
        channel_names, rgb=rgb, channels=channels, dtype=dtype,
        window=_window(levels[-1]) if not rgb else np.zeros((2, channels)),
    )
    check_output(path, overwrite=overwrite)
    stem = image_stem(path)
    shapes = [tuple(int(v) for v in level.shape) for level in levels]
    attributes = {
        "multiscales": _multiscales(stem, shapes, mpp),
        "omero": {
            "name": stem, "version": NGFF_VERSION, "channels": omero_channels,
            "rdefs": {"model": "color", "defaultZ": 0, "defaultT": 0},
        },
        "wsi_deepr": _provenance(annotations),
    }
    per_band = math.ceil(shapes[0][1] / chunk) * (1 if rgb else channels)
    logger.info("writing %s: %d level(s) of %s %s", path, len(levels), shapes[0], dtype)
    with atomic_folder(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        for index, (level, shape) in enumerate(zip(levels, shapes, strict=True)):
            dst = group.create_array(
                str(index), shape=(channels, shape[0], shape[1]), dtype=dtype,
                chunks=(1, min(chunk, shape[0]), min(chunk, shape[1])),
                compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE),
                chunk_key_encoding={"name": "v2", "separator": "/"},
                fill_value=0,
            )
            _copy_level(level, dst, chunk=chunk, per_band=per_band,
                        report=progress if index == 0 else None)
        group.attrs.update(attributes)  # last: a complete image only
    logger.info("wrote %s", path)
    return path
