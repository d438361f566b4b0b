"""The model contract: card parsing, model resolution, providers."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_deepr.errors import ModelError, ModelMismatchError, ModelNotFoundError, ProviderUnavailableError
from wsi_deepr.inference.session import SessionSpec, get_session, providers_for, run_model
from wsi_deepr.readers.slide import Modality
from wsi_deepr.inference.card import check_compatible, load_model_info
from wsi_deepr.inference.registry import list_models, resolve_model
from wsi_deepr.testing import conv_model, default_card, save_model


def test_card_is_read_from_metadata_props(tmp_path) -> None:
    path = save_model(conv_model(card=default_card(halo=7, extra_key="x")), tmp_path / "m.onnx")
    info = load_model_info(path)
    assert info.card.modality is Modality.BRIGHTFIELD
    assert (info.card.channels, info.card.halo, info.card.mpp) == (3, 7, 0.5)
    assert info.card.defocus_range_um == (-10.0, 10.0)
    assert dict(info.card.extra) == {"extra_key": "x"}
    assert len(info.sha256) == 64
    assert info.name == "m"


def test_incomplete_card_names_missing_keys(tmp_path) -> None:
    card = default_card()
    del card["halo"], card["mpp"]
    path = save_model(conv_model(card=card), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="missing metadata key.*mpp, halo"):
        load_model_info(path)


def test_not_onnx_is_a_model_error_and_a_missing_file_not_found(tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a protobuf")
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_model_info(bad)
    with pytest.raises(ModelNotFoundError):
        load_model_info(tmp_path / "missing.onnx")


def test_resolve_by_name_path_and_default(tmp_path, monkeypatch) -> None:
    save_model(conv_model(card=default_card(default="true")), tmp_path / "bf.onnx")
    # a default in $WSI_DEEPR_MODEL_PATH wins over the package's embedded default of its modality
    fl = default_card(modality="fluorescence", channels=1, default="true")
    save_model(conv_model(channels=1, card=fl), tmp_path / "fl.onnx")
    monkeypatch.setenv("WSI_DEEPR_MODEL_PATH", str(tmp_path))
    names = {m.name for m in list_models()}
    assert {"bf", "fl"} <= names
    assert resolve_model(None, modality=Modality.BRIGHTFIELD).name == "bf"
    assert resolve_model(None, modality=Modality.FLUORESCENCE).name == "fl"
    assert resolve_model("fl", modality=Modality.BRIGHTFIELD).name == "fl"
    assert resolve_model(str(tmp_path / "bf.onnx"), modality=Modality.FLUORESCENCE).name == "bf"
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        resolve_model("nope", modality=Modality.BRIGHTFIELD)


def test_preview_models_are_used_only_when_named(tmp_path, monkeypatch) -> None:
    save_model(conv_model(card=default_card(status="preview")), tmp_path / "bf-preview.onnx")
    monkeypatch.setenv("WSI_DEEPR_MODEL_PATH", str(tmp_path))
    info = resolve_model("bf-preview", modality=Modality.BRIGHTFIELD)
    assert info.card.preview
    assert not info.card.default
    # no brightfield model has passed its gates: the error names the previews and how to use one
    if not any(m.card.modality is Modality.BRIGHTFIELD and not m.card.preview for m in list_models()):
        with pytest.raises(ModelNotFoundError, match=r"preview models.*bf-preview.*--model"):
            resolve_model(None, modality=Modality.BRIGHTFIELD)
    # a released model of the modality, even one not marked default, comes before any preview
    save_model(conv_model(card=default_card()), tmp_path / "bf-release.onnx")
    assert resolve_model(None, modality=Modality.BRIGHTFIELD).name != "bf-preview"


def test_channel_and_modality_checks(tmp_path) -> None:
    rgb = load_model_info(save_model(conv_model(card=default_card()), tmp_path / "rgb.onnx"))
    mono = load_model_info(save_model(conv_model(channels=1, card=default_card(modality="fluorescence", channels=1)),
                                      tmp_path / "mono.onnx"))
    check_compatible(rgb, n_channels=3, modality=Modality.BRIGHTFIELD)
    check_compatible(mono, n_channels=5, modality=Modality.FLUORESCENCE)
    with pytest.raises(ModelMismatchError, match="takes 3 channels but the slide has 1"):
        check_compatible(load_model_info(save_model(conv_model(card=default_card(modality="fluorescence")),
                                                    tmp_path / "f3.onnx")), n_channels=1,
                         modality=Modality.FLUORESCENCE)
    with pytest.raises(ModelMismatchError, match="brightfield model but the slide is fluorescence"):
        check_compatible(rgb, n_channels=3, modality=Modality.FLUORESCENCE)


def test_cuda_fails_fast_without_provider() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA provider")
    with pytest.raises(ProviderUnavailableError, match="--device cuda"):
        providers_for("cuda")
    assert providers_for("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown device"):
        providers_for("tpu")


@pytest.fixture
def mono_depth3(model_factory):
    """A 1-channel fluorescence conv model of depth 3 (z-score, halo 8)."""
    return model_factory("m", default_card(modality="fluorescence", channels=1), channels=1, depth=3)


def test_one_session_per_spec_and_batched_run(mono_depth3) -> None:
    path = mono_depth3
    spec = SessionSpec(str(path), "cpu", 1)
    assert get_session(spec) is get_session(spec)
    batch = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    out = run_model(spec, batch, model_channels=1)
    single = run_model(spec, batch[:, 1:2], model_channels=1)
    np.testing.assert_allclose(out[:, 1:2], single, atol=1e-6)


def test_cpu_calls_are_bounded_in_pixels(mono_depth3, monkeypatch) -> None:
    import wsi_deepr.inference.session as inference

    path = mono_depth3
    spec = SessionSpec(str(path), "cpu", 1)
    batch = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    whole = run_model(spec, batch, model_channels=1)  # 9 images of 32² in one call
    session = get_session(spec)
    sizes = []
    real_run = session.run

    class Counting:  # the session's methods, with the images per call recorded
        def __getattr__(self, name):
            return getattr(session, name)

        def run(self, outputs, feeds):
            sizes.append(next(iter(feeds.values())).shape[0])
            return real_run(outputs, feeds)

    monkeypatch.setattr(inference, "CPU_PIXELS_PER_CALL", 4 * 32 * 32)
    monkeypatch.setattr(inference, "get_session", lambda s: Counting())
    chunked = run_model(spec, batch, model_channels=1)
    assert sizes == [4, 4, 1]
    np.testing.assert_array_equal(chunked, whole)
