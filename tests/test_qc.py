"""Focus QC (``wsi-deepr qc``): summary figures, the three reports, the CLI and a real browser.

The tests hold for any reasonable defocus estimator: they check the schema,
consistency with the map, and that a region defocused by 3 µm with the
project's own optics ranks worst.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsi_deepr.cli import main
from wsi_deepr.focus.map import DefocusMap
from wsi_deepr.focus.qc import run_qc
from wsi_deepr.focus.report import (
    QC_COLUMNS,
    SCHEMA,
    SUMMARY_CSV_FIELDS,
    qc_stem,
    summary,
    summary_columns,
    write_qc_summary_csv,
)

from .conftest import shared_path

MPP = 0.499
#: the defocused block of the built slide: y0, x0, y1, x1 (level-0 px) and its defocus
BLOCK, BLOCK_Z = (1024, 512, 2048, 1536), 3.0
SIZE = (2967, 2220)  # height, width of CMU-1-Small-Region

TOP_KEYS = {"schema", "wsi_deepr_version", "created", "slide", "slide_name", "modality", "width", "height", "mpp",
            "window", "window_um", "grid_shape", "level", "threshold_um", "method", "seconds", "summary",
            "overlay", "regions"}
SUMMARY_KEYS = {"mpp", "windows", "tissue_windows", "estimated_windows", "tissue_area_px", "tissue_area_mm2",
                "estimated_share", "in_focus_share", "share_above_1um", "share_above_2um", "share_above_3um",
                "share_above_5um", "median_defocus_um", "p95_defocus_um", "max_defocus_um", "worst_regions"}


def _map(defocus, tissue, *, mpp=0.5, window=100, threshold=1.0) -> DefocusMap:
    defocus, tissue = np.asarray(defocus, float), np.asarray(tissue, float)
    n = len(defocus)
    boxes = np.array([(100 * i, 0, window, window) for i in range(n)], dtype=np.int64)
    return DefocusMap(slide="x.svs", mpp=mpp, window=window, grid_shape=(1, n), boxes=boxes, tissue=tissue,
                      defocus_um=defocus, confidence=np.where(np.isfinite(defocus), 0.9, 0.0),
                      threshold_um=threshold, level=0, reduction=1, method="test", seconds=0.0)


@pytest.fixture(scope="module")
def defocused_slide(tmp_path_factory):
    """CMU-1-Small-Region with BLOCK (tissue, 512x512 µm) defocused by 3 µm through the project's optics."""
    from wsi_deepr.readers import open_slide
    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, OpticalSetting, defocus

    src = open_slide(shared_path("slides", "CMU-1-Small-Region.svs"))
    image = src.read_region(0, 0, 0, *SIZE)
    setting = OpticalSetting(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=MPP)
    blurred = np.clip(np.rint(defocus(image.astype(np.float32), setting, BLOCK_Z)), 0, 255).astype(np.uint8)
    y0, x0, y1, x1 = BLOCK
    out = image.copy()
    out[y0:y1, x0:x1] = blurred[y0:y1, x0:x1]
    path = tmp_path_factory.mktemp("slide") / "defocused.tif"
    tifffile.imwrite(path, out, photometric="rgb", tile=(256, 256), compression="zlib",
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def defocused_qc(defocused_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("qc")
    [result] = run_qc([defocused_slide], output_dir=out)
    assert result.status == "done", result.error
    return result, json.loads(result.outputs.json.read_text())


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- summary figures -------------------------------------------------------------------------------------


def test_summary_weighted_by_tissue_area() -> None:
    dmap = _map([0.5, 1.5, 2.5, 6.0, np.nan], [1.0, 1.0, 0.5, 0.5, 1.0])
    s = summary(dmap, top_k=2)
    assert set(s) == SUMMARY_KEYS
    assert s["windows"] == 5 and s["tissue_windows"] == 5 and s["estimated_windows"] == 4
    assert s["tissue_area_px"] == pytest.approx(4 * 10_000)
    assert s["tissue_area_mm2"] == pytest.approx(4 * 10_000 * 0.25 / 1e6)
    assert s["estimated_share"] == pytest.approx(0.75)  # weights 1, 1, 0.5, 0.5 of 4
    assert s["in_focus_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["share_above_1um"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["share_above_2um"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["share_above_3um"] == pytest.approx(1 / 6, abs=1e-4)
    assert s["share_above_5um"] == pytest.approx(1 / 6, abs=1e-4)
    assert 0.5 <= s["median_defocus_um"] <= 2.5 and s["p95_defocus_um"] <= s["max_defocus_um"] == 6.0
    assert [r["defocus_um"] for r in s["worst_regions"]] == [6.0, 2.5]
    assert s["worst_regions"][0] == {"rank": 1, "x": 300, "y": 0, "width": 100, "height": 100,
                                     "defocus_um": 6.0, "confidence": 0.9, "tissue": 0.5}
    json.dumps(s, allow_nan=False)


def test_summary_without_estimate_or_mpp() -> None:
    s = summary(_map([np.nan, np.nan], [0.0, 0.3], mpp=None))
    assert s["tissue_area_mm2"] is None and s["tissue_area_px"] == pytest.approx(3000)
    assert s["estimated_share"] == 0 and s["worst_regions"] == []
    for key in ("in_focus_share", "share_above_3um", "median_defocus_um", "p95_defocus_um", "max_defocus_um"):
        assert s[key] is None
    cols = summary_columns(s)
    assert tuple(cols) == QC_COLUMNS and cols["tissue_mm2"] is None and cols["tissue_px"] == pytest.approx(3000)


def test_summary_csv_and_stem(tmp_path) -> None:
    row = {"slide": "a.svs", "status": "done", **summary_columns(summary(_map([2.0], [1.0])))}
    path = write_qc_summary_csv([row, {"slide": "b.svs", "status": "failed", "error": "bad, \"quoted\""}],
                                tmp_path / "sub" / "s.csv")
    rows = _rows(path)
    assert tuple(rows[0]) == SUMMARY_CSV_FIELDS
    assert rows[0]["worst_defocus_um"] == "2.0" and rows[0]["share_above_1um"] == "1.0"
    assert rows[1]["error"] == "bad, \"quoted\"" and rows[1]["median_defocus_um"] == ""
    assert [p.name for p in path.parent.iterdir()] == ["s.csv"]  # no temporary left
    assert qc_stem("/x/slide.ome.tif") == "slide" and qc_stem("a.b.svs") == "a.b"


# --- the reports -----------------------------------------------------------------------------------------


def test_defocused_region_ranks_worst(defocused_qc) -> None:
    _, doc = defocused_qc
    y0, x0, y1, x1 = BLOCK

    def in_block(r) -> float:
        """Fraction of region ``r`` inside the defocused block."""
        dy = max(0, min(y1, r["y"] + r["height"]) - max(y0, r["y"]))
        dx = max(0, min(x1, r["x"] + r["width"]) - max(x0, r["x"]))
        return dy * dx / (r["width"] * r["height"])

    worst = doc["summary"]["worst_regions"][0]
    assert in_block(worst) >= 0.5, worst
    estimated = [r for r in doc["regions"] if r["defocus_um"] is not None]
    inside = [r["defocus_um"] for r in estimated if in_block(r) >= 0.75]
    outside = [r["defocus_um"] for r in estimated if in_block(r) == 0]
    assert inside and outside
    assert np.median(inside) > np.median(outside) + 1.0


def test_json_schema(defocused_qc) -> None:
    result, doc = defocused_qc
    assert set(doc) == TOP_KEYS and doc["schema"] == SCHEMA
    assert set(doc["summary"]) == SUMMARY_KEYS
    height, width = SIZE
    assert (doc["width"], doc["height"], doc["modality"]) == (width, height, "brightfield")
    assert doc["mpp"] == pytest.approx(MPP) and doc["window_um"] == pytest.approx(doc["window"] * doc["mpp"], 1e-3)
    rows, cols = doc["grid_shape"]
    assert len(doc["regions"]) == rows * cols == doc["summary"]["windows"]
    for r in doc["regions"]:
        assert set(r) == {"x", "y", "width", "height", "tissue", "defocus_um", "confidence"}
        assert 0 <= r["x"] < width and 0 <= r["y"] < height and r["width"] > 0 and r["height"] > 0
        assert r["x"] + r["width"] <= width and r["y"] + r["height"] <= height
        assert 0 <= r["tissue"] <= 1 and 0 <= r["confidence"] <= 1
        assert r["defocus_um"] is None or r["defocus_um"] >= 0
    assert doc["summary"]["estimated_windows"] == sum(r["defocus_um"] is not None for r in doc["regions"])
    assert result.summary == doc["summary"]
    assert doc["overlay"]["png"] == result.outputs.png.name


def test_png_is_the_overlay(defocused_qc) -> None:
    result, doc = defocused_qc
    ov = doc["overlay"]
    with Image.open(result.outputs.png) as img:
        img.load()
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == (ov["width"], ov["height"])
        pixels = np.asarray(img)
    assert max(ov["thumbnail_width"], ov["thumbnail_height"]) <= 1024
    assert ov["height"] > ov["thumbnail_height"]  # the legend below
    assert ov["thumbnail_width"] == round(SIZE[1] * ov["scale"])
    assert max(ov["thumbnail_width"], ov["thumbnail_height"]) == 1024  # reduced to the default 1024 px
    assert pixels.std() > 10  # not blank
    legend = pixels[ov["thumbnail_height"]:]
    assert (legend[..., 0].astype(int) - legend[..., 1] > 80).any()  # the red end of the colour bar


def test_html_is_self_contained(defocused_qc) -> None:
    result, doc = defocused_qc
    text = result.outputs.html.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "defocused.tif" in text
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", text)
    assert len(sources) == 1 + len(doc["summary"]["worst_regions"])
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert not re.search(r"(src|href)=\"?(https?:|//|file:)", text) and "<link" not in text and "@import" not in text
    assert sorted(p.name for p in result.outputs.html.parent.iterdir()) == [
        "defocused.focus.html", "defocused.focus.json", "defocused.focus.png"]  # nothing else, no temporaries


def test_real_slides(tmp_path) -> None:
    slides = [shared_path("slides", n) for n in ("CMU-1-Small-Region.svs", "small_vectra.qptiff", "small.svs")]
    results = run_qc(slides, output_dir=tmp_path, summary_csv=tmp_path / "qc.csv")
    assert [r.status for r in results] == ["done"] * 3, [r.error for r in results]
    cmu = json.loads(results[0].outputs.json.read_text())
    assert (cmu["width"], cmu["height"], cmu["mpp"]) == (2220, 2967, pytest.approx(0.499))
    assert 0.1 < cmu["summary"]["tissue_area_mm2"] < 1.64  # tissue, not the whole 1.64 mm² field
    vectra = json.loads(results[1].outputs.json.read_text())
    assert vectra["modality"] == "fluorescence" and vectra["summary"]["estimated_windows"] > 0
    for r in results:
        with Image.open(r.outputs.png) as img:
            assert img.size == tuple(json.loads(r.outputs.json.read_text())["overlay"][k]
                                     for k in ("width", "height"))
    rows = _rows(tmp_path / "qc.csv")
    assert [row["status"] for row in rows] == ["done"] * 3 and rows[0]["json"] == str(results[0].outputs.json)


# --- the command line ------------------------------------------------------------------------------------


def test_cli_writes_beside_the_slide(capsys, tmp_path) -> None:
    slide = tmp_path / "CMU-1-Small-Region.svs"
    shutil.copy(shared_path("slides", "CMU-1-Small-Region.svs"), slide)
    code, out, err = run(capsys, "qc", slide)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "CMU-1-Small-Region.focus.html", "CMU-1-Small-Region.focus.json", "CMU-1-Small-Region.focus.png",
        "CMU-1-Small-Region.svs"]  # one slide: no summary CSV unless asked
    assert "CMU-1-Small-Region.focus.html" in out and "µm" in out
    code, out, err = run(capsys, "qc", slide, "-q")  # again: reports are replaced
    assert code == 0 and out == "" and err == ""
    code, out, err = run(capsys, "qc", slide, "-q", "--top-k", "2")  # fewer worst regions
    assert code == 0, err
    doc = json.loads((tmp_path / "CMU-1-Small-Region.focus.json").read_text())
    assert len(doc["summary"]["worst_regions"]) == 2


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.svs", "missing.svs"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "notes.txt").write_text("not a slide") and d / "notes.txt", "notes.txt"),
])
def test_cli_bad_single_slide_exits_2(capsys, tmp_path, make, needle) -> None:
    target = make(tmp_path)
    before = sorted(tmp_path.iterdir())
    code, out, err = run(capsys, "qc", target)
    assert code == 2, err
    assert err.startswith("Error: ") and err.count("\n") == 1 and (needle in err or str(target) in err)
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_cli_usage_errors(capsys, tmp_path) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "qc" in out
    assert run(capsys, "qc")[0] == 2
    assert run(capsys, "qc", shared_path("slides", "small.svs"), "--modality", "xray")[0] == 2


def test_cli_unwritable_output_dir_exits_2(capsys, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "qc", shared_path("slides", "small.svs"), "--output-dir", blocker / "sub")
    assert code == 2 and err.count("\n") == 1 and str(blocker / "sub") in err and "--output-dir" in err


def test_cli_several_slides_one_bad(capsys, tmp_path) -> None:
    good = shared_path("slides", "small.svs")
    out_dir = tmp_path / "reports"
    code, out, err = run(capsys, "qc", good, tmp_path / "missing.svs", good, "--output-dir", out_dir)
    assert code == 1
    assert "missing.svs" in err and "1 done, 2 failed" in err
    [summary_csv] = out_dir.glob("wsi-deepr-qc-*.csv")
    rows = _rows(summary_csv)
    assert [r["status"] for r in rows] == ["done", "failed", "failed"]
    assert "missing.svs" in rows[1]["error"] and rows[1]["json"] == ""
    assert "would replace" in rows[2]["error"]  # the same slide twice into one folder
    assert rows[0]["html"] == str(out_dir / "small.focus.html") and (out_dir / "small.focus.html").exists()


def test_cli_summary_path(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "qc", shared_path("slides", "small.svs"), "--output-dir", tmp_path,
                       "--summary", tmp_path / "s" / "all.csv", "-q")
    assert code == 0, err
    [row] = _rows(tmp_path / "s" / "all.csv")
    assert row["status"] == "done" and row["error"] == ""


# --- a real browser --------------------------------------------------------------------------------------

_PROBE = ("<script>window.addEventListener('load', () => { for (const [i, img] of [...document.images].entries()) "
          "{ document.body.insertAdjacentHTML('beforeend', `<p class=probe>img ${i} ${img.complete} "
          "${img.naturalWidth}x${img.naturalHeight}</p>`); } });</script>")


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return exe


def _chromium_args(exe, tmp_path):
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000"]


@pytest.mark.browser
def test_html_renders_in_chromium(defocused_qc, tmp_path) -> None:
    exe = _chromium()
    result, doc = defocused_qc
    probed = tmp_path / "probed.html"  # the report plus a script that writes each image's decoded size
    probed.write_text(result.outputs.html.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
                      encoding="utf-8")
    dom = subprocess.run([*_chromium_args(exe, tmp_path), "--dump-dom", probed.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "Focus QC: defocused.tif" in dom
    probes = re.findall(r"img (\d+) (true|false) (\d+)x(\d+)", dom)
    assert len(probes) == 1 + len(doc["summary"]["worst_regions"])
    assert all(done == "true" and int(w) > 0 and int(h) > 0 for _, done, w, h in probes), probes
    assert (int(probes[0][2]), int(probes[0][3])) == (doc["overlay"]["width"], doc["overlay"]["height"])

    shot = tmp_path / "page.png"
    subprocess.run([*_chromium_args(exe, tmp_path), "--window-size=1280,2000", f"--screenshot={shot}",
                    result.outputs.html.as_uri()], capture_output=True, timeout=120, check=True)
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 20  # the page shows pictures, not a blank or error page
    colourful = pixels.max(axis=-1) - pixels.min(axis=-1) > 40  # the page itself is grey on white
    assert colourful.mean() > 0.05  # the map and the crops are on screen
