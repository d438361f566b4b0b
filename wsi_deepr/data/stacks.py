"""Read focal series (z-stacks): multi-page TIFF / OME-TIFF or a folder of planes.

A :class:`ZStack` keeps every plane as ``(Y, X, C)`` in its native dtype; the
planes of a folder may differ in size (registration crops them to the common
field).  Plane labels come from the file names (``z-09.bmp`` ... ``z+09.bmp``,
or the last number in the name) or are ``0..Z-1`` for a TIFF.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_deepr.errors import SlideNotFoundError, UnsupportedFormatError

__all__ = ["PLANE_SUFFIXES", "ZStack", "read_stack", "to_gray"]

log = logging.getLogger(__name__)

#: File suffixes read as planes from a folder.
PLANE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")
_Z_LABEL = re.compile(r"(?:^|[^a-z])z[_=]?([+-]?\d+)", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"([+-]?\d+)(?!.*\d)")


@dataclass
class ZStack:
    """A focal series of one field of view.

    Attributes
    ----------
    planes : list of numpy.ndarray
        ``(Y, X, C)`` planes in acquisition order (sorted by ``z_index``).
    z_index : numpy.ndarray
        Integer label of every plane (its position along z in steps).
    z_step_um : float or None
        Axial step in µm, ``None`` when unknown.
    pixel_size_um : float or None
        Lateral pixel size in µm, ``None`` when unknown.
    modality : str
        ``"brightfield"`` or ``"fluorescence"``.
    source : str
        Path the stack came from.
    channel_names : tuple of str
        One name per channel.
    metadata : dict
        What the reader found (for provenance).
    """

    planes: list[np.ndarray]
    z_index: np.ndarray
    z_step_um: float | None
    pixel_size_um: float | None
    modality: str
    source: str
    channel_names: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.planes)

    @property
    def n_channels(self) -> int:
        """Channels per plane."""
        return int(self.planes[0].shape[2])

    @property
    def dtype(self) -> np.dtype:
        """Pixel type of the planes."""
        return self.planes[0].dtype

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """``(Y, X)`` of every plane."""
        return [p.shape[:2] for p in self.planes]

    def z_um(self, reference: int = 0) -> np.ndarray:
        """Defocus of every plane in µm relative to plane *label* ``reference``.

        Raises
        ------
        ValueError
            When the axial step is unknown.
        """
        if self.z_step_um is None:
            raise ValueError(
                f"z_step_um is unknown for {self.source}: pass z_step_um= to read_stack "
                "(the axial step of the focal series in µm)"
            )
        return (self.z_index - reference).astype(np.float64) * self.z_step_um


def to_gray(plane: np.ndarray) -> np.ndarray:
    """Float64 luminance of a ``(Y, X, C)`` plane (mean of the channels, Rec.601 for RGB)."""
    arr = np.asarray(plane, dtype=np.float64)
    if arr.ndim == 2:
        return arr
    if arr.shape[2] == 3:
        return arr @ np.array([0.299, 0.587, 0.114])
    return arr.mean(axis=2)


def _guess_modality(plane: np.ndarray) -> str:
    return "brightfield" if plane.shape[2] == 3 and plane.dtype == np.uint8 else "fluorescence"


def _label(name: str) -> int | None:
    m = _Z_LABEL.search(Path(name).stem)
    if m is None:
        m = _LAST_NUMBER.search(Path(name).stem)
    return int(m.group(1)) if m else None


def _read_plane(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = tifffile.imread(path)
    else:
        import skimage.io

        arr = skimage.io.imread(path)
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 3 and arr.shape[2] == 4:  # RGBA -> RGB
        arr = arr[:, :, :3]
    if arr.ndim != 3:
        raise UnsupportedFormatError(f"{path}: a plane of shape {arr.shape}; expected (Y, X) or (Y, X, C)")
    return arr


def _read_folder(folder: Path) -> tuple[list[np.ndarray], np.ndarray, dict]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PLANE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise UnsupportedFormatError(
            f"{folder}: found {len(files)} plane images ({', '.join(PLANE_SUFFIXES)}); "
            "a focal series needs at least 2"
        )
    labels = [_label(p.name) for p in files]
    if any(lab is None for lab in labels) or len(set(labels)) != len(labels):
        log.warning("%s: plane names carry no distinct z labels; using sorted order", folder)
        labels = list(range(len(files)))
    order = np.argsort(labels, kind="stable")
    planes = [_read_plane(files[i]) for i in order]
    return planes, np.asarray(labels)[order], {"files": [files[i].name for i in order]}


def _ome_float(xml: str, key: str) -> float | None:
    m = re.search(rf'\b{key}="([0-9.eE+-]+)"', xml)
    return float(m.group(1)) if m else None


def _read_tiff(path: Path, channel: int | None) -> tuple[list[np.ndarray], np.ndarray, dict]:
    import tifffile

    meta: dict = {}
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes.upper()
        data = series.asarray()
        if tif.ome_metadata:
            meta["physical_size_z_um"] = _ome_float(tif.ome_metadata, "PhysicalSizeZ")
            meta["physical_size_x_um"] = _ome_float(tif.ome_metadata, "PhysicalSizeX")
    # reduce to Z, Y, X, C
    for ax in "TR":
        if ax in axes:
            data = np.take(data, 0, axis=axes.index(ax))
            axes = axes.replace(ax, "")
    for ax in "IQ":  # unnamed page axes of a plain multi-page TIFF
        if ax in axes and "Z" not in axes:
            axes = axes.replace(ax, "Z")
    if "Z" not in axes:
        raise UnsupportedFormatError(
            f"{path}: series axes {series.axes!r} have no Z (or page) axis; "
            "save the focal series as a multi-page TIFF or pass a folder of planes"
        )
    chan_ax = "C" if "C" in axes else ("S" if "S" in axes else None)
    if chan_ax is None:
        data = data[..., None]
        axes += "C"
        chan_ax = "C"
    order = [axes.index(a) for a in ("Z", "Y", "X", chan_ax)]
    if len(order) != data.ndim:
        raise UnsupportedFormatError(f"{path}: cannot interpret series axes {series.axes!r}")
    data = np.transpose(data, order)
    if channel is not None:
        data = data[..., channel : channel + 1]
    planes = [np.ascontiguousarray(p) for p in data]
    return planes, np.arange(len(planes)), meta


def read_stack(
    path: str | Path,
    *,
    z_step_um: float | None = None,
    pixel_size_um: float | None = None,
    modality: str | None = None,
    channel: int | None = None,
    planes: Sequence[int] | None = None,
) -> ZStack:
    """Read a focal series from a multi-page (OME-)TIFF or a folder of plane images.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.ome.tif`` with a Z (or page) axis, or a folder of
        per-plane images named with their z label (``z-03.png``, ``plane_12.tif``).
    z_step_um : float, optional
        Axial step in µm; default from OME ``PhysicalSizeZ``, else unknown.
    pixel_size_um : float, optional
        Lateral pixel size; default from OME ``PhysicalSizeX``, else unknown.
    modality : {"brightfield", "fluorescence"}, optional
        Default: brightfield for 8-bit RGB, fluorescence otherwise.
    channel : int, optional
        Keep only this channel (TIFF with a channel axis).
    planes : sequence of int, optional
        Keep only these plane positions (after sorting by z).

    Returns
    -------
    ZStack
    """
    p = Path(path)
    if not p.exists():
        raise SlideNotFoundError(f"{p}: no such stack file or folder")
    if p.is_dir():
        plane_list, labels, meta = _read_folder(p)
        if channel is not None:
            plane_list = [q[..., channel : channel + 1] for q in plane_list]
    elif p.suffix.lower() in (".tif", ".tiff"):
        plane_list, labels, meta = _read_tiff(p, channel)
    else:
        raise UnsupportedFormatError(
            f"{p}: not a stack; give a multi-page .tif/.ome.tif or a folder of plane images"
        )
    if planes is not None:
        keep = list(planes)
        plane_list = [plane_list[i] for i in keep]
        labels = labels[keep]
    nch = {q.shape[2] for q in plane_list}
    if len(nch) != 1:
        raise UnsupportedFormatError(f"{p}: planes have different channel counts {sorted(nch)}")
    step = z_step_um if z_step_um is not None else meta.get("physical_size_z_um")
    pix = pixel_size_um if pixel_size_um is not None else meta.get("physical_size_x_um")
    mod = modality if modality is not None else _guess_modality(plane_list[0])
    if mod not in ("brightfield", "fluorescence"):
        raise ValueError(f"modality={modality!r}: use 'brightfield' or 'fluorescence'")
    c = plane_list[0].shape[2]
    names = ("R", "G", "B") if c == 3 and mod == "brightfield" else tuple(f"C{i}" for i in range(c))
    log.info("read %d planes from %s (sizes %s..%s)", len(plane_list), p,
             min(q.shape[:2] for q in plane_list), max(q.shape[:2] for q in plane_list))
    return ZStack(planes=plane_list, z_index=np.asarray(labels, dtype=np.int64),
                  z_step_um=None if step is None else float(step),
                  pixel_size_um=None if pix is None else float(pix), modality=mod,
                  source=str(p), channel_names=names, metadata=meta)
