"""Choice of the output format from the output name (pure: no I/O).

=============  ==========================================  ==================
format         suffixes                                    writer
=============  ==========================================  ==================
``ome-tiff``   ``.ome.tif``, ``.ome.tiff``                 ``write_ome_tiff``
``tiff``       ``.tif``, ``.tiff`` (and ``.svs``)          ``write_tiled_tiff``
``ome-zarr``   ``.ome.zarr``, ``.zarr``                    ``write_ome_zarr``
=============  ==========================================  ==================

Suffixes are matched case-insensitively, longest first, so ``a.ome.tif`` is an
OME-TIFF and ``a.tif`` an OpenSlide-readable TIFF.  An explicit format
(``--format``) always wins over the suffix.
"""

from __future__ import annotations

import os

from wsi_deepr.errors import OutputError

__all__ = [
    "OUTPUT_FORMATS", "SUFFIXES", "check_output_format", "default_output_name", "format_for",
]

#: Output formats, in the order the CLI lists them.
OUTPUT_FORMATS = ("ome-tiff", "tiff", "ome-zarr")

#: Suffix of each format, the first being the one :func:`default_output_name` uses.
SUFFIXES: dict[str, tuple[str, ...]] = {
    "ome-tiff": (".ome.tif", ".ome.tiff"),
    "tiff": (".tif", ".tiff", ".svs"),
    "ome-zarr": (".ome.zarr", ".zarr"),
}


def _check_format(fmt: str) -> str:
    value = str(fmt).strip().lower()
    if value not in OUTPUT_FORMATS:
        raise ValueError(
            f"output format must be one of {', '.join(OUTPUT_FORMATS)} (or auto), "
            f"got {fmt!r}"
        )
    return value


def format_for(path: str | os.PathLike[str], fmt: str = "auto") -> str:
    """Return the output format of ``path``: ``fmt`` unless ``"auto"``, else by suffix.

    Parameters
    ----------
    path : str or os.PathLike
        Output path; only its name is looked at.
    fmt : {"auto", "ome-tiff", "tiff", "ome-zarr"}, optional
        Explicit format (the CLI's ``--format``); wins over the suffix.

    Returns
    -------
    str
        One of :data:`OUTPUT_FORMATS`.

    Raises
    ------
    ValueError
        If ``fmt`` is not a known format, or it is ``"auto"`` and the suffix of
        ``path`` names none (the message lists the suffixes and ``--format``).

    Examples
    --------
    >>> format_for("slide.ome.tif"), format_for("slide.tiff"), format_for("s.ome.zarr")
    ('ome-tiff', 'tiff', 'ome-zarr')
    >>> format_for("slide.dat", "tiff")
    'tiff'
    """
    if str(fmt).strip().lower() != "auto":
        return _check_format(fmt)
    name = os.path.basename(os.fspath(path).rstrip("/\\")).lower()
    matches = [
        (len(suffix), key)
        for key, suffixes in SUFFIXES.items()
        for suffix in suffixes
        if name.endswith(suffix) and len(name) > len(suffix)
    ]
    if not matches:
        known = ", ".join(s for suffixes in SUFFIXES.values() for s in suffixes)
        raise ValueError(
            f"cannot tell the output format of {os.fspath(path)!r} from its suffix: "
            f"use one of {known}, or give --format {'/'.join(OUTPUT_FORMATS)}"
        )
    return max(matches)[1]


def default_output_name(stem: str, fmt: str) -> str:
    """Return the default output file name for ``stem`` in format ``fmt``.

    Parameters
    ----------
    stem : str
        Name without suffix, e.g. ``"CMU-1.refocused"``.
    fmt : {"ome-tiff", "tiff", "ome-zarr"}
        Output format.

    Returns
    -------
    str
        ``stem`` plus the format's first suffix: ``.ome.tif``, ``.tif`` or
        ``.ome.zarr``.

    Raises
    ------
    ValueError
        If ``fmt`` is unknown or ``stem`` is empty.

    Examples
    --------
    >>> default_output_name("a.refocused", "ome-zarr")
    'a.refocused.ome.zarr'
    """
    if not stem:
        raise ValueError("stem must not be empty")
    return f"{stem}{SUFFIXES[_check_format(fmt)][0]}"


def check_output_format(
    path: str | os.PathLike[str], fmt: str = "auto", *, rgb: bool
) -> str:
    """Return the format of ``path`` (as :func:`format_for`), refusing what it cannot hold.

    Meant to be called before any pixel is computed, so that a run that could
    not be written stops at once.  Only the OpenSlide TIFF is restricted: it
    holds 8-bit RGB only (what OpenSlide decodes).

    Parameters
    ----------
    path : str or os.PathLike
        Output path.
    fmt : {"auto", "ome-tiff", "tiff", "ome-zarr"}, optional
        Explicit format (``--format``).
    rgb : bool
        Whether the image is brightfield RGB (uint8, three samples).

    Returns
    -------
    str
        One of :data:`OUTPUT_FORMATS`.

    Raises
    ------
    ValueError
        As :func:`format_for`.
    OutputError
        If the format is ``"tiff"`` and ``rgb`` is false.
    """
    value = format_for(path, fmt)
    if value == "tiff" and not rgb:
        raise OutputError(
            f"cannot write {os.fspath(path)} as an OpenSlide TIFF: OpenSlide reads "
            f"8-bit RGB only and this image is not brightfield RGB; write an OME-TIFF "
            f"(--format ome-tiff, -o *.ome.tif) or OME-Zarr (--format ome-zarr, "
            f"-o *.ome.zarr) instead"
        )
    return value
