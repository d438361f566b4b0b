"""The models embedded in the package: found, valid, within budget, and they refocus.

The quality check is a real one: a defocused version of a real fluorescence
image (simulated with the optics the model was validated on) is refocused
through the whole pipeline, and must come out closer to the in-focus image
than it went in.  Full validation tables are in each model's MODEL_CARD.md.
"""

from __future__ import annotations


import numpy as np
import pytest
import tifffile
from skimage.metrics import structural_similarity

from wsi_deepr import open_slide, refocus
from wsi_deepr.errors import ModelNotFoundError
from wsi_deepr.readers.slide import Modality
from wsi_deepr.inference.registry import list_models, model_dirs, resolve_model
from wsi_deepr.inference.normalization import parse_spec

from .conftest import shared_path

PACKAGE_MODELS = model_dirs()[-1]
SHIPPED = sorted(PACKAGE_MODELS.glob("*.onnx"))


@pytest.fixture(autouse=True)
def _only_package_models(monkeypatch):
    monkeypatch.delenv("WSI_DEEPR_MODEL_PATH", raising=False)


def test_shipped_models_are_listed_valid_and_small() -> None:
    assert SHIPPED, f"no model embedded in {PACKAGE_MODELS}"
    listed = {m.name: m for m in list_models()}
    for path in SHIPPED:
        info = listed[path.stem]
        assert path.stat().st_size <= 10 * 2**20  # the budget
        card = info.card
        assert card.default != card.preview  # released as a default, or a preview used only by name
        assert card.mpp
        assert card.mpp_range
        assert card.halo > 0
        parse_spec(card.normalization)
        assert (PACKAGE_MODELS / f"{path.stem}.MODEL_CARD.md").is_file()
        assert info.sha256 in (PACKAGE_MODELS / f"{path.stem}.MODEL_CARD.md").read_text()


def test_a_preview_brightfield_model_is_never_the_implicit_choice() -> None:
    previews = [m for m in list_models() if m.card.preview]
    if not previews:
        pytest.skip("no preview model is shipped")
    for m in previews:
        released = [r for r in list_models() if r.card.modality is m.card.modality and not r.card.preview]
        if released:
            assert resolve_model(None, modality=m.card.modality).name != m.name
        else:
            with pytest.raises(ModelNotFoundError, match=f"--model {m.name}"):
                resolve_model(None, modality=m.card.modality)
        assert resolve_model(m.name, modality=m.card.modality).path == m.path


@pytest.mark.slow
def test_default_brightfield_network_refocuses_a_defocused_real_image(tmp_path) -> None:
    from wsi_deepr.optics import OpticalSetting, defocus

    src = open_slide(shared_path("slides", "CMU-1-Small-Region.svs"))
    sharp = src.read_region(0, 1000, 600, 1512, 1112).astype(np.float64) / 255.0  # H&E tissue
    setting = OpticalSetting(na=0.75, wavelengths_um=(0.61, 0.545, 0.465), pixel_size_um=0.5)
    in_focus = defocus(sharp, setting, 0.0)
    blurred = defocus(sharp, setting, 3.0)
    slide = tmp_path / "defocused.ome.tif"
    tifffile.imwrite(slide, np.clip(np.rint(blurred * 255), 0, 255).astype(np.uint8), ome=True, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    result = refocus(slide, tmp_path / "out.ome.tif", workers=2, compression="zlib")  # the defaults
    assert result.model == "deepr-brightfield"
    out = tifffile.imread(result.output).astype(np.float64) / 255.0

    def ssim(a):
        m = 32  # away from the borders
        return structural_similarity(np.clip(a, 0, 1)[m:-m, m:-m], np.clip(in_focus, 0, 1)[m:-m, m:-m],
                                     data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)

    before, after = ssim(blurred), ssim(out)
    print(f"SSIM to the in-focus image: defocused {before:.3f} -> refocused {after:.3f}")
    assert after > before + 0.1, (before, after)


def test_default_fluorescence_model_is_the_shipped_one() -> None:
    info = resolve_model(None, modality=Modality.FLUORESCENCE)
    assert info.path.parent == PACKAGE_MODELS
    assert info.card.channels == 1


@pytest.mark.slow
@pytest.mark.parametrize(("method", "runs", "gain"), [("auto", "rl-deconvolution", 0.1),
                                                      ("deepr", "deepr-fluorescence", 0.1)])
def test_default_fluorescence_method_refocuses_a_defocused_real_image(tmp_path, method, runs, gain) -> None:
    from wsi_deepr.optics import OpticalSetting, defocus

    src = open_slide(shared_path("slides", "small_vectra.qptiff"))
    sharp = src.read_region(0, 0, 0, 512, 512)[..., 1].astype(np.float64)  # FITC
    sharp = sharp / np.percentile(sharp, 99.9)
    setting = OpticalSetting(na=0.75, wavelengths_um=(0.52,), pixel_size_um=0.5)
    in_focus = defocus(sharp, setting, 0.0)
    blurred = defocus(sharp, setting, 3.0)
    rng = np.random.default_rng(0)
    noisy = rng.poisson(np.clip(blurred, 0, None) * 400) / 400.0  # photon noise
    slide = tmp_path / "defocused.ome.tif"
    tifffile.imwrite(slide, np.clip(noisy * 20000, 0, 65535).astype(np.uint16), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    result = refocus(slide, tmp_path / "out.ome.tif", workers=2, method=method)
    assert result.model == runs
    out = tifffile.imread(result.output).astype(np.float64) / 20000

    def ssim(a):
        m = 32  # away from the borders
        return structural_similarity(np.clip(a, 0, 1)[m:-m, m:-m], np.clip(in_focus, 0, 1)[m:-m, m:-m],
                                     data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)

    before, after = ssim(noisy), ssim(out)
    print(f"SSIM to the in-focus image: defocused {before:.3f} -> refocused {after:.3f}")
    assert after > before + gain, (before, after)
