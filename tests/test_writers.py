"""Tests of the output writers of :mod:`wsi_deepr.writers`, read back by real readers.

Levels come from real shared slides (CMU-1-Small-Region: brightfield RGB;
small_vectra: 3-channel fluorescence; smalltif: 16-bit) pyramided with
:func:`wsi_deepr.pyramid.build_pyramid` into a zarr group on disk, as in
``refocus``.  The TIFF is read back with OpenSlide and Bio-Formats (QuPath's
reader), the OME-Zarr with ``ome-zarr`` (the NGFF reader) and validated with
``ome-zarr-models``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from . import bioformats_info as bf
from .conftest import shared_path
from wsi_deepr.errors import OutputError, OutputExistsError
from wsi_deepr.writers.ometiff import level0_tile_count
from wsi_deepr.imaging.pyramid import build_pyramid
from wsi_deepr.writers.paths import (
    OUTPUT_FORMATS,
    check_output_format,
    default_output_name,
    format_for,
)
from wsi_deepr.writers.generic_tiff import read_tiff_annotations, write_tiled_tiff
from wsi_deepr.writers.omezarr import write_ome_zarr

SLIDES = "slides"
MIN_SIZE = 400  # several levels from small slides
MPP = (0.499, 0.499)
ANNOTATIONS = {
    "wsi_deepr.model": "deepr-bf µ | a=b 100%",
    "wsi_deepr.parameters": '{"tile": 512, "halo": 32}',
    "wsi_deepr.windows": "42",
    "wsi_deepr.note": "two\nlines",
}


def _levels_of(image: np.ndarray, folder: Path) -> list[zarr.Array]:
    group = zarr.open_group(str(folder / "scratch.zarr"), mode="w")
    base = group.create_array(
        "0", shape=image.shape, chunks=(512, 512, image.shape[2]), dtype=image.dtype
    )
    base[:] = image
    return build_pyramid(base, group, min_size=MIN_SIZE)


def _read_slide(name: str) -> np.ndarray:
    from wsi_deepr.readers.open import open_slide

    slide = open_slide(shared_path(SLIDES, name))
    y, x, _ = slide.shape
    return np.asarray(slide.read_region(0, 0, 0, y, x))


@pytest.fixture(scope="module")
def rgb_levels(tmp_path_factory: pytest.TempPathFactory) -> list[zarr.Array]:
    image = _read_slide("CMU-1-Small-Region.svs")
    assert image.shape == (2967, 2220, 3) and image.dtype == np.uint8
    return _levels_of(image, tmp_path_factory.mktemp("rgb"))


@pytest.fixture(scope="module")
def associated() -> dict[str, np.ndarray]:
    import openslide

    with openslide.OpenSlide(shared_path(SLIDES, "CMU-1-Small-Region.svs")) as slide:
        return {k: np.asarray(v.convert("RGB")) for k, v in slide.associated_images.items()}


@pytest.fixture(scope="module")
def vectra_levels(tmp_path_factory: pytest.TempPathFactory) -> list[zarr.Array]:
    image = _read_slide("small_vectra.qptiff")  # (1440, 1920, 3) uint8 DAPI/FITC/Cy3
    return _levels_of(image, tmp_path_factory.mktemp("vectra"))


@pytest.fixture(scope="module")
def fluo16_levels(tmp_path_factory: pytest.TempPathFactory) -> list[zarr.Array]:
    plane = _read_slide("smalltif.tif")  # (480, 640, 1) uint16
    assert plane.dtype == np.uint16
    image = np.concatenate([plane, 65535 - plane], axis=2)
    return _levels_of(image, tmp_path_factory.mktemp("fluo16"))


@pytest.fixture(scope="module")
def tiff_file(
    tmp_path_factory: pytest.TempPathFactory,
    rgb_levels: list[zarr.Array],
    associated: dict[str, np.ndarray],
) -> tuple[Path, list[int]]:
    path = tmp_path_factory.mktemp("tiff") / "refocused.tiff"
    calls: list[int] = []
    out = write_tiled_tiff(
        path, rgb_levels, mpp=MPP, channel_names=None, rgb=True, compression="zlib",
        associated=associated, annotations=ANNOTATIONS, progress=calls.append,
    )
    assert out == path
    return path, calls


@pytest.fixture(scope="module")
def zarr_file(
    tmp_path_factory: pytest.TempPathFactory, rgb_levels: list[zarr.Array]
) -> tuple[Path, list[int]]:
    path = tmp_path_factory.mktemp("zarr") / "refocused.ome.zarr"
    calls: list[int] = []
    out = write_ome_zarr(
        path, rgb_levels, mpp=MPP, channel_names=None, rgb=True,
        annotations=ANNOTATIONS, progress=calls.append,
    )
    assert out == path
    return path, calls


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.ome.tif", "ome-tiff"), ("a.OME.TIFF", "ome-tiff"), ("a.tif", "tiff"),
        ("a.tiff", "tiff"), ("a.svs", "tiff"), ("a.ome.zarr", "ome-zarr"),
        ("a.zarr", "ome-zarr"), ("dir/a.ome.zarr/", "ome-zarr"),
        ("x.refocused.ome.tif", "ome-tiff"),
    ],
)
def test_format_by_suffix(name: str, fmt: str) -> None:
    assert format_for(name) == fmt
    assert format_for(Path(name.rstrip("/"))) == fmt


def test_explicit_format_wins_and_unknown_suffix_is_explained() -> None:
    assert format_for("a.ome.tif", "tiff") == "tiff"
    assert format_for("a.dat", "OME-Zarr") == "ome-zarr"
    with pytest.raises(ValueError, match=r"a\.png.*\.ome\.tif.*--format") as info:
        format_for("a.png")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="ome-tiff, tiff, ome-zarr"):
        format_for("a.tif", "png")
    with pytest.raises(ValueError):
        format_for(".tif")  # a suffix alone names no file


def test_default_output_name() -> None:
    names = [default_output_name("s.refocused", f) for f in OUTPUT_FORMATS]
    assert names == ["s.refocused.ome.tif", "s.refocused.tif", "s.refocused.ome.zarr"]
    assert [format_for(n) for n in names] == list(OUTPUT_FORMATS)
    with pytest.raises(ValueError):
        default_output_name("s", "png")


def test_check_output_format_refuses_fluorescence_tiff_before_any_work() -> None:
    assert check_output_format("a.tif", rgb=True) == "tiff"
    assert check_output_format("a.tif", "ome-zarr", rgb=False) == "ome-zarr"
    assert check_output_format("a.ome.tif", rgb=False) == "ome-tiff"
    with pytest.raises(OutputError, match=r"a\.tif.*--format ome-tiff.*--format ome-zarr"):
        check_output_format("a.tif", rgb=False)


# --------------------------------------------------------- TIFF x OpenSlide


def test_openslide_reads_every_level_losslessly(
    tiff_file: tuple[Path, list[int]], rgb_levels: list[zarr.Array]
) -> None:
    import openslide

    path, _ = tiff_file
    with openslide.OpenSlide(path) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert slide.level_count == len(rgb_levels) == 4
        assert slide.level_dimensions == tuple(
            (int(a.shape[1]), int(a.shape[0])) for a in rgb_levels
        )
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP[1])
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(MPP[0])
        for index, level in enumerate(rgb_levels):
            width, height = slide.level_dimensions[index]
            region = np.asarray(slide.read_region((0, 0), index, (width, height)))
            assert (region[..., 3] == 255).all()
            np.testing.assert_array_equal(region[..., :3], np.asarray(level[:]))
        # A window across tile edges (reduced levels have non-integer downsamples
        # in OpenSlide, so off-grid windows there are resampled: level 0 only).
        region = np.asarray(slide.read_region((501, 1003), 0, (300, 200)))
        np.testing.assert_array_equal(region[..., :3], rgb_levels[0][1003:1203, 501:801])


def test_openslide_sees_associated_images_and_provenance(
    tiff_file: tuple[Path, list[int]], associated: dict[str, np.ndarray]
) -> None:
    import openslide

    path, _ = tiff_file
    with openslide.OpenSlide(path) as slide:
        assert set(slide.associated_images) == {"label", "macro", "thumbnail"}
        label = np.asarray(slide.associated_images["label"].convert("RGB"))
        np.testing.assert_array_equal(label, associated["label"])  # lossless
        thumb = slide.associated_images["thumbnail"]
        assert thumb.size == associated["thumbnail"].shape[1::-1]
        assert slide.properties["aperio.wsi_deepr.windows"] == "42"
        assert slide.properties["aperio.MPP"] == "0.499"
    assert read_tiff_annotations(path) == ANNOTATIONS


def test_tiff_progress_counts_level0_tiles(
    tiff_file: tuple[Path, list[int]], rgb_levels: list[zarr.Array]
) -> None:
    _, calls = tiff_file
    assert len(calls) == -(-rgb_levels[0].shape[0] // 512)
    assert sum(calls) == level0_tile_count(rgb_levels[0].shape, rgb=True)


def test_tiff_default_jpeg_decodes_alike(
    tmp_path: Path, rgb_levels: list[zarr.Array]
) -> None:
    import openslide

    path = write_tiled_tiff(tmp_path / "j.tif", rgb_levels[:2], mpp=MPP, rgb=True)
    source = np.asarray(rgb_levels[1][:])
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
        assert tif.pages[1].is_tiled is False  # Aperio: IFD 1 is the thumbnail
        decoded = tif.pages[2].asarray()
    with openslide.OpenSlide(path) as slide:
        assert slide.level_count == 2
        assert list(slide.associated_images) == ["thumbnail"]  # derived
        region = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]))
    assert np.abs(region[..., :3].astype(int) - decoded).max() <= 2
    mse = np.mean((decoded.astype(float) - source) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30


def test_tiff_without_pixel_size_or_thumbnail(tmp_path: Path) -> None:
    import openslide

    data = _rgb(600, 4400)  # last level 2200 px wide: too big for a derived thumbnail
    levels = [data, data[::2, ::2].copy()]
    path = write_tiled_tiff(tmp_path / "n.tif", levels, rgb=True, compression="lzw")
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions == ((4400, 600), (2200, 300))
        assert "openslide.mpp-x" not in slide.properties
        assert dict(slide.associated_images) == {}
        region = np.asarray(slide.read_region((0, 0), 1, (2200, 300)))
        np.testing.assert_array_equal(region[..., :3], levels[1])
    assert read_tiff_annotations(path) == {}


@pytest.mark.parametrize("fixture", ["vectra_levels", "fluo16_levels"])
def test_tiff_refuses_fluorescence(
    tmp_path: Path, fixture: str, request: pytest.FixtureRequest
) -> None:
    levels = request.getfixturevalue(fixture)
    target = tmp_path / "f.tiff"
    with pytest.raises(OutputError, match="ome-tiff.*ome-zarr") as info:
        write_tiled_tiff(target, levels, mpp=MPP, channel_names=["a", "b"], rgb=False)
    assert str(target) in str(info.value) and "8-bit RGB" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def _bfconvert(path: Path, series: int, out: Path) -> np.ndarray:
    """Decode one flattened series (resolution) with Bio-Formats' ImageConverter."""
    java, jar = bf.require_bioformats()
    command = [java, "-cp", str(jar), "loci.formats.tools.ImageConverter",
               "-no-upgrade", "-series", str(series), str(path), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return np.moveaxis(tifffile.imread(out), 0, -1)


@pytest.mark.bioformats
def test_bioformats_reads_tiff_pyramid(
    tiff_file: tuple[Path, list[int]], rgb_levels: list[zarr.Array], tmp_path: Path
) -> None:
    path, _ = tiff_file
    info = bf.image_info(path)
    main = info.series[0]
    assert (main.size_x, main.size_y) == (2220, 2967)
    assert main.rgb and main.size_c == 3 and main.pixel_type == "uint8"
    assert main.resolution_count == len(rgb_levels)
    assert main.physical_size_x == pytest.approx(MPP[1])
    names = {s.name for s in info.series[1:]}
    assert {"label image", "macro image"} <= names
    # Pixels as QuPath decodes them: flattened series 1 is resolution 1.
    decoded = _bfconvert(path, 1, tmp_path / "level1.tif")
    np.testing.assert_array_equal(decoded, np.asarray(rgb_levels[1][:]))


@pytest.mark.bioformats
def test_bioformats_decodes_default_jpeg_tiff(
    tmp_path: Path, rgb_levels: list[zarr.Array]
) -> None:
    path = write_tiled_tiff(tmp_path / "j.tif", rgb_levels[:2], mpp=MPP, rgb=True)
    with tifffile.TiffFile(path) as tif:
        expected = tif.pages[2].asarray()  # level 1 (IFD 1 is the thumbnail)
    decoded = _bfconvert(path, 1, tmp_path / "level1.tif")
    assert np.abs(decoded.astype(int) - expected).max() <= 2  # right colours (YCbCr)


# -------------------------------------------------------- OME-Zarr x ome-zarr


def test_ome_zarr_reader_reads_every_level(
    zarr_file: tuple[Path, list[int]], rgb_levels: list[zarr.Array]
) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import OMERO, Multiscales, Reader

    path, _ = zarr_file
    (node, *_) = list(Reader(parse_url(str(path)))())
    assert {type(s) for s in node.specs} >= {Multiscales, OMERO}
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    assert node.metadata["axes"][2] == {"name": "x", "type": "space", "unit": "micrometer"}
    assert node.metadata["channel_names"] == ["R", "G", "B"]
    transforms = node.metadata["coordinateTransformations"]
    assert len(node.data) == len(transforms) == len(rgb_levels) == 4
    for index, (data, level) in enumerate(zip(node.data, rgb_levels, strict=True)):
        (scale,) = transforms[index]
        assert scale["type"] == "scale"
        expected = [1.0, MPP[0] * 2967 / level.shape[0], MPP[1] * 2220 / level.shape[1]]
        assert scale["scale"] == pytest.approx(expected)
        assert data.shape == (3, *level.shape[:2]) and data.dtype == np.uint8
        np.testing.assert_array_equal(np.moveaxis(np.asarray(data), 0, -1), level[:])


def test_ome_zarr_validates_and_keeps_metadata(zarr_file: tuple[Path, list[int]]) -> None:
    from ome_zarr_models.v04.image import Image

    path, calls = zarr_file
    group = zarr.open_group(str(path), mode="r")
    image = Image.from_zarr(group)  # raises on invalid NGFF 0.4
    (multiscale,) = image.attributes.multiscales
    assert multiscale.version == "0.4"
    assert [d.path for d in multiscale.datasets] == ["0", "1", "2", "3"]
    assert group.metadata.zarr_format == 2
    array = group["0"]
    assert array.chunks == (1, 512, 512)
    assert array.metadata.dimension_separator == "/"
    omero = group.attrs["omero"]
    assert [c["color"] for c in omero["channels"]] == ["FF0000", "00FF00", "0000FF"]
    record = group.attrs["wsi_deepr"]
    assert record["parameters"] == {"tile": 512, "halo": 32}
    assert record["windows"] == 42 and record["model"] == ANNOTATIONS["wsi_deepr.model"]
    assert sum(calls) == level0_tile_count((2967, 2220, 3), rgb=True)
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())


@pytest.mark.parametrize("fixture", ["vectra_levels", "fluo16_levels"])
def test_ome_zarr_fluorescence(
    tmp_path: Path, fixture: str, request: pytest.FixtureRequest
) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    levels = request.getfixturevalue(fixture)
    channels = int(levels[0].shape[2])
    names = ["DAPI", "FITC", "Cy3"][:channels]
    calls: list[int] = []
    path = write_ome_zarr(tmp_path / "f.zarr", levels, mpp=None, channel_names=names,
                          rgb=False, progress=calls.append)
    (node, *_) = list(Reader(parse_url(str(path)))())
    assert node.metadata["channel_names"] == names
    assert "unit" not in node.metadata["axes"][1]  # no pixel size: pixel units
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [1.0, 1.0, 1.0]
    for data, level in zip(node.data, levels, strict=True):
        assert data.dtype == level.dtype
        np.testing.assert_array_equal(np.moveaxis(np.asarray(data), 0, -1), level[:])
    window = zarr.open_group(str(path), mode="r").attrs["omero"]["channels"][0]["window"]
    assert window["min"] == 0 and window["max"] == np.iinfo(levels[0].dtype).max
    assert window["start"] < window["end"] <= window["max"]
    assert sum(calls) == level0_tile_count(levels[0].shape, rgb=False)


# ----------------------------------------- memory, atomicity and overwrite


class RecordingLevel:
    """Array-like that records the rows of each read; optionally fails after ``ok``."""

    def __init__(self, data: np.ndarray, ok: int | None = None) -> None:
        self.data, self.ok, self.spans = data, ok, []
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.ok is not None:
            if self.ok == 0:
                raise OSError("simulated read error")
            self.ok -= 1
        rows = key[0] if isinstance(key, tuple) else key
        out = self.data[key]
        if isinstance(rows, slice):
            self.spans.append(len(range(*rows.indices(self.shape[0]))))
        return out


def _write(fmt: str, path: Path, levels: list, **kwargs: Any) -> Path:
    if fmt == "tiff":
        return write_tiled_tiff(path, levels, rgb=True, compression="zlib", tile=128, **kwargs)
    return write_ome_zarr(path, levels, rgb=True, chunk=128, **kwargs)


def _rgb(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_levels_are_read_band_by_band(tmp_path: Path, fmt: str) -> None:
    data = _rgb(700, 300)
    levels = [RecordingLevel(data), RecordingLevel(data[::2, ::2].copy())]
    # Without a thumbnail the TIFF writer reads the (small) last level whole.
    extra = {"associated": {"thumbnail": data[::8, ::8]}} if fmt == "tiff" else {}
    _write(fmt, tmp_path / "b", levels, **extra)
    for level in levels:
        assert level.spans and max(level.spans) <= 128


@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_failure_midway_leaves_no_trace(tmp_path: Path, fmt: str) -> None:
    target = tmp_path / ("out.tif" if fmt == "tiff" else "out.ome.zarr")
    seen: list[set[str]] = []

    def progress(_: int) -> None:
        seen.append({p.name for p in tmp_path.iterdir()})

    with pytest.raises(OSError, match="simulated"):
        _write(fmt, target, [RecordingLevel(_rgb(1100, 600), ok=3)], progress=progress)
    assert list(tmp_path.iterdir()) == []
    (tmp,) = seen[0]  # while writing: one hidden temporary, nothing at the target
    assert tmp.startswith(".out.") and tmp.endswith(".tmp")


@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_existing_output_needs_overwrite(tmp_path: Path, fmt: str) -> None:
    target = tmp_path / ("out.tif" if fmt == "tiff" else "out.ome.zarr")
    if fmt == "tiff":
        target.write_bytes(b"keep me")
    else:
        target.mkdir()
        (target / ".zgroup").write_text('{"zarr_format": 2}')
        (target / "old-chunk").write_bytes(b"keep me")
    levels = [_rgb(40, 50)]
    with pytest.raises(OutputExistsError, match="--overwrite") as info:
        _write(fmt, target, levels)
    assert str(target) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    _write(fmt, target, levels, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    if fmt == "tiff":
        np.testing.assert_array_equal(tifffile.imread(target, key=0), levels[0])
    else:
        assert not (target / "old-chunk").exists()
        np.testing.assert_array_equal(
            np.moveaxis(zarr.open_array(str(target / "0"), mode="r")[:], 0, -1), levels[0]
        )


def test_overwrite_never_deletes_a_folder_that_is_not_zarr(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a zarr store") as info:
        write_ome_zarr(target, [_rgb(40, 50)], rgb=True, overwrite=True)
    assert str(target) in str(info.value)
    assert (target / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_missing_directory_is_an_output_error(tmp_path: Path, fmt: str) -> None:
    target = tmp_path / "nowhere" / "out.tif"
    with pytest.raises(OutputError, match="does not exist") as info:
        _write(fmt, target, [_rgb(40, 50)])
    assert str(target.parent) in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_read_only_directory_is_an_output_error(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            _write(fmt, folder / "out.tif", [_rgb(40, 50)])
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------ through refocus


@pytest.mark.slow
def test_refocus_writes_each_format_by_suffix_with_the_same_pixels(tmp_path, rgb_model) -> None:
    """``-o x.ome.tif``, ``x.tif`` and ``x.ome.zarr`` hold the same refocused pixels at every level."""
    import openslide
    import zarr

    from wsi_deepr import refocus

    slide = shared_path("slides", "CMU-1-Small-Region.svs")
    outs = {fmt: tmp_path / f"x{suffix}" for fmt, suffix in
            (("ome-tiff", ".ome.tif"), ("tiff", ".tif"), ("ome-zarr", ".ome.zarr"))}
    for out in outs.values():
        refocus(slide, out, model=rgb_model, compression="zlib" if out.suffix != ".zarr" else "auto",
                workers=2)
    with tifffile.TiffFile(outs["ome-tiff"]) as tif:
        reference = [level.asarray() for level in tif.series[0].levels]
    osr = openslide.OpenSlide(str(outs["tiff"]))
    assert osr.level_count == len(reference)
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.499, rel=1e-3)
    for k, expected in enumerate(reference):
        w, h = osr.level_dimensions[k]
        got = np.asarray(osr.read_region((0, 0), k, (w, h)))[..., :3] if k == 0 else None
        if got is not None:
            np.testing.assert_array_equal(got, expected)
    group = zarr.open_group(str(outs["ome-zarr"]), mode="r")
    for k, expected in enumerate(reference):
        np.testing.assert_array_equal(np.asarray(group[str(k)]).transpose(1, 2, 0), expected)
    assert group.attrs["wsi_deepr"]["model"] == "rgb"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [o.name for o in outs.values()] + [o.name + ".json" for o in outs.values()])


def test_refocus_refuses_a_fluorescence_tiff_before_any_work(tmp_path) -> None:
    from wsi_deepr import refocus

    slide = shared_path("slides", "small_vectra.qptiff")
    with pytest.raises(OutputError, match="ome-zarr"):
        refocus(slide, tmp_path / "f.tif", model="deepr-fluorescence")
    assert list(tmp_path.iterdir()) == []
