"""The pair-dataset format, its lazy reader, and both builders (simulated and z-stack)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import skimage.io
from scipy import ndimage

from wsi_deepr.cli import main
from wsi_deepr.data.build import (
    build_from_stacks,
    build_simulated,
    emission_wavelength,
    open_sources,
)
from wsi_deepr.data.dataset import PairDataset, PairDatasetWriter, read_attrs, summarize
from wsi_deepr.data.pairs import RunningStats, dihedral, split_by_fov
from wsi_deepr.data.stacks import read_stack
from wsi_deepr.errors import OutputExistsError, UnsupportedFormatError
from wsi_deepr.optics import RandomizationRanges

from .conftest import shared_path


def _he_like(size=(300, 340), seed=0) -> np.ndarray:
    """Pink/purple texture that passes the tissue check, uint8 RGB."""
    rng = np.random.default_rng(seed)
    t = ndimage.gaussian_filter(rng.random(size), 2.0)
    t = (t - t.min()) / np.ptp(t)
    rgb = np.stack([0.95 - 0.45 * t, 0.75 - 0.6 * t, 0.9 - 0.35 * t], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def he_png(tmp_path):
    path = tmp_path / "he.png"
    skimage.io.imsave(path, _he_like(), check_contrast=False)
    return path


def _write_small(path, n=10, patch=16, channels=("R", "G", "B")):
    rng = np.random.default_rng(0)
    w = PairDatasetWriter(path, patch_size=patch, channels=channels, modality="brightfield",
                          kind="simulated", storage_dtype="uint8", shard=4)
    data = []
    for i in range(n):
        tgt = rng.random((patch, patch, len(channels))).astype(np.float32)
        inp = 0.5 * tgt
        data.append((inp, tgt))
        w.add(inp, tgt, z_um=float(i) - 5, pixel_size_um=0.5, fov=i // 2, split=int(i >= 8), source=0,
              origin=(i, 2 * i), na=0.75)
    summary = w.close(sources=[{"name": "syn", "path": "none"}], settings={"test": True})
    return data, summary


# --- format and reader ----------------------------------------------------------------------------------


def test_writer_reader_roundtrip_with_recorded_normalisation(tmp_path):
    path = tmp_path / "d.zarr"
    data, summary = _write_small(path)
    assert summary["pairs"] == 10
    assert summary["train"] == 8
    assert summary["val"] == 2
    assert summary["fov_train"] == 4
    assert summary["fov_val"] == 1
    attrs = read_attrs(path)
    assert attrs["format"] == "wsi-deepr-pairs"
    assert attrs["normalization"]["applied"] is False
    targets = np.stack([np.rint(t * 255) / 255 for _, t in data[:8]])
    np.testing.assert_allclose(attrs["normalization"]["target"]["mean"], targets.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(attrs["normalization"]["target"]["std"], targets.std(axis=(0, 1, 2)), rtol=1e-5)
    raw = PairDataset(path, split="all", normalize=False, layout="HWC")
    assert len(raw) == 10
    item = raw[3]
    np.testing.assert_allclose(item["target"], data[3][1], atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(item["input"], data[3][0], atol=0.5 / 255 + 1e-6)
    assert item["z_um"] == pytest.approx(-2.0)
    assert item["index"] == 3
    val = PairDataset(path, split="val")
    assert [val[i]["index"] for i in range(len(val))] == [8, 9]
    train = PairDataset(path, split="train")
    x = train[0]["target"]
    assert x.shape == (3, 16, 16)
    assert x.dtype == np.float32
    stats = attrs["normalization"]["target"]
    expect = (np.rint(data[0][1] * 255) / 255 - stats["mean"]) / stats["std"]
    np.testing.assert_allclose(x, np.moveaxis(expect, -1, 0), atol=1e-4)
    with pytest.raises(IndexError):
        train[8]


def test_reader_is_lazy_picklable_and_augments_input_and_target_together(tmp_path):
    path = tmp_path / "d.zarr"
    _write_small(path)
    ds = PairDataset(path, split="all", augment=True, normalize=False, seed=1)
    assert ds._group is None  # nothing opened before the first item
    clone = pickle.loads(pickle.dumps(ds))
    seen = set()
    for _ in range(40):
        item = clone[2]
        np.testing.assert_allclose(item["input"] * 2, item["target"], atol=1.5 / 255)
        seen.add(item["target"].tobytes())
    assert len(seen) == 8  # all 8 flips/rotations occur


def test_dihedral_gives_eight_distinct_images_and_running_stats_match_numpy():
    img = np.arange(12.0).reshape(3, 4)
    outs = {dihedral(img, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    with pytest.raises(ValueError, match="k=8"):
        dihedral(img, 8)
    rs = RunningStats(2)
    batch = np.random.default_rng(0).random((5, 7, 2))
    rs.update(batch[:2])
    rs.update(batch[2:])
    np.testing.assert_allclose(rs.result()["mean"], batch.reshape(-1, 2).mean(0), rtol=1e-6)
    np.testing.assert_allclose(rs.result()["std"], batch.reshape(-1, 2).std(0), rtol=1e-5)


def test_split_by_fov_keeps_fields_of_view_whole():
    fov = np.repeat(np.arange(40), 5)
    val = split_by_fov(fov, val_fraction=0.15, seed=3)
    assert val.sum() == 6 * 5
    assert not set(fov[val]) & set(fov[~val])
    assert split_by_fov(np.array([0, 0, 1]), val_fraction=0.15).sum() in (1, 2)  # both sides get one


def test_writer_and_reader_errors(tmp_path):
    path = tmp_path / "d.zarr"
    _write_small(path, n=2)
    with pytest.raises(OutputExistsError, match="overwrite"):
        PairDatasetWriter(path, patch_size=16, channels=("R", "G", "B"), modality="brightfield", kind="simulated")
    w = PairDatasetWriter(path, patch_size=16, channels=("R", "G", "B"), modality="brightfield",
                          kind="simulated", overwrite=True)
    with pytest.raises(ValueError, match="patch of shape"):
        w.add(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), z_um=0, pixel_size_um=1, fov=0, split=0, source=0)
    (tmp_path / "other").mkdir()
    with pytest.raises(UnsupportedFormatError, match="not a wsi-deepr pair dataset"):
        read_attrs(tmp_path / "other")


# --- simulated builder ----------------------------------------------------------------------------------


def test_build_simulated_is_reproducible_and_records_what_went_in(tmp_path, he_png):
    sources = open_sources([he_png], modality="brightfield")
    assert sources[0].pixel_size_assumed
    assert sources[0].pixel_size_um == 0.5
    ranges = RandomizationRanges.for_modality("brightfield", z_um=(-3.0, 3.0), tilt_probability=0.5)
    kw = {"n_pairs": 12, "patch_size": 48, "ranges": ranges, "seed": 7, "workers": 1}
    summary = build_simulated(sources, tmp_path / "a.zarr", **kw)
    build_simulated(sources, tmp_path / "b.zarr", **kw)
    a = PairDataset(tmp_path / "a.zarr", split="all", normalize=False)
    b = PairDataset(tmp_path / "b.zarr", split="all", normalize=False)
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["input"], b[i]["input"])
    assert summary["pairs"] == 12
    assert summary["train"] + summary["val"] == 12
    assert -3.0 <= summary["z_um"]["min"]
    assert summary["z_um"]["max"] <= 3.0
    assert 0.5 <= summary["pixel_size_um"]["min"]
    assert summary["pixel_size_um"]["max"] <= 1.0
    info = summarize(tmp_path / "a.zarr")
    assert info["sources"][0]["path"] == str(he_png)
    assert info["settings"]["ranges"]["z_um"] == [-3.0, 3.0]
    assert a[0]["input"].shape == (3, 48, 48)
    # the input is a blurred (lower-contrast) version of the target, clearly so far from focus
    item = max((a[i] for i in range(len(a))), key=lambda it: abs(it["z_um"]))
    assert abs(item["z_um"]) > 1.5
    from scipy.ndimage import gaussian_filter

    def band(img):  # detail energy between 1 and 4 px, little affected by the input's noise
        return float(np.std(gaussian_filter(img, (0, 1, 1)) - gaussian_filter(img, (0, 4, 4))))

    assert band(item["input"]) < band(item["target"])


def test_simulated_target_is_the_in_focus_image_through_the_same_optics(tmp_path, he_png):
    """At z = 0 without noise or JPEG the input IS the target: both went through the same objective.

    (A target that skipped the objective's in-focus PSF would teach the model to sharpen every
    in-focus slide beyond its optics.)
    """
    sources = open_sources([he_png], modality="brightfield")
    ranges = RandomizationRanges.for_modality("brightfield", z_um=(0.0, 0.0), tilt_probability=0.0,
                                              photons=(1e12, 1e12), read_noise=(0.0, 0.0), jpeg_probability=0.0,
                                              na=(0.3, 0.3))
    build_simulated(sources, tmp_path / "z0.zarr", n_pairs=4, patch_size=48, ranges=ranges, seed=3, workers=1)
    ds = PairDataset(tmp_path / "z0.zarr", split="all", normalize=False)
    for i in range(len(ds)):
        item = ds[i]
        np.testing.assert_allclose(item["input"], item["target"], atol=1.5 / 255)
    info = summarize(tmp_path / "z0.zarr")
    assert "same optics" in info["settings"]["target"]


@pytest.mark.slow
def test_build_simulated_with_processes_matches_in_process(tmp_path, he_png):
    sources = open_sources([he_png], modality="brightfield")
    kw = {"n_pairs": 8, "patch_size": 32, "seed": 1, "job_size": 3}
    build_simulated(sources, tmp_path / "one.zarr", workers=1, **kw)
    build_simulated(sources, tmp_path / "two.zarr", workers=2, **kw)
    a = PairDataset(tmp_path / "one.zarr", split="all", normalize=False)
    b = PairDataset(tmp_path / "two.zarr", split="all", normalize=False)
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["target"], b[i]["target"])
        np.testing.assert_array_equal(a[i]["input"], b[i]["input"])


def test_fluorescence_sources_split_channels_with_their_wavelengths():
    sources = open_sources([shared_path("slides", "small_vectra.qptiff")], modality="fluorescence")
    assert [s.channels for s in sources] == [("DAPI",), ("FITC",), ("Cy3",)]
    assert [s.wavelengths_um[0] for s in sources] == [0.461, 0.52, 0.57]
    assert sources[0].pixel_size_um == pytest.approx(0.4965, abs=1e-3)
    assert not sources[0].pixel_size_assumed
    assert emission_wavelength("unknown") == 0.52
    planes = open_sources([f"{shared_path('stacks', 'mitochondria-fluorescence', 'mitochondria_zstack.ome.tif')}#18-20"],
                          modality="fluorescence")
    assert len(planes) == 3
    assert planes[0].shape == (800, 512)


# --- z-stack builder ------------------------------------------------------------------------------------


def test_build_from_stacks_pairs_every_plane_with_the_patch_ground_truth(tmp_path):
    base = _he_like((140, 150), seed=2).astype(float)
    folder = tmp_path / "stack"
    folder.mkdir()
    for z in range(-2, 3):
        plane = ndimage.gaussian_filter(base, (1.2 * abs(z), 1.2 * abs(z), 0))
        skimage.io.imsave(folder / f"z{z:+03d}.png", plane.astype(np.uint8), check_contrast=False)
    st = read_stack(folder, z_step_um=0.8)
    summary, reports = build_from_stacks([st], tmp_path / "s.zarr", patch_size=64, max_offset=1,
                                         measure_residuals=False)
    assert reports[0]["chosen_planes"] == [0, 0, 0, 0]
    assert summary["pairs"] == 4 * 3
    assert summary["fov_train"] + summary["fov_val"] == 4
    ds = PairDataset(tmp_path / "s.zarr", split="all", normalize=False, layout="HWC")
    zs = sorted({round(float(ds[i]["z_um"]), 3) for i in range(len(ds))})
    assert zs == [-0.8, 0.0, 0.8]
    with pytest.raises(ValueError, match="z_step"):
        build_from_stacks([read_stack(folder)], tmp_path / "t.zarr", patch_size=64)


# --- CLI ------------------------------------------------------------------------------------------------


def test_cli_dataset_simulate_and_info(tmp_path, he_png, capsys):
    out = tmp_path / "cli.zarr"
    rc = main(["dataset", "simulate", str(he_png), "-o", str(out), "--modality", "brightfield", "--pairs", "4",
               "--patch-size", "32", "--workers", "1", "--z-range", "-2", "2", "--stain-sigma", "0.2",
               "--stain-bias", "0.05"])
    assert rc == 0
    ranges = PairDataset(out).attrs["settings"]["ranges"]
    assert (ranges["stain_sigma"], ranges["stain_bias"]) == (0.2, 0.05)
    text = capsys.readouterr().out
    assert "pairs 4" in text
    assert "z_um" in text
    assert main(["dataset", "info", str(out)]) == 0
    assert "normalisation" in capsys.readouterr().out
    assert main(["dataset", "simulate", str(he_png), "-o", str(out), "--modality", "brightfield"]) == 2
    assert "exists" in capsys.readouterr().err
