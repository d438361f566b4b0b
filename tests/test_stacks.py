"""Z-stack reading, registration, EDOF and ground-truth selection."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import skimage.io
import tifffile
from scipy import ndimage

from wsi_deepr.data.edof import edof_wavelet
from wsi_deepr.data.pairs import patch_grid, select_ground_truth, stack_pairs
from wsi_deepr.data.registration import (
    estimate_similarity,
    largest_valid_rectangle,
    register_stack,
    registration_residuals,
    sharpest_plane,
)
from wsi_deepr.data.stacks import ZStack, read_stack
from wsi_deepr.errors import SlideNotFoundError, TilingError, UnsupportedFormatError

from .conftest import shared_path


def _object(size: int = 280, seed: int = 0) -> np.ndarray:
    """Smooth random texture with blobs, in [0, 1]."""
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.random((size, size)), 2.0)
    tex = (tex - tex.min()) / np.ptp(tex)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(25):
        cy, cx, r = rng.uniform(20, size - 20, 2).tolist() + [rng.uniform(4, 10)]
        tex -= 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
    return np.clip(tex + 0.5, 0, 1)


def _similarity(scale: float, angle_deg: float, ty: float, tx: float, centre: np.ndarray,
                obj_centre: np.ndarray) -> np.ndarray:
    """Plane pixel -> object pixel: rotate/scale about the plane centre, then shift."""
    a = np.radians(angle_deg)
    m = np.eye(3)
    m[:2, :2] = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m[:2, 2] = obj_centre + np.array([ty, tx]) - m[:2, :2] @ centre
    return m


def _synthetic_stack(n: int = 7, seed: int = 0):
    """Planes of different sizes, 0.5 %/step magnification, small rotations/shifts, blur growing with |z|."""
    obj = _object(seed=seed)
    rng = np.random.default_rng(seed + 1)
    labels = np.arange(n) - n // 2
    planes, maps = [], []
    for z in labels:
        h, w = 200 + int(rng.integers(-8, 9)), 216 + int(rng.integers(-8, 9))
        c = (np.array([h, w]) - 1) / 2
        m = _similarity(1 + 0.005 * z, 0.1 * z, *rng.uniform(-3, 3, 2), c, (np.array(obj.shape) - 1) / 2)
        plane = ndimage.affine_transform(obj, m[:2, :2], offset=m[:2, 2], output_shape=(h, w), order=3)
        plane = ndimage.gaussian_filter(plane, 0.3 + 0.6 * abs(z))
        plane = plane + rng.normal(0, 0.005, plane.shape)
        planes.append((np.clip(plane, 0, 1) * 65535).astype(np.uint16)[:, :, None])
        maps.append(m)
    stack = ZStack(planes=planes, z_index=labels, z_step_um=0.5, pixel_size_um=0.25, modality="fluorescence",
                   source="synthetic", channel_names=("C0",))
    return stack, maps


# --- reading ------------------------------------------------------------------------------------------


def test_read_folder_of_planes_sorted_by_z_label(tmp_path):
    rng = np.random.default_rng(0)
    for name, size in (("z+01.png", 30), ("z-01.png", 32), ("z+00.png", 31), ("notes.txt", 0)):
        if size:
            skimage.io.imsave(tmp_path / name, (rng.random((size, size + 4, 3)) * 255).astype(np.uint8),
                              check_contrast=False)
        else:
            (tmp_path / name).write_text("not a plane")
    st = read_stack(tmp_path, z_step_um=1.5)
    assert st.z_index.tolist() == [-1, 0, 1]
    assert st.shapes == [(32, 36), (31, 35), (30, 34)]
    assert st.modality == "brightfield"
    assert st.channel_names == ("R", "G", "B")
    assert st.z_um().tolist() == [-1.5, 0.0, 1.5]


def test_read_multipage_and_ome_tiff(tmp_path):
    data = np.arange(4 * 20 * 24, dtype=np.uint16).reshape(4, 20, 24)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data, photometric="minisblack")
    st = read_stack(plain)
    assert len(st) == 4
    assert st.planes[0].shape == (20, 24, 1)
    assert st.z_step_um is None
    with pytest.raises(ValueError, match="z_step_um"):
        st.z_um()
    ome = tmp_path / "s.ome.tif"
    tifffile.imwrite(ome, data, ome=True, photometric="minisblack", metadata={"axes": "ZYX", "PhysicalSizeZ": 0.2, "PhysicalSizeX": 0.1})
    st = read_stack(ome, planes=[1, 2])
    assert st.z_step_um == pytest.approx(0.2)
    assert st.pixel_size_um == pytest.approx(0.1)
    np.testing.assert_array_equal(st.planes[1][:, :, 0], data[2])
    assert st.modality == "fluorescence"


def test_read_errors_name_the_path(tmp_path):
    with pytest.raises(SlideNotFoundError, match="missing"):
        read_stack(tmp_path / "missing")
    (tmp_path / "one").mkdir()
    skimage.io.imsave(tmp_path / "one" / "z0.png", np.zeros((8, 8), np.uint8), check_contrast=False)
    with pytest.raises(UnsupportedFormatError, match="at least 2"):
        read_stack(tmp_path / "one")
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, np.zeros((8, 8), np.uint8))
    with pytest.raises(UnsupportedFormatError, match="Z"):
        read_stack(single)


def test_mitochondria_stack_metadata():
    st = read_stack(shared_path("stacks", "mitochondria-fluorescence", "mitochondria_zstack.ome.tif"))
    assert len(st) == 34
    assert st.planes[0].shape == (800, 512, 1)
    assert st.z_step_um == pytest.approx(0.05)
    assert st.modality == "fluorescence"


# --- registration -------------------------------------------------------------------------------------


def test_estimate_similarity_recovers_a_known_transform():
    obj = _object()
    c = (np.array([180, 190]) - 1) / 2
    oc = (np.array(obj.shape) - 1) / 2
    fixed_map = _similarity(1.0, 0.0, 0.0, 0.0, c, oc)
    moving_map = _similarity(1.02, 0.5, 2.3, -1.7, c, oc)
    fixed = ndimage.affine_transform(obj, fixed_map[:2, :2], offset=fixed_map[:2, 2], output_shape=(180, 190))
    moving = ndimage.affine_transform(obj, moving_map[:2, :2], offset=moving_map[:2, 2], output_shape=(180, 190))
    est = estimate_similarity(fixed, moving)
    truth = np.linalg.inv(moving_map) @ fixed_map
    corners = np.array([[0, 0, 1], [0, 189, 1], [179, 0, 1], [179, 189, 1]], float)
    assert np.abs(corners @ est.T - corners @ truth.T).max() < 0.1


def test_register_stack_recovers_scale_rotation_and_shift_and_crops_to_common_field():
    stack, maps = _synthetic_stack()
    res = register_stack(stack)
    ref = res.reference
    assert stack.z_index[ref] == 0  # the sharpest plane
    h, w = stack.planes[ref].shape[:2]
    corners = np.array([[0, 0, 1], [0, w - 1, 1], [h - 1, 0, 1], [h - 1, w - 1, 1]], float)
    for k, t in enumerate(res.transforms):
        truth = np.linalg.inv(maps[k]) @ maps[ref]
        assert np.abs(corners @ t.T - corners @ truth.T).max() < 0.3, k
    params = res.parameters()
    assert params[-1]["scale"] == pytest.approx((1 + 0.005 * 0) / (1 + 0.005 * 3), rel=2e-3)
    y0, x0, y1, x1 = res.crop
    assert res.planes.shape == (len(stack), y1 - y0, x1 - x0, 1)
    assert (y1 - y0) > 0.85 * h
    assert (x1 - x0) > 0.85 * w
    resid = registration_residuals(res.planes, ref)
    assert resid["max_reference_px"] < 0.5
    assert resid["max_phase_reference_px"] < 0.5


def test_largest_valid_rectangle():
    mask = np.zeros((10, 12), bool)
    mask[2:8, 1:11] = True
    mask[2, 1] = False
    assert largest_valid_rectangle(mask) == (2, 2, 8, 11)  # 6 x 9 beats 5 x 10
    assert largest_valid_rectangle(np.ones((4, 5), bool)) == (0, 0, 4, 5)


# --- EDOF and ground truth ------------------------------------------------------------------------------


def test_edof_takes_each_region_from_its_sharp_plane():
    obj = _object(160)
    blur = ndimage.gaussian_filter(obj, 3.0)
    left = obj.copy()
    left[:, 80:] = blur[:, 80:]
    right = obj.copy()
    right[:, :80] = blur[:, :80]
    planes = np.stack([left, right, blur])[..., None]
    fused = edof_wavelet(planes)
    for level, share in ((0, 0.85), (1, 0.95), (2, 0.95)):  # the finest level has flat, tied areas
        idx = fused.index_maps[level]
        assert np.mean(idx[:, 10:70] == 0) > share
        assert np.mean(idx[:, 90:150] == 1) > share
    err = np.abs(fused.image[8:-8, 8:-8, 0] - obj[8:-8, 8:-8]).mean()
    assert err < 0.7 * min(np.abs(p[8:-8, 8:-8, 0] - obj[8:-8, 8:-8]).mean() for p in planes)
    assert fused.plane_histogram(3)[2] < 0.05


def test_ground_truth_is_the_plane_most_like_the_edof():
    obj = _object(128)
    planes = np.stack([ndimage.gaussian_filter(obj, s) for s in (3.0, 1.5, 0.0, 1.5, 3.0)])[..., None]
    fused = edof_wavelet(planes)
    choices = select_ground_truth(planes, fused.image, patch=64, data_range=1.0, sigma=1.0)
    assert len(choices) == 4
    assert all(c.plane == 2 for c in choices)
    pairs = stack_pairs(choices, np.arange(5) - 2, max_offset=1)
    assert len(pairs) == 4 * 3
    assert {k for _, k, _ in pairs} == {1, 2, 3}


def test_patch_grid_degrades_to_small_fields_and_says_what_to_do():
    assert patch_grid((300, 330), 128) == [(22, 37), (22, 165), (150, 37), (150, 165)]
    with pytest.raises(TilingError, match="lower patch_size"):
        patch_grid((300, 330), 512)


# --- the real smear stack -------------------------------------------------------------------------------


@pytest.mark.slow
def test_smear_stack_registers_within_a_pixel_and_picks_the_focal_plane():
    st = read_stack(shared_path("stacks", "smear-brightfield"))
    assert len(st) == 19
    assert min(st.shapes) == (286, 330)
    assert st.z_index[sharpest_plane(st)] == 0
    res = register_stack(st)
    scales = [p["scale"] for p in res.parameters()]
    assert scales[0] < 0.97  # ~0.5 % per step, as the planes' sizes suggest
    assert scales[-1] > 1.03
    resid = registration_residuals(res.planes, res.reference)
    assert resid["max_neighbour_px"] <= 1.0
    assert resid["max_reference_px"] <= 1.0
    assert resid["max_phase_px"] <= 1.0
    assert resid["max_phase_reference_px"] <= 1.0
    smooth = ndimage.gaussian_filter(res.planes / 255.0, (0, 1, 1, 0))  # as build_from_stacks does
    fused = edof_wavelet(smooth)
    choices = select_ground_truth(smooth, fused.image, patch=64, data_range=1.0)
    chosen = Counter(int(st.z_index[c.plane]) for c in choices)
    assert chosen[0] >= 0.8 * len(choices), chosen
