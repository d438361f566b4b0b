"""Slide readers: the shared real slides, synthetic TIFFs and every bad-input case."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .conftest import shared_path
from wsi_deepr.errors import (
    CorruptSlideError,
    SlideNotFoundError,
    UnsupportedFormatError,
    WsiDeeprError,
)
from wsi_deepr.readers import Modality, RegionReader, Slide, open_slide
from wsi_deepr.readers.openslide_backend import rgba_to_rgb

SLIDES = "slides"

# name: (backend, format, level shapes, dtype, mpp, channels, modality, associated)
EXPECTED = {
    "CMU-1-Small-Region.svs": (
        "tifffile", "aperio", [(2967, 2220, 3)], np.uint8, 0.499, ("R", "G", "B"),
        Modality.BRIGHTFIELD, {"label", "macro", "thumbnail"},
    ),
    "tcga-cr-7395-01a-01-ts1.svs": (
        "tifffile", "aperio", [(3567, 4443, 3), (1783, 2221, 3)], np.uint8, None,
        ("R", "G", "B"), Modality.BRIGHTFIELD, {"thumbnail"},
    ),
    "small.svs": (
        "tifffile", "aperio", [(16, 16, 3)], np.uint8, 0.499, ("R", "G", "B"),
        Modality.BRIGHTFIELD, {"thumbnail"},
    ),
    "boxes.tiff": (
        "tifffile", "generic-tiff", [(250, 300, 3), (125, 150, 3), (62, 75, 3), (31, 37, 3)],
        np.uint8, None, ("R", "G", "B"), Modality.BRIGHTFIELD, set(),
    ),
    "small_vectra.qptiff": (
        "tifffile", "qptiff", [(1440, 1920, 3)], np.uint8, 0.4965, ("DAPI", "FITC", "Cy3"),
        Modality.FLUORESCENCE, {"thumbnail", "macro", "label"},
    ),
    "smalltif.tif": (
        "tifffile", "generic-tiff", [(480, 640, 1)], np.uint16, None, ("C0",),
        Modality.FLUORESCENCE, set(),
    ),
}
OPENSLIDE_READABLE = [
    "CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "small.svs", "boxes.tiff",
]


def _one_line(exc: BaseException, path: Path) -> str:
    """Check that ``exc`` is one line naming ``path``; return the rest of the message."""
    msg = str(exc)
    assert "\n" not in msg
    assert str(path) in msg
    return msg.replace(str(path), "<path>")


# ----------------------------------------------------------------------------- real slides


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_slide_metadata(name: str) -> None:
    backend, fmt, shapes, dtype, mpp, channels, modality, assoc = EXPECTED[name]
    slide = open_slide(shared_path(SLIDES, name))
    assert isinstance(slide.reader, RegionReader)
    assert (slide.backend, slide.format) == (backend, fmt)
    assert list(slide.level_shapes) == shapes
    assert slide.dtype == dtype
    assert slide.channel_names == channels
    assert slide.modality is modality
    assert set(slide.associated) == assoc
    if mpp is None:
        assert slide.mpp is None
    else:
        assert slide.mpp == pytest.approx((mpp, mpp), abs=2e-4)
    for image in slide.associated.values():
        arr = image()
        assert arr.ndim == 3
        assert arr.dtype == np.uint8
        assert arr.shape[2] == 3
    y, x, c = shapes[-1]
    region = slide.read_region(slide.level_count - 1, y - 5, x - 7, y, x)
    assert region.shape == (5, 7, c)
    assert region.dtype == dtype


def test_cmu_associated_shapes() -> None:
    slide = open_slide(shared_path(SLIDES, "CMU-1-Small-Region.svs"))
    shapes = {name: image().shape for name, image in slide.associated.items()}
    assert shapes == {"thumbnail": (768, 574, 3), "label": (463, 387, 3), "macro": (431, 1280, 3)}
    assert slide.properties["aperio.MPP"] == "0.4990"


@pytest.mark.parametrize("name", OPENSLIDE_READABLE)
def test_tifffile_pixels_equal_openslide(name: str) -> None:
    path = shared_path(SLIDES, name)
    tf = open_slide(path)
    osl = open_slide(path, backend="openslide")
    assert (tf.backend, osl.backend) == ("tifffile", "openslide")
    assert tf.level_shapes == osl.level_shapes
    assert tf.mpp == osl.mpp
    assert set(tf.associated) == set(osl.associated)
    for key in tf.associated:
        np.testing.assert_array_equal(tf.associated[key](), osl.associated[key]())
    y, x, _ = tf.shape
    regions = [
        (0, 0, min(y, 300), min(x, 280)),  # top left
        (y // 3, x // 2, min(y, y // 3 + 257), min(x, x // 2 + 301)),  # interior, off the tile grid
        (max(0, y - 241), max(0, x - 263), y, x),  # bottom right corner
        (0, max(0, x - 5), min(y, 100), x),  # right edge
        (max(0, y - 3), 0, y, min(x, 200)),  # bottom edge
    ]
    for box in regions:
        np.testing.assert_array_equal(tf.read_region(0, *box), osl.read_region(0, *box),
                                      err_msg=str(box))
    # lower levels: OpenSlide addresses them in level-0 coordinates with one mean downsample,
    # so only regions anchored at (0, 0) (here: the whole level) are pixel-exact
    for level in range(1, tf.level_count):
        ly, lx, _ = tf.level_shapes[level]
        np.testing.assert_array_equal(tf.read_region(level, 0, 0, ly, lx),
                                      osl.read_region(level, 0, 0, ly, lx))


def test_openslide_integer_downsample_regions_exact() -> None:
    path = shared_path(SLIDES, "boxes.tiff")
    tf, osl = open_slide(path), open_slide(path, backend="openslide")
    for box in [(17, 23, 125, 150), (60, 99, 101, 140), (120, 0, 125, 150)]:
        np.testing.assert_array_equal(tf.read_region(1, *box), osl.read_region(1, *box))


def test_qptiff_mpp_from_resolution_tags() -> None:
    slide = open_slide(shared_path(SLIDES, "small_vectra.qptiff"))
    expected = 1e4 * 213260 / 4294967295
    assert slide.mpp == pytest.approx((expected, expected), rel=1e-9)
    assert slide.read_region(0, 0, 0, 8, 8).shape == (8, 8, 3)
    with tifffile.TiffFile(slide.path) as tif:
        expected = tif.series[0].asarray()[:, 100:150, 200:260].transpose(1, 2, 0)
    np.testing.assert_array_equal(slide.read_region(0, 100, 200, 150, 260), expected)


def test_smalltif_second_page_ignored_and_pixels() -> None:
    path = shared_path(SLIDES, "smalltif.tif")
    slide = open_slide(path)
    expected = tifffile.imread(path, key=0)
    np.testing.assert_array_equal(slide.read_region(0, 0, 0, 480, 640)[..., 0], expected)


def test_modality_can_be_forced_and_unknown_values_fail() -> None:
    path = shared_path(SLIDES, "smalltif.tif")
    assert open_slide(path, modality="brightfield").modality is Modality.BRIGHTFIELD
    assert open_slide(path, modality="auto").modality is Modality.FLUORESCENCE
    with pytest.raises(ValueError, match="modality"):
        open_slide(path, modality="phase")


def test_dask_levels_equal_direct_reads() -> None:
    slide = open_slide(shared_path(SLIDES, "boxes.tiff"), tile=64)
    for level, array in enumerate(slide.levels):
        y, x, c = slide.level_shapes[level]
        assert array.shape == (y, x, c)
        assert array.chunksize == (min(64, y), min(64, x), c)
        expected = slide.read_region(level, 0, 0, y, x)
        np.testing.assert_array_equal(array.compute(scheduler="threads"), expected)


def test_threaded_reads_match_serial() -> None:
    slide = open_slide(shared_path(SLIDES, "CMU-1-Small-Region.svs"))
    boxes = [(y, x, y + 200, x + 200) for y in range(0, 2700, 450) for x in range(0, 2000, 500)]
    serial = [slide.read_region(0, *b) for b in boxes]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda b: slide.read_region(0, *b), boxes))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_pickled_reader_and_slide(backend: str) -> None:
    slide = open_slide(shared_path(SLIDES, "small.svs"), backend=backend)
    reader = pickle.loads(pickle.dumps(slide.reader))
    assert vars(reader) == vars(slide.reader)  # plain data only, no handle
    np.testing.assert_array_equal(reader.read(0, 2, 3, 16, 16), slide.read_region(0, 2, 3, 16, 16))
    clone: Slide = pickle.loads(pickle.dumps(slide))
    np.testing.assert_array_equal(clone.levels[0].compute(), slide.read_region(0, 0, 0, 16, 16))
    np.testing.assert_array_equal(clone.associated["thumbnail"](), slide.associated["thumbnail"]())


def test_relative_path_survives_chdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tifffile.imwrite(tmp_path / "rel.tif", np.arange(600, dtype=np.uint16).reshape(20, 30))
    monkeypatch.chdir(tmp_path)
    slide = open_slide("rel.tif")
    monkeypatch.chdir(tmp_path.parent)
    assert slide.path.is_absolute()
    assert slide.read_region(0, 19, 29, 20, 30)[0, 0, 0] == 599


def test_region_outside_level_raises() -> None:
    slide = open_slide(shared_path(SLIDES, "small.svs"))
    with pytest.raises(ValueError, match="outside level 0"):
        slide.read_region(0, 0, 0, 17, 16)


# ----------------------------------------------------------------------------- synthetic files


@pytest.fixture
def ome_pyramid(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """2-channel uint16 OME-TIFF, 3 SubIFD levels, sizes off the 512 grid, sizes in nm."""
    data = np.random.default_rng(1).integers(0, 4000, (2, 1000, 1300), dtype=np.uint16)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, subifds=2, tile=(256, 256), photometric="minisblack", metadata={
            "axes": "CYX", "Name": "sample", "Channel": {"Name": ["DAPI", "FITC"]},
            "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 300, "PhysicalSizeYUnit": "nm"})
        tw.write(data[:, ::2, ::2], subfiletype=1, tile=(256, 256), photometric="minisblack")
        tw.write(data[:, ::4, ::4], subfiletype=1, tile=(256, 256), photometric="minisblack")
        tw.write(np.full((40, 90, 3), 200, np.uint8), photometric="rgb", metadata={"Name": "label"})
    return path, data


def test_ome_pyramid_metadata_levels_and_pixels(ome_pyramid: tuple[Path, np.ndarray]) -> None:
    path, data = ome_pyramid
    slide = open_slide(path)
    assert (slide.backend, slide.format) == ("tifffile", "ome-tiff")
    assert slide.level_shapes == ((1000, 1300, 2), (500, 650, 2), (250, 325, 2))
    assert slide.dtype == np.uint16
    assert slide.modality is Modality.FLUORESCENCE
    assert slide.channel_names == ("DAPI", "FITC")
    assert slide.mpp == pytest.approx((0.3, 0.25))
    assert set(slide.associated) == {"label"}
    assert slide.associated["label"]().shape == (40, 90, 3)
    yxc = data.transpose(1, 2, 0)
    np.testing.assert_array_equal(slide.read_region(0, 990, 1290, 1000, 1300), yxc[990:, 1290:])
    np.testing.assert_array_equal(slide.read_region(2, 0, 0, 250, 325), yxc[::4, ::4])
    level0 = slide.levels[0]
    assert level0.chunksize == (512, 512, 2)
    np.testing.assert_array_equal(level0.compute(scheduler="threads"), yxc)


def test_ome_z_stack_rejected(tmp_path: Path) -> None:
    path = tmp_path / "planes.ome.tif"
    tifffile.imwrite(path, np.zeros((5, 64, 64), np.uint8), ome=True, metadata={"axes": "ZYX"})
    with pytest.raises(UnsupportedFormatError) as info:
        open_slide(path)
    msg = _one_line(info.value, path)
    assert "axes ZYX" in msg
    assert "Z=5" in msg
    assert "export a single Z plane" in msg


def test_imagej_tiff_reads_micron_mpp_and_channels(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 4000, (2, 300, 200), dtype=np.uint16)
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.325, 1 / 0.325),
                     metadata={"unit": "micron", "axes": "CYX"})
    slide = open_slide(path)
    assert (slide.format, slide.level_shapes) == ("imagej-tiff", ((300, 200, 2),))
    assert slide.mpp == pytest.approx((0.325, 0.325))
    assert slide.channel_names == ("C0", "C1")
    assert slide.modality is Modality.FLUORESCENCE
    expected = data[:, 10:, 20:].transpose(1, 2, 0)
    np.testing.assert_array_equal(slide.read_region(0, 10, 20, 300, 200), expected)


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_stripped_rgb_tiff(tmp_path: Path, planar: str) -> None:
    data = np.random.default_rng(3).integers(0, 255, (301, 257, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    stored = data if planar == "contig" else data.transpose(2, 0, 1)
    tifffile.imwrite(path, stored, photometric="rgb", planarconfig=planar, rowsperstrip=16,
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    slide = open_slide(path)
    assert (slide.backend, slide.format, slide.shape) == ("tifffile", "generic-tiff", (301, 257, 3))
    assert slide.modality is Modality.BRIGHTFIELD
    assert slide.channel_names == ("R", "G", "B")
    assert slide.mpp == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(slide.read_region(0, 290, 250, 301, 257), data[290:, 250:])
    np.testing.assert_array_equal(slide.with_tile(128).levels[0].compute(), data)


def test_rgba_tiff_drops_alpha(tmp_path: Path) -> None:
    data = np.random.default_rng(5).integers(0, 255, (70, 90, 4), dtype=np.uint8)
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, data, photometric="rgb", extrasamples=["unassalpha"], tile=(32, 32))
    slide = open_slide(path)
    assert slide.shape == (70, 90, 3)
    assert slide.modality is Modality.BRIGHTFIELD
    np.testing.assert_array_equal(slide.read_region(0, 5, 6, 70, 90), data[5:, 6:, :3])


def test_placeholder_dpi_is_unknown_mpp(tmp_path: Path) -> None:
    path = tmp_path / "gray.tif"
    tifffile.imwrite(path, np.zeros((40, 30), np.uint8), resolution=(72, 72), resolutionunit="INCH")
    slide = open_slide(path)
    assert slide.mpp is None
    assert slide.shape == (40, 30, 1)
    assert slide.modality is Modality.FLUORESCENCE


def test_file_rewritten_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "changing.tif"
    tifffile.imwrite(path, np.zeros((20, 30), np.uint8))
    assert open_slide(path).read_region(0, 0, 0, 20, 30).max() == 0
    tifffile.imwrite(path, np.full((20, 30), 7, np.uint8))
    assert open_slide(path).read_region(0, 0, 0, 20, 30).min() == 7


def test_rgba_composited_onto_white() -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    expected = [[[10, 20, 30], [255, 255, 255], [127, 127, 127]]]
    np.testing.assert_array_equal(rgba_to_rgb(rgba), expected)


# ----------------------------------------------------------------------------- bad input


def test_missing_path_is_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nope.svs"
    with pytest.raises(SlideNotFoundError) as info:
        open_slide(path)
    assert isinstance(info.value, FileNotFoundError)
    assert "not found" in _one_line(info.value, path)


def test_directory_is_refused_with_an_mrxs_hint(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError) as info:
        open_slide(tmp_path)
    msg = _one_line(info.value, tmp_path)
    assert "is a directory" in msg
    assert ".mrxs" in msg


def test_empty_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "zero.svs"
    path.touch()
    with pytest.raises(CorruptSlideError) as info:
        open_slide(path)
    assert "empty" in _one_line(info.value, path)


@pytest.mark.parametrize("fraction", [0.4, 0.9, 0.999])
def test_truncated_svs_is_corrupt_on_every_backend(tmp_path: Path, fraction: float) -> None:
    data = shared_path(SLIDES, "CMU-1-Small-Region.svs").read_bytes()
    path = tmp_path / "part.svs"
    path.write_bytes(data[: int(len(data) * fraction)])
    for backend in ("auto", "openslide", "tifffile"):
        with pytest.raises(CorruptSlideError) as info:
            open_slide(path, backend=backend)
        assert "truncated" in _one_line(info.value, path)


def test_truncated_last_tile_is_corrupt(tmp_path: Path) -> None:
    src = tmp_path / "tiled.tif"
    image = np.random.default_rng(4).integers(0, 255, (512, 512), np.uint8)
    tifffile.imwrite(src, image, tile=(128, 128))
    data = src.read_bytes()
    with tifffile.TiffFile(src) as tif:
        cut = int(max(tif.pages[0].dataoffsets)) + 10  # the last tile is cut short, IFD intact
    assert tif.pages[0].offset < cut
    path = tmp_path / "cut.tif"
    path.write_bytes(data[:cut])
    with pytest.raises(CorruptSlideError) as info:
        open_slide(path)
    assert "truncated" in _one_line(info.value, path)


def _write_png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def _write_jpeg(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="JPEG")


def _write_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("slide.txt", "hello")


@pytest.mark.parametrize(("name", "writer", "what"), [
    ("image.png", _write_png, "PNG"),
    ("image.jpg", _write_jpeg, "JPEG"),
    ("archive.zip", _write_zip, "ZIP"),
])
def test_png_jpeg_and_zip_are_refused_with_a_conversion_hint(tmp_path: Path, name: str, writer, what: str) -> None:
    path = tmp_path / name
    writer(path)
    with pytest.raises(UnsupportedFormatError) as info:
        open_slide(path)
    msg = _one_line(info.value, path)
    assert what in msg
    assert "convert the image to OME-TIFF" in msg
    assert "Aperio SVS" in msg
    assert "NDPI" in msg


@pytest.mark.parametrize("content", [b"just some text\nnot a slide\n", bytes(range(256)) * 7])
def test_non_image_bytes_are_refused_on_every_backend(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "thing.svs"
    path.write_bytes(content)
    for backend in ("auto", "openslide", "tifffile"):
        with pytest.raises(UnsupportedFormatError) as info:
            open_slide(path, backend=backend)
        assert "not an image" in _one_line(info.value, path)
        assert isinstance(info.value, WsiDeeprError)
        assert isinstance(info.value, ValueError)


def test_forced_backend_mismatch() -> None:
    path = shared_path(SLIDES, "small_vectra.qptiff")
    with pytest.raises(UnsupportedFormatError, match="backend='auto'"):
        open_slide(path, backend="openslide")
    with pytest.raises(ValueError, match="backend"):
        open_slide(path, backend="bioformats")
    with pytest.raises(ValueError, match="tile"):
        open_slide(path, tile=0)


def test_import_is_light() -> None:
    heavy = ("tifffile", "zarr", "openslide", "dask")
    code = f"import sys, wsi_deepr.readers; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
