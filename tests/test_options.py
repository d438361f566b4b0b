"""Bad options fail at once, before any slide read, model session, lock or scratch (issue 11)."""

from __future__ import annotations

import time

import pytest

from wsi_deepr import refocus
from wsi_deepr.cli import main
from wsi_deepr.errors import OptionError
from wsi_deepr.options import RefocusOptions

from .conftest import shared_path

BAD = [
    {"compression": "foo"},
    {"jpeg_quality": 0},
    {"jpeg_quality": 101},
    {"tile": "huge"},
    {"tile": 8},
    {"halo": -1},
    {"overlap": "x"},
    {"batch": 0},
    {"workers": 0},
    {"device": "tpu"},
    {"scale": "zoom"},
    {"background": "maybe"},
    {"modality": "xray"},
    {"resume": "yes"},
    {"overwrite": 1},
]


@pytest.mark.parametrize("bad", BAD, ids=[next(iter(b)) + "=" + repr(next(iter(b.values()))) for b in BAD])
def test_bad_option_is_rejected_by_the_options_object(bad: dict) -> None:
    name = next(iter(bad))
    with pytest.raises(OptionError, match=name):
        RefocusOptions(**bad)


@pytest.mark.parametrize("bad", BAD, ids=[next(iter(b)) + "=" + repr(next(iter(b.values()))) for b in BAD])
def test_bad_option_fails_before_the_slide_is_opened(tmp_path, bad: dict) -> None:
    """A missing slide would raise SlideNotFoundError: the option error comes first."""
    with pytest.raises(OptionError):
        refocus(tmp_path / "missing.svs", tmp_path / "out.ome.tif", **bad)


@pytest.mark.parametrize("bad", [{"compression": "foo"}, {"compression": "jpeg"}, {"scheduler": "everywhere"},
                                 {"background": "skip"}],
                         ids=["compression=foo", "jpeg-for-fluorescence", "scheduler", "skip-glass-on-fluorescence"])
def test_bad_option_on_a_real_slide_fails_in_a_second_and_leaves_nothing(tmp_path, mono_model, bad: dict) -> None:
    slide = shared_path("slides", "small_vectra.qptiff")
    t0 = time.perf_counter()
    with pytest.raises(OptionError):
        refocus(slide, tmp_path / "o.ome.tif", model=mono_model, **bad)
    assert time.perf_counter() - t0 < 5  # generous on a loaded machine; the work it replaces took 10 s
    assert list(tmp_path.iterdir()) == []  # no output, lock, scratch or temporary


@pytest.mark.parametrize("args", [["--tile", "8"], ["--jpeg-quality", "0"], ["--halo", "-2"], ["--device", "tpu"],
                                  ["--scale", "zoom"]])
def test_cli_rejects_bad_option_with_exit_2(tmp_path, args: list[str]) -> None:
    slide = shared_path("slides", "small.svs")
    rc = main(["refocus", str(slide), "-o", str(tmp_path / "o.ome.tif"), "-q", *args])
    assert rc == 2
    assert list(tmp_path.iterdir()) == []


def test_manifest_override_is_validated_like_any_option() -> None:
    options = RefocusOptions(model="m.onnx")
    assert options.with_overrides({"scale": "native", "modality": ""}).scale == "native"
    with pytest.raises(OptionError, match="background"):
        options.with_overrides({"background": "sometimes"})
