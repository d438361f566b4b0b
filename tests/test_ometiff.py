"""Tests of :func:`wsi_deepr.io.ometiff.write_ome_tiff`, read back two ways."""

from __future__ import annotations

import re

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from . import bioformats_info as bf
from wsi_deepr.errors import OutputError, OutputExistsError
from wsi_deepr.writers.ometiff import level0_tile_count, write_ome_tiff
from wsi_deepr.imaging.pyramid import build_pyramid

OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
SHAPE = (1100, 1300)  # deliberately not a multiple of the 512 tile
MIN_SIZE = 400  # forces 3 levels: 1300 -> 650 -> 325
ANNOTATIONS = {"version": "0.1.0", "model": "deepr-bf µ", "norm": "[0.5, 0.2]"}


def _zarr_pyramid(data: np.ndarray) -> list[zarr.Array]:
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    base = group.create_array(
        "0", shape=data.shape, chunks=(512, 512, data.shape[2]), dtype=data.dtype
    )
    base[:] = data
    return build_pyramid(base, group, min_size=MIN_SIZE)


def _smooth_rgb(shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    planes = [
        128 + 100 * np.sin(x / 90),
        128 + 100 * np.cos(y / 70),
        128 + 80 * np.sin((x + y) / 120),
    ]
    return np.stack(planes, axis=-1).round().astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _ome(path: Path) -> ET.Element:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        return ET.fromstring(tif.pages[0].description.split("?>", 1)[1])


@pytest.fixture(scope="module")
def rgb_levels() -> list[zarr.Array]:
    return _zarr_pyramid(_smooth_rgb(SHAPE))


@pytest.fixture(scope="module")
def associated() -> dict[str, np.ndarray]:
    image = _smooth_rgb((301, 455))
    return {
        "label": image[:200, :300].copy(),
        "macro": image,
        "thumbnail": image[::3, ::3].copy(),
    }


@pytest.fixture(scope="module")
def rgb_file(
    tmp_path_factory: pytest.TempPathFactory,
    rgb_levels: list[zarr.Array],
    associated: dict[str, np.ndarray],
) -> tuple[Path, list[int]]:
    path = tmp_path_factory.mktemp("rgb") / "slide.ome.tif"
    calls: list[int] = []
    out = write_ome_tiff(
        path,
        rgb_levels,
        mpp=(0.25, 0.25),
        channel_names=["RGB"],
        rgb=True,
        associated=associated,
        annotations=ANNOTATIONS,
        progress=calls.append,
    )
    assert out == path
    return path, calls


@pytest.fixture(scope="module")
def fluo_levels() -> list[zarr.Array]:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 4096, size=(*SHAPE, 2)).astype(np.uint16)
    data[..., 1] += 20000  # keep the channels apart
    return _zarr_pyramid(data)


@pytest.fixture(scope="module")
def fluo_file(
    tmp_path_factory: pytest.TempPathFactory, fluo_levels: list[zarr.Array]
) -> Path:
    path = tmp_path_factory.mktemp("fluo") / "fluo.ome.tif"
    return write_ome_tiff(
        path,
        fluo_levels,
        mpp=(0.5, 0.4),
        channel_names=["DAPI", "FITC"],
        rgb=False,
        name="stack",
    )


# ------------------------------------------------------------------------ RGB


def test_rgb_pyramid_reads_back(
    rgb_file: tuple[Path, list[int]], rgb_levels: list
) -> None:
    path, _ = rgb_file
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series) == 4
        series = tif.series[0]
        assert series.name == "slide"
        assert [lv.shape for lv in series.levels] == [lv.shape for lv in rgb_levels]
        assert series.dtype == np.uint8
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.JPEG
        assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
        assert page.tags["YCbCrSubSampling"].value == (2, 2)
        assert (page.tilewidth, page.tilelength) == (512, 512)
        assert len(page.subifds) == 2
        for level, stored in zip(series.levels, rgb_levels, strict=True):
            assert _psnr(level.asarray(), stored[:]) > 35
        for index, page in enumerate([tif.pages[0], *series.levels[1].pages[:1]]):
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            x_res = page.tags["XResolution"].value
            assert x_res[0] / x_res[1] == pytest.approx(40000 / 2**index, rel=1e-3)


def test_rgb_associated_images(
    rgb_file: tuple[Path, list[int]], associated: dict
) -> None:
    path, _ = rgb_file
    with tifffile.TiffFile(path) as tif:
        extra = {s.name: s for s in tif.series[1:]}
        assert set(extra) == {"label", "macro", "thumbnail"}
        for key, image in associated.items():
            assert len(extra[key].levels) == 1
            got = extra[key].asarray()
            assert got.shape == image.shape
            if key == "label":
                np.testing.assert_array_equal(got, image)  # lossless for barcodes
            else:
                assert _psnr(got, image) > 35


def test_rgb_ome_xml(rgb_file: tuple[Path, list[int]]) -> None:
    root = _ome(rgb_file[0])
    images = root.findall(f"{OME}Image")
    assert [im.get("Name") for im in images] == ["slide", "label", "macro", "thumbnail"]
    pixels = images[0].find(f"{OME}Pixels")
    assert pixels.get("PhysicalSizeX") == "0.25"
    assert pixels.get("PhysicalSizeY") == "0.25"
    (channel,) = pixels.findall(f"{OME}Channel")
    assert channel.get("SamplesPerPixel") == "3"
    assert channel.get("Name") == "RGB"
    ref = images[0].find(f"{OME}AnnotationRef").get("ID")
    (annotation,) = root.iter(f"{OME}MapAnnotation")
    assert annotation.get("ID") == ref
    pairs = {m.get("K"): m.text for m in annotation.iter(f"{OME}M")}
    assert pairs == ANNOTATIONS


def test_progress_counts_level0_tiles(rgb_file: tuple[Path, list[int]]) -> None:
    _, calls = rgb_file
    assert calls == [3, 3, 3]
    assert sum(calls) == level0_tile_count((*SHAPE, 3), rgb=True)


# ----------------------------------------------------------------- fluorescence


def test_fluorescence_is_lossless_and_planar(
    fluo_file: Path, fluo_levels: list
) -> None:
    with tifffile.TiffFile(fluo_file) as tif:
        assert len(tif.series) == 1
        series = tif.series[0]
        assert series.name == "stack"
        assert series.axes == "CYX"
        assert len(series.levels) == 3
        for level, stored in zip(series.levels, fluo_levels, strict=True):
            assert level.dtype == np.uint16
            np.testing.assert_array_equal(
                level.asarray(), np.moveaxis(stored[:], -1, 0)
            )
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    pixels = _ome(fluo_file).find(f"{OME}Image/{OME}Pixels")
    assert [c.get("Name") for c in pixels.findall(f"{OME}Channel")] == ["DAPI", "FITC"]
    assert (pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeX")) == ("0.5", "0.4")
    assert pixels.get("Type") == "uint16"


def test_zstd_is_lossless(tmp_path: Path, fluo_levels: list) -> None:
    levels = fluo_levels[1:]  # a smaller two-level pyramid is enough
    calls: list[int] = []
    path = write_ome_tiff(
        tmp_path / "z.ome.tif",
        levels,
        channel_names=None,
        rgb=False,
        compression="zstd",
        progress=calls.append,
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ZSTD
        np.testing.assert_array_equal(
            tif.series[0].asarray(), np.moveaxis(levels[0][:], -1, 0)
        )
    assert sum(calls) == level0_tile_count(levels[0].shape, rgb=False) == 2 * 2 * 2


class RecordingLevel:
    """Array-like that records the row span of every read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.spans: list[int] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.data[key]
        self.spans.append(out.shape[0])
        return out


@pytest.mark.parametrize("rgb", [True, False])
def test_levels_are_read_band_by_band(tmp_path: Path, rgb: bool) -> None:
    data = _smooth_rgb((700, 300))
    levels = [RecordingLevel(data), RecordingLevel(data[::2, ::2].copy())]
    write_ome_tiff(
        tmp_path / "b.ome.tif", levels, channel_names=None, rgb=rgb, tile=128
    )
    for level in levels:
        assert max(level.spans) <= 128
        reads_per_plane = -(-level.shape[0] // 128)
        assert len(level.spans) == reads_per_plane * (1 if rgb else 3)


# ------------------------------------------------------ atomicity and overwrite


class ExplodingLevel:
    """Array-like that fails after ``ok`` reads, like a disk error mid-write."""

    def __init__(self, data: np.ndarray, ok: int) -> None:
        self.data, self.ok = data, ok
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.ok == 0:
            raise OSError("simulated read error")
        self.ok -= 1
        return self.data[key]


def test_failure_midway_leaves_no_trace(tmp_path: Path) -> None:
    target = tmp_path / "out.ome.tif"
    target.write_bytes(b"previous result")
    data = np.zeros((1100, 600, 1), np.uint8)
    seen: list[list[str]] = []

    def progress(_: int) -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))

    with pytest.raises(OSError, match="simulated"):
        write_ome_tiff(
            target,
            [ExplodingLevel(data, ok=2)],
            channel_names=None,
            rgb=False,
            overwrite=True,
            progress=progress,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.tif"]
    assert target.read_bytes() == b"previous result"
    # While writing, the only extra file was the hidden temporary one.
    (tmp,) = set(seen[0]) - {"out.ome.tif"}
    assert re.fullmatch(r"\.out\.ome\.tif\.[0-9a-f]{8}\.tmp", tmp)  # the scheme temporaries() finds


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out.ome.tif"
    target.write_bytes(b"keep me")
    levels = [np.zeros((40, 50, 1), np.uint8)]
    with pytest.raises(OutputExistsError, match="--overwrite") as info:
        write_ome_tiff(target, levels, channel_names=None, rgb=False)
    assert str(target) in str(info.value)
    assert isinstance(info.value, FileExistsError)
    assert target.read_bytes() == b"keep me"
    write_ome_tiff(target, levels, channel_names=None, rgb=False, overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(target), levels[0][..., 0])
    assert [p.name for p in tmp_path.iterdir()] == ["out.ome.tif"]


def test_missing_directory_is_an_output_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(OutputError, match=str(missing)):
        write_ome_tiff(
            missing / "x.ome.tif",
            [np.zeros((8, 8, 1), np.uint8)],
            channel_names=None,
            rgb=False,
        )


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere"
)
def test_read_only_directory_is_an_output_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=str(folder)):
            write_ome_tiff(
                folder / "x.ome.tif",
                [np.zeros((8, 8, 1), np.uint8)],
                channel_names=None,
                rgb=False,
            )
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_associated_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    grey = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60)
    rgba = np.dstack(
        [np.full((30, 20, 3), 9, np.uint8), np.zeros((30, 20, 1), np.uint8)]
    )
    path = write_ome_tiff(
        tmp_path / "a.ome.tif",
        [np.zeros((32, 32, 1), np.uint16)],
        channel_names=["DAPI"],
        rgb=False,
        associated={"label": grey, "macro": rgba},
    )
    with tifffile.TiffFile(path) as tif:
        label, macro = tif.series[1].asarray(), tif.series[2].asarray()
    np.testing.assert_array_equal(label, np.dstack([grey] * 3))  # lossless
    np.testing.assert_array_equal(macro, rgba[..., :3])  # zlib: not an RGB pyramid
    with pytest.raises(ValueError, match="associated image 'label'"):
        write_ome_tiff(
            tmp_path / "b.ome.tif",
            [np.zeros((32, 32, 1), np.uint16)],
            channel_names=None,
            rgb=False,
            associated={"label": grey.astype(np.uint16)},
        )


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"rgb": False, "compression": "jpeg"}, "jpeg"),
        ({"rgb": True, "dtype": np.uint16}, "rgb"),
        ({"rgb": False, "channel_names": ["a", "b"]}, "channel_names"),
        ({"rgb": False, "compression": "lzw"}, "compression"),
        ({"rgb": False, "tile": 100}, "tile"),
        ({"rgb": False, "mpp": (0.0, 0.25)}, "mpp"),
    ],
)
def test_bad_options_raise_value_error(tmp_path: Path, kwargs: dict, word: str) -> None:
    dtype = kwargs.pop("dtype", np.uint8)
    kwargs.setdefault("channel_names", None)
    with pytest.raises(ValueError, match=word):
        write_ome_tiff(tmp_path / "x.ome.tif", [np.zeros((8, 8, 3), dtype)], **kwargs)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ Bio-Formats


@pytest.mark.bioformats
def test_bioformats_reads_rgb_pyramid(rgb_file: tuple[Path, list[int]]) -> None:
    info = bf.image_info(rgb_file[0])
    assert info.series_count == 4
    pyramid, *extra = info.series
    assert pyramid.name == "slide"
    assert pyramid.resolution_count == 3
    assert (pyramid.size_x, pyramid.size_y, pyramid.size_c) == (1300, 1100, 3)
    assert pyramid.pixel_type == "uint8"
    assert pyramid.rgb is True
    assert (pyramid.physical_size_x, pyramid.physical_size_y) == (0.25, 0.25)
    assert [s.name for s in extra] == ["label", "macro", "thumbnail"]
    assert all(s.resolution_count == 1 and s.rgb for s in extra)
    assert (extra[1].size_x, extra[1].size_y) == (455, 301)
    assert "deepr-bf µ" in info.omexml  # UTF-8 survives Bio-Formats' XML handling


@pytest.mark.bioformats
def test_bioformats_reads_fluorescence_pyramid(fluo_file: Path) -> None:
    info = bf.image_info(fluo_file)
    assert info.series_count == 1
    (series,) = info.series
    assert series.resolution_count == 3
    assert (series.size_x, series.size_y, series.size_c) == (1300, 1100, 2)
    assert series.pixel_type == "uint16"
    assert series.rgb is False
    assert (series.physical_size_x, series.physical_size_y) == (0.4, 0.5)
    assert 'Name="DAPI"' in info.omexml
    assert 'Name="FITC"' in info.omexml
