"""Output paths: formats by suffix, default names, name stems, and the checks an output path must pass.

One place for the suffixes wsi-deepr knows, for the output format a name
asks for, and for what makes an output path unusable, shared by
:func:`wsi_deepr.api.refocus`, the writers and :mod:`wsi_deepr.batch`.  Pure
path logic; the only file-system access is looking at the path and its folder.

=============  ==========================================  =====================================
format         suffixes                                    writer
=============  ==========================================  =====================================
``ome-tiff``   ``.ome.tif``, ``.ome.tiff``                 :mod:`wsi_deepr.writers.ometiff`
``tiff``       ``.tif``, ``.tiff`` (and ``.svs``)          :mod:`wsi_deepr.writers.generic_tiff`
``ome-zarr``   ``.ome.zarr``, ``.zarr``                    :mod:`wsi_deepr.writers.omezarr`
=============  ==========================================  =====================================

Suffixes are matched case-insensitively, longest first, so ``a.ome.tif`` is an
OME-TIFF and ``a.tif`` an OpenSlide-readable TIFF.  An explicit format
(``--format``) always wins over the suffix.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsi_deepr.errors import OptionError, OutputError, OutputExistsError

__all__ = [
    "IMAGE_SUFFIXES", "OUTPUT_FORMATS", "OUTPUT_SUFFIX", "SUFFIXES", "check_output", "check_output_format",
    "default_output_name", "default_output_path", "format_for", "image_stem", "is_zarr_store",
]

#: multi-part and TIFF suffixes removed from an image's name to get its stem (longest first)
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".qptiff", ".tiff", ".tif", ".zarr")
#: what ``refocus`` appends to a slide's stem by default
OUTPUT_SUFFIX = ".refocused.ome.tif"
_ZARR_MARKERS = (".zgroup", ".zarray", "zarr.json")


def image_stem(path: str | os.PathLike) -> str:
    """The name of ``path`` without its image suffix (``a.ome.tif`` → ``a``, ``b.svs`` → ``b``)."""
    path = Path(path)
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem or name


def default_output_path(slide_path: str | os.PathLike, fmt: str = "ome-tiff") -> Path:
    """``<stem>.refocused.ome.tif`` beside the input (``.tif`` / ``.ome.zarr`` for the other formats)."""
    path = Path(slide_path)
    fmt = "ome-tiff" if fmt == "auto" else fmt
    return path.with_name(default_output_name(image_stem(path) + OUTPUT_SUFFIX.removesuffix(".ome.tif"), fmt))


def is_zarr_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a zarr store (v2 or v3 metadata at its top)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and any((path / m).is_file() for m in _ZARR_MARKERS)


def check_output(output: str | os.PathLike, *, overwrite: bool, source: str | os.PathLike | None = None) -> None:
    """Raise unless ``output`` can be written.

    Parameters
    ----------
    output : path
        The file to write.
    overwrite : bool
        Whether an existing ``output`` may be replaced.
    source : path, optional
        The input it is made from (an output must never replace its input).

    Raises
    ------
    OutputError
        ``output`` is the input or a folder other than a zarr store, or its
        folder is missing or not writable.
    OutputExistsError
        ``output`` exists and ``overwrite`` is false.
    """
    output = Path(output)
    if source is not None and output.exists() and output.resolve() == Path(source).resolve():
        raise OutputError(f"output {output} is the input slide; choose another path with -o")
    if output.is_dir() and not is_zarr_store(output):
        # --overwrite replaces a previous output, never a folder of something else
        raise OutputError(f"output {output} is a folder that is not a zarr store; give a file path such as "
                          f"{output / 'out.ome.tif'}, or remove the folder yourself")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output {output} exists; pass --overwrite to replace it")
    folder = output.parent
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable; choose another with -o")


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
        raise OptionError(
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
    OptionError
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
        raise OptionError(
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
        raise OptionError("stem must not be empty")
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
    OptionError
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
