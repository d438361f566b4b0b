"""The :class:`Slide` model shared by every reader backend.

A slide is a pyramid of levels, each exposed as a lazy Dask array of shape
``(Y, X, C)`` whose chunks are aligned to the processing tile grid.  Pixel access
goes through a *region reader*: a small picklable object (path + backend
parameters) that opens the file lazily, once per process, so that Dask tasks can
run in threads or in worker processes without shipping file handles around.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Modality", "RegionReader", "Slide", "level_array"]


class Modality(str, enum.Enum):
    """Imaging modality; decides the default model and the output encoding."""

    BRIGHTFIELD = "brightfield"
    FLUORESCENCE = "fluorescence"

    @classmethod
    def parse(cls, value: str | Modality) -> Modality:
        """Return the modality named by ``value`` (case-insensitive)."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(
                f"unknown modality {value!r}: use one of {choices}"
            ) from None


@runtime_checkable
class RegionReader(Protocol):
    """Picklable pixel access to one slide.

    Implementations keep only plain data (path, series index, ...) in their
    state and open the underlying file lazily and at most once per process.
    """

    def read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Return pixels ``[y0:y1, x0:x1]`` of ``level`` as ``(y1-y0, x1-x0, C)``.

        The region must lie inside the level; callers pad outside it.
        """
        ...


@dataclass(frozen=True)
class Slide:
    """A whole-slide image opened for reading.

    Attributes
    ----------
    path : Path
        The file that was opened.
    backend : str
        ``"openslide"`` or ``"tifffile"``.
    format : str
        Detected format, e.g. ``"aperio"``, ``"ome-tiff"``, ``"qptiff"``,
        ``"generic-tiff"``, ``"hamamatsu"``.
    reader : RegionReader
        Picklable region reader used by the Dask arrays and the pipeline.
    level_shapes : tuple of (int, int, int)
        ``(Y, X, C)`` of every pyramid level, level 0 first.
    dtype : numpy.dtype
        Pixel type (``uint8`` or ``uint16`` usually).
    mpp : tuple of (float, float) or None
        Microns per pixel ``(y, x)`` at level 0, or ``None`` when unknown.
    channel_names : tuple of str
        One name per channel.
    modality : Modality
        Brightfield RGB or fluorescence; see :meth:`with_modality`.
    associated : mapping of str to callable
        Associated images (``"label"``, ``"macro"``, ``"thumbnail"``), each a
        zero-argument callable returning an ``(Y, X, C)`` uint8 array.
    properties : mapping of str to str
        Raw vendor properties, for provenance.
    tile : int
        Chunk size of the Dask arrays in :attr:`levels`.
    """

    path: Path
    backend: str
    format: str
    reader: RegionReader
    level_shapes: tuple[tuple[int, int, int], ...]
    dtype: np.dtype
    mpp: tuple[float, float] | None
    channel_names: tuple[str, ...]
    modality: Modality
    associated: Mapping[str, Callable[[], np.ndarray]] = field(default_factory=dict)
    properties: Mapping[str, str] = field(default_factory=dict)
    tile: int = 512

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Y, X, C)`` of level 0."""
        return self.level_shapes[0]

    @property
    def n_channels(self) -> int:
        """Number of channels (3 for brightfield RGB)."""
        return self.level_shapes[0][2]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_shapes)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of every level relative to level 0 (mean of Y, X)."""
        y0, x0, _ = self.level_shapes[0]
        return tuple(0.5 * (y0 / y + x0 / x) for y, x, _ in self.level_shapes)

    @property
    def levels(self) -> tuple:
        """Every level as a lazy ``dask.array`` of shape ``(Y, X, C)``."""
        return tuple(level_array(self, i) for i in range(self.level_count))

    def read_region(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Read ``[y0:y1, x0:x1]`` of ``level`` as an ``(Y, X, C)`` array."""
        return self.reader.read(level, y0, x0, y1, x1)

    def with_modality(self, modality: str | Modality) -> Slide:
        """Return a copy with ``modality`` overridden (``"auto"`` keeps it)."""
        if isinstance(modality, str) and modality.strip().lower() == "auto":
            return self
        return replace(self, modality=Modality.parse(modality))

    def with_tile(self, tile: int) -> Slide:
        """Return a copy whose Dask arrays use ``tile``-sized chunks."""
        return replace(self, tile=int(tile))


class _LevelView:
    """Array-like adapter so that ``dask.array.from_array`` can slice a level."""

    def __init__(self, reader: RegionReader, level: int, shape, dtype) -> None:
        self.reader = reader
        self.level = level
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), self.shape[2]), self.dtype)[:, :, cs]
        return self.reader.read(self.level, y0, x0, y1, x1)[:, :, cs]


def level_array(slide: Slide, level: int):
    """Return ``level`` of ``slide`` as a Dask array chunked by ``slide.tile``."""
    import dask.array as da

    shape = slide.level_shapes[level]
    view = _LevelView(slide.reader, level, shape, slide.dtype)
    chunks = (slide.tile, slide.tile, shape[2])
    name = f"slide-{abs(hash((str(slide.path), slide.backend, level, slide.tile))):x}"
    return da.from_array(view, chunks=chunks, name=name, asarray=False, fancy=False)
