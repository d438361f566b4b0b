"""Shared fixtures: the real data in ``../shared/data`` (skipped cleanly when absent) and the test models.

The test models are :func:`wsi_deepr.testing.conv_model` graphs written once per
session.  ``rgb_model`` and ``mono_model`` are the two everyday ones (depth 2,
seed 0, halo 4, the cards of :func:`.builders.rgb_card` / :func:`.builders.mono_card`)
and share one folder holding nothing else (``rgb.onnx``, ``mono.onnx``), so a
test may point ``WSI_DEEPR_MODEL_PATH`` at it.  A test that needs other
weights or another card asks ``model_factory``.  Slide builders live in
``builders.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from wsi_deepr.testing import conv_model, save_model

from .builders import mono_card, rgb_card

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


def shared_path(*parts: str) -> Path:
    """Return a path under ``../shared/data``, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture
def shared_data() -> Path:
    """The ``../shared/data`` folder (skips when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found: {SHARED_DATA}")
    return SHARED_DATA


# ---------------------------------------------------------------- test models
@pytest.fixture(scope="session")
def model_factory(tmp_path_factory) -> Callable[..., Path]:
    """``make(name, card, *, channels=3, depth=2, seed=0)``: the path of that conv test model.

    Each model is written once per session, as ``NAME.onnx`` alone in its own
    folder (the file name is the model's name in provenance records).
    """
    made: dict[tuple, Path] = {}

    def make(name: str, card: Mapping[str, str], *, channels: int = 3, depth: int = 2, seed: int = 0) -> Path:
        key = (name, channels, depth, seed, tuple(sorted(card.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(f"model-{name}")
            made[key] = save_model(conv_model(channels=channels, depth=depth, seed=seed, card=card),
                                   folder / f"{name}.onnx")
        return made[key]

    return make


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    """A folder with exactly the two everyday test models, ``rgb.onnx`` and ``mono.onnx``."""
    folder = tmp_path_factory.mktemp("models")
    save_model(conv_model(channels=3, depth=2, card=rgb_card()), folder / "rgb.onnx")
    save_model(conv_model(channels=1, depth=2, card=mono_card()), folder / "mono.onnx")
    return folder


@pytest.fixture(scope="session")
def rgb_model(model_folder) -> Path:
    """Brightfield conv test model: 3 channels, depth 2, seed 0, z-score, halo 4 px."""
    return model_folder / "rgb.onnx"


@pytest.fixture(scope="session")
def mono_model(model_folder) -> Path:
    """Fluorescence conv test model: 1 channel, depth 2, seed 0, percentile 1-99.8, halo 4 px."""
    return model_folder / "mono.onnx"


from .slurm_fixture import slurm_cluster  # noqa: E402,F401 - the session fixture of tests/test_slurm.py
