"""Output paths: default names, name stems, and the checks an output path must pass.

One place for the suffixes wsi-deepr strips from image names and for what
makes an output path unusable, shared by :func:`wsi_deepr.api.refocus`, the
writers and :mod:`wsi_deepr.batch`.  Pure path logic; the only file-system
access is looking at the path and its folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsi_deepr.errors import OutputError, OutputExistsError

__all__ = ["IMAGE_SUFFIXES", "OUTPUT_SUFFIX", "check_output", "default_output_path", "image_stem"]

#: multi-part and TIFF suffixes removed from an image's name to get its stem (longest first)
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".qptiff", ".tiff", ".tif")
#: what ``refocus`` appends to a slide's stem by default
OUTPUT_SUFFIX = ".refocused.ome.tif"


def image_stem(path: str | os.PathLike) -> str:
    """The name of ``path`` without its image suffix (``a.ome.tif`` → ``a``, ``b.svs`` → ``b``)."""
    path = Path(path)
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem or name


def default_output_path(slide_path: str | os.PathLike) -> Path:
    """``<stem>.refocused.ome.tif`` beside the input."""
    path = Path(slide_path)
    return path.with_name(image_stem(path) + OUTPUT_SUFFIX)


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
        ``output`` is the input or a folder, or its folder is missing or not writable.
    OutputExistsError
        ``output`` exists and ``overwrite`` is false.
    """
    output = Path(output)
    if source is not None and output.exists() and output.resolve() == Path(source).resolve():
        raise OutputError(f"output {output} is the input slide; choose another path with -o")
    if output.is_dir():
        raise OutputError(f"output {output} is a directory; give a file path such as {output / 'out.ome.tif'}")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output {output} exists; pass --overwrite to replace it")
    folder = output.parent
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable; choose another with -o")
