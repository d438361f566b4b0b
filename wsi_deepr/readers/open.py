"""``open_slide``: the single entry point that picks a reader backend.

Detection order
---------------
1. The path must be an existing, non-empty regular file.
2. A TIFF (by magic number) must be complete: every strip/tile and image
   directory inside the file (both backends would only fail later, lazily).
3. ``openslide.OpenSlide.detect_format`` names the vendor, if any.
4. TIFF files (by magic number) that OpenSlide calls ``aperio`` or
   ``generic-tiff``, or does not recognise (OME-TIFF, QPTIFF, ImageJ, ...), are
   read with tifffile, whose pixels equal OpenSlide's for these formats.
5. Every other format OpenSlide recognises (NDPI, MRXS, SCN, BIF, VMS,
   Philips TIFF, DICOM, ...) is read with OpenSlide.
6. Anything else is an :class:`~wsi_deepr.errors.UnsupportedFormatError`,
   naming the format when its magic number is known (PNG, JPEG, ZIP, ...).
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import numpy as np

from wsi_deepr.errors import CorruptSlideError, SlideNotFoundError, UnsupportedFormatError
from wsi_deepr.readers.slide import Modality, Slide

__all__ = ["SUPPORTED_FORMATS", "open_slide"]

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = (
    "TIFF-based slides (Aperio SVS, OME-TIFF, PerkinElmer QPTIFF, ImageJ TIFF, generic TIFF) "
    "and the OpenSlide formats (Hamamatsu NDPI/VMS, MIRAX MRXS, Leica SCN, Ventana BIF, "
    "Philips TIFF, Sakura SVSLIDE, DICOM)"
)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_OTHER_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xffO\xffQ", "a JPEG 2000 codestream"),
    (b"PK\x03\x04", "a ZIP archive (unzip it first if it holds a slide)"),
    (b"ZISRAWFILE", "a Zeiss CZI file"),
    (b"\x89HDF", "an HDF5 file"),
    (b"%PDF", "a PDF document"),
)
_TIFFFILE_VENDORS = {None, "aperio", "generic-tiff"}
_BACKENDS = ("auto", "openslide", "tifffile")


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        hint = "" if p.is_absolute() else f" (relative to {Path.cwd()})"
        raise SlideNotFoundError(f"{p}: file not found{hint}; check the slide path")
    if p.is_dir():
        mrxs = p.resolve().with_suffix(".mrxs") if p.resolve().name else None
        hint = f"pass {mrxs} instead" if mrxs and mrxs.is_file() else (
            "for MIRAX pass the .mrxs file that sits next to this folder")
        raise SlideNotFoundError(f"{p}: is a directory, not a slide file; {hint}")
    if not p.is_file():
        raise SlideNotFoundError(f"{p}: is not a regular file; pass the slide file itself")
    if p.stat().st_size == 0:
        raise CorruptSlideError(f"{p}: file is empty (0 bytes); copy the slide again")
    return p


def _detect_vendor(path: Path) -> str | None:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception as exc:  # OpenSlide's detection is best effort here
        logger.debug("openslide.detect_format(%s) failed: %r", path, exc)
        return None


def _not_a_slide(path: Path, head: bytes) -> UnsupportedFormatError:
    what = next((name for magic, name in _OTHER_MAGIC if head.startswith(magic)), None)
    if what is None:
        return UnsupportedFormatError(
            f"{path}: not an image (unrecognised content); supported: {SUPPORTED_FORMATS}")
    return UnsupportedFormatError(
        f"{path}: is {what}, not a whole-slide image; supported: {SUPPORTED_FORMATS}; "
        "convert the image to OME-TIFF (e.g. bfconvert, or tifffile.imwrite(..., ome=True))")


def _choose_backend(path: Path, head: bytes, backend: str) -> str:
    is_tiff = head[:4] in _TIFF_MAGIC
    if backend == "tifffile":
        if not is_tiff:
            if _detect_vendor(path) is None:
                raise _not_a_slide(path, head)
            raise UnsupportedFormatError(
                f"{path}: not a TIFF file, so backend='tifffile' cannot read it; "
                "use backend='auto'")
        return "tifffile"
    vendor = _detect_vendor(path)
    logger.debug("%s: TIFF=%s, OpenSlide vendor=%s", path, is_tiff, vendor)
    if backend == "openslide":
        if vendor is None:
            if is_tiff:
                raise UnsupportedFormatError(f"{path}: OpenSlide does not recognise this TIFF; "
                                             "use backend='auto' or 'tifffile'")
            raise _not_a_slide(path, head)
        return "openslide"
    if is_tiff and vendor in _TIFFFILE_VENDORS:
        return "tifffile"
    if vendor is not None:
        return "openslide"
    raise _not_a_slide(path, head)


def open_slide(
    path: str | os.PathLike[str],
    *,
    modality: str | Modality = "auto",
    tile: int = 512,
    backend: str = "auto",
) -> Slide:
    """Open a whole-slide image or large microscopy image for reading.

    Parameters
    ----------
    path : str or path-like
        The slide file (for MIRAX the ``.mrxs`` file).
    modality : {"auto", "brightfield", "fluorescence"}
        Override the detected modality; ``"auto"`` keeps it (3-channel uint8
        RGB is brightfield, everything else fluorescence).
    tile : int
        Chunk size of the Dask arrays in :attr:`Slide.levels`.
    backend : {"auto", "openslide", "tifffile"}
        Force a reader backend; ``"auto"`` picks one (see the module notes).

    Returns
    -------
    Slide
        The opened slide; ``slide.backend`` says which backend reads it.

    Raises
    ------
    SlideNotFoundError
        ``path`` does not exist, or is a directory.
    CorruptSlideError
        The file is empty, truncated or damaged.
    UnsupportedFormatError
        The file is not a slide format that either backend reads.
    ValueError
        ``modality``, ``tile`` or ``backend`` is invalid.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(_BACKENDS)}")
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile={tile!r} must be a positive integer")
    tile = int(tile)
    if not (isinstance(modality, str) and modality.strip().lower() == "auto"):
        Modality.parse(modality)  # fail before touching the file
    p = _check_path(path).absolute()  # readers may run in processes with another cwd
    with p.open("rb") as fh:
        head = fh.read(16)
    if head[:4] in _TIFF_MAGIC:
        _check_tiff_complete(p)
    if _choose_backend(p, head, backend) == "tifffile":
        from wsi_deepr.readers.tiff_backend import open_tiff_slide

        slide = open_tiff_slide(p, tile=tile)
    else:
        from wsi_deepr.readers.openslide_backend import open_openslide_slide

        slide = open_openslide_slide(p, tile=tile)
    logger.debug("opened %s with %s as %s", p, slide.backend, slide.format)
    return slide.with_modality(modality)


def _check_tiff_complete(path: Path) -> None:
    """Raise :class:`CorruptSlideError` if the TIFF-based file at ``path`` is truncated.

    Both backends open files lazily, so a truncated slide would otherwise fail only
    when its last tiles are read.  Every strip/tile of every series and level must
    end inside its file, and the last image directory must not point past the end.
    Files that tifffile cannot parse are left to the backends to report.
    """
    import tifffile

    from wsi_deepr.readers.tiff_backend import quiet_tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            problem = _truncation(tif)
    except Exception as exc:  # reported by the backend that reads the file
        logger.debug("truncation check of %s skipped: tifffile raised %r", path, exc)
        return
    if problem:
        raise CorruptSlideError(
            f"{path}: the file is truncated ({problem}); copy it again from the scanner or archive")


def _truncation(tif) -> str | None:
    """Describe why the open TIFF ``tif`` looks truncated, or return ``None``."""
    if not len(tif.pages):
        return "no readable image directory"
    for series in tif.series:
        for level in series.levels:
            for page in level.pages:
                if page is None:
                    continue
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                ends = np.asarray(page.dataoffsets, dtype=np.int64) + counts
                size = page.parent.filehandle.size
                if int(ends[counts > 0].max(initial=0)) > size:
                    return f"image data of {series.name or 'an image'} ends past its {size} bytes"
    if not tif.is_ndpi and _next_ifd_offset(tif) >= tif.filehandle.size:
        return "an image directory points past the end of the file"
    return None


def _next_ifd_offset(tif) -> int:
    """Return the next-IFD offset stored after the last page that tifffile parsed."""
    fmt, fh, last = tif.tiff, tif.filehandle, tif.pages[-1]
    with fh.lock:
        fh.seek(last.offset)
        (ntags,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
        fh.seek(last.offset + fmt.tagnosize + ntags * fmt.tagsize)
        raw = fh.read(fmt.offsetsize)
    if len(raw) != fmt.offsetsize:
        return fh.size  # the directory itself is cut short
    return int(struct.unpack(fmt.byteorder + fmt.offsetformat[-1], raw)[0])
