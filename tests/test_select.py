"""Refocus only where it helps (issue 12 part 3): the defocus map picks the windows the network runs on.

Slides with a known defocus layout are made from the shared CMU slide through
the project's optics (:func:`wsi_deepr.testing.write_layout_slide`); a fixed
test model whose card says ``min_defocus_um = 2`` refocuses them losslessly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from wsi_deepr import open_slide, refocus
from wsi_deepr.runsafe.provenance import read_annotations, record_from_annotations
from wsi_deepr.testing import DefocusRegion, write_layout_slide
from wsi_deepr.tiling.geometry import TileGrid

from .builders import rgb_card
from .conftest import shared_path

THREE = DefocusRegion(300, 800, 1100, 1500, 3.0)  # y0, x0, y1, x1, z (µm): tissue of CMU-1-Small-Region
ONE = DefocusRegion(2150, 700, 2850, 1400, 1.0)
TILE, HALO, OVERLAP = 256, 4, 8


@pytest.fixture(scope="module")
def cmu() -> np.ndarray:
    slide = open_slide(shared_path("slides", "CMU-1-Small-Region.svs"))
    return slide.read_region(0, 0, 0, *slide.shape[:2])


@pytest.fixture(scope="module")
def layout_slide(cmu, tmp_path_factory):
    return write_layout_slide(cmu, tmp_path_factory.mktemp("layout") / "layout.tif", regions=[THREE, ONE])


@pytest.fixture(scope="module")
def selective_model(model_factory):
    return model_factory("selective", rgb_card(min_defocus_um="2.0"))


@pytest.fixture(scope="module")
def refocused(layout_slide, selective_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "layout.ome.tif"
    result = refocus(layout_slide, out, model=selective_model, tile=TILE, overlap=OVERLAP, compression="zlib",
                     workers=2)
    return result


def _selected(result) -> np.ndarray:
    rows = result.provenance["focus"]["refocused_rows"]
    return np.array([[c == "1" for c in row] for row in rows])


def _inside(core: tuple[int, int, int, int], box: DefocusRegion) -> bool:
    y0, x0, y1, x1 = core
    return box.y0 <= y0 and box.x0 <= x0 and y1 <= box.y1 and x1 <= box.x1


def _apart(core: tuple[int, int, int, int], box: DefocusRegion, margin: int) -> bool:
    y0, x0, y1, x1 = core
    return y1 <= box.y0 - margin or y0 >= box.y1 + margin or x1 <= box.x0 - margin or x0 >= box.x1 + margin


@pytest.mark.slow
def test_windows_inside_the_3um_region_are_refocused(refocused) -> None:
    grid = TileGrid(refocused.provenance["output_shape"][:2], tile=TILE, halo=HALO, overlap=OVERLAP)
    selected = _selected(refocused)
    inside = [w.index for w in grid.windows() if _inside(w.core, THREE)]
    assert inside, "the 3 µm region holds whole windows"
    assert all(selected[i] for i in inside)


@pytest.mark.slow
def test_in_focus_tissue_and_the_1um_region_are_passed_through(refocused, cmu) -> None:
    """Below the model's 2 µm threshold: the in-focus tissue (>= 95 % of its windows) and the 1 µm region."""
    grid = TileGrid(refocused.provenance["output_shape"][:2], tile=TILE, halo=HALO, overlap=OVERLAP)
    selected = _selected(refocused)
    od = -np.log10((cmu.astype(np.float64) + 1) / 256.0).max(axis=-1)
    in_focus = [w.index for w in grid.windows()
                if _apart(w.core, THREE, 64) and _apart(w.core, ONE, 64)
                and (od[w.core[0]:w.core[2], w.core[1]:w.core[3]] > 0.15).mean() > 0.25]
    assert len(in_focus) >= 8
    passed = np.mean([not selected[i] for i in in_focus])
    assert passed >= 0.95, f"{passed:.2%} of in-focus tissue windows passed through"
    inside_one = [w.index for w in grid.windows() if _inside(w.core, ONE)]
    assert inside_one
    assert not any(selected[i] for i in inside_one)


@pytest.mark.slow
def test_output_equals_the_input_bit_for_bit_outside_the_refocused_windows(refocused, layout_slide) -> None:
    grid = TileGrid(refocused.provenance["output_shape"][:2], tile=TILE, halo=HALO, overlap=OVERLAP)
    selected = _selected(refocused)
    touched = np.zeros(grid.shape, dtype=bool)  # cores (feather included) of the refocused windows
    for w in grid.windows():
        if selected[w.index]:
            y0, x0, y1, x1 = w.core
            touched[y0:y1, x0:x1] = True
    source = tifffile.imread(layout_slide)
    output = tifffile.imread(refocused.output)
    assert touched.any()
    np.testing.assert_array_equal(output[~touched], source[~touched])
    assert np.mean(output[touched] != source[touched]) > 0.5  # the test model changes what it runs on


@pytest.mark.slow
def test_provenance_records_the_threshold_counts_and_the_map(refocused) -> None:
    focus = refocused.provenance["focus"]
    assert focus["threshold_um"] == 2.0
    assert focus["refocused_windows"] == int(_selected(refocused).sum())
    assert focus["refocused_windows"] + focus["passed_through_in_focus"] + focus["passed_through_no_estimate"] \
        == focus["windows"]
    sidecar = json.loads(refocused.sidecar.read_text())
    rows, cols = sidecar["focus"]["map"]["grid_shape"]
    assert len(sidecar["focus"]["map"]["regions"]) == rows * cols
    embedded = record_from_annotations(read_annotations(refocused.output))["focus"]
    assert embedded["threshold_um"] == 2.0
    assert "regions" not in embedded["map"]  # the per-region map stays in the sidecar


@pytest.mark.slow
def test_where_all_runs_every_tissue_window(layout_slide, selective_model, refocused, tmp_path) -> None:
    result = refocus(layout_slide, tmp_path / "all.ome.tif", model=selective_model, tile=TILE, overlap=OVERLAP,
                     compression="zlib", workers=2, where="all")
    assert "focus" not in result.provenance
    skipped = result.provenance["parameters"]["skipped_windows"]
    assert skipped == result.provenance["background"]["skipped_windows"]  # glass only
    assert skipped < refocused.provenance["parameters"]["skipped_windows"]


@pytest.mark.slow
def test_tilted_slide_refocuses_its_edges_not_its_centre(cmu, selective_model, tmp_path) -> None:
    """A tissue strip tilted through focus at its centre, |z| up to 5 µm at its left and right edges."""
    strip = cmu[1200:2200, 700:1900]
    slide = write_layout_slide(strip, tmp_path / "tilt.tif", tilt=(0.0, 10.0 / (strip.shape[1] * 0.5)))
    result = refocus(slide, tmp_path / "tilt.ome.tif", model=selective_model, tile=TILE, overlap=OVERLAP,
                     compression="zlib", workers=2)
    columns = _selected(result).mean(axis=0)
    assert columns[0] > 0.5
    assert columns[-1] > 0.5
    assert columns[len(columns) // 2] == 0


def test_a_card_without_a_threshold_runs_every_window(layout_slide, rgb_model, tmp_path) -> None:
    result = refocus(layout_slide, tmp_path / "o.ome.tif", model=rgb_model, tile=TILE, workers=2)
    assert "focus" not in result.provenance


@pytest.mark.slow
def test_qc_option_writes_the_report_beside_the_output_with_before_after_crops(layout_slide, selective_model,
                                                                              tmp_path) -> None:
    refocus(layout_slide, tmp_path / "q.ome.tif", model=selective_model, tile=TILE, workers=2, qc=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["q.focus.html", "q.focus.json", "q.focus.png", "q.ome.tif", "q.ome.tif.json"]
    assert "as scanned (left) and refocused (right)" in (tmp_path / "q.focus.html").read_text()


@pytest.mark.slow
def test_batch_report_carries_the_focus_qc_columns(layout_slide, selective_model, tmp_path) -> None:
    import csv

    from wsi_deepr.batch import FOCUS_FIELDS, plan_batch, run_batch

    items = plan_batch([layout_slide], tmp_path)
    run_batch(items, model=selective_model, tile=TILE, workers=2, report=tmp_path / "report")
    with (tmp_path / "report.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "done"
    assert set(FOCUS_FIELDS) <= set(row)
    assert float(row["share_above_2um"]) > 0.05  # the 3 µm region
    assert float(row["worst_defocus_um"]) >= 2.0
