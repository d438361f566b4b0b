"""``wsi-deepr batch``: every slide attempted, failures reported, reruns idempotent; provenance."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_deepr import refocus
from wsi_deepr.batch import plan_batch
from wsi_deepr.cli import main
from wsi_deepr.runsafe.lock import OutputLock
from wsi_deepr.runsafe.provenance import read_annotations, record_from_annotations
from wsi_deepr.runsafe.resume import scratch_path

from .builders import make_mono, make_rgb

FAST = ["--tile", "128", "--scheduler", "threads"]


@pytest.fixture
def model(rgb_model) -> Path:
    """The everyday RGB test model (``rgb.onnx``: "rgb" in provenance records)."""
    return rgb_model


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three good slides and a corrupt one (a truncated TIFF)."""
    d = tmp_path / "incoming"
    d.mkdir()
    for i, name in enumerate(("a.ome.tif", "b.tif", "c.svs.tif")):
        make_rgb(d / name, shape=(300 + 40 * i, 260), seed=i)
    good = (d / "a.ome.tif").read_bytes()
    (d / "broken.tif").write_bytes(good[: len(good) // 3])
    return d


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_report(path: Path) -> tuple[list[dict], dict]:
    with open(path.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows, json.loads(path.with_suffix(".json").read_text())


@pytest.mark.slow
def test_batch_with_a_corrupt_slide_on_the_default_local_cluster(capsys, tmp_path, folder, model) -> None:
    """The others complete, exit status 1, the report names the corrupt file."""
    out = tmp_path / "out"
    code, _, err = run(capsys, "batch", folder, "--output-dir", out, "--model", model, "--tile", "128",
                            "--workers", "1", "--threads-per-worker", "2", "--dashboard-address", "127.0.0.1:0",
                            "--report", out / "report")
    assert code == 1
    assert "Dask dashboard: http://127.0.0.1:" in err
    assert "broken.tif" in err
    assert "truncated" in err
    assert "3 done, 0 skipped, 1 failed" in err
    rows, doc = read_report(out / "report.csv")
    status = {Path(r["input"]).name: r for r in rows}
    assert {k: v["status"] for k, v in status.items()} == {
        "a.ome.tif": "done", "b.tif": "done", "c.svs.tif": "done", "broken.tif": "failed"}
    assert "broken.tif" in status["broken.tif"]["error"]
    assert "truncated" in status["broken.tif"]["error"]
    assert all(int(status[n]["tiles"]) > 0 and float(status[n]["seconds"]) > 0
               for n in ("a.ome.tif", "b.tif", "c.svs.tif"))
    assert doc["counts"] == {"done": 3, "failed": 1}
    for name in ("a", "b", "c.svs"):
        assert (out / f"{name}.refocused.ome.tif").exists()
        assert (out / f"{name}.refocused.ome.tif.json").exists()
    assert not (out / "broken.refocused.ome.tif").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no lock, scratch or temporary left


def test_rerun_skips_finished_outputs_and_overwrite_redoes_them(capsys, tmp_path, folder, model) -> None:
    out = tmp_path / "out"
    os.unlink(folder / "broken.tif")
    code, _, err = run(capsys, "batch", folder, "--output-dir", out, "--model", model, *FAST, "--report", out / "r1")
    assert code == 0, err
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.ome.tif")}
    code, stdout, _ = run(capsys, "batch", folder, "--output-dir", out, "--model", model, *FAST,
                          "--report", out / "r2")
    assert code == 0
    assert "0 done, 3 skipped, 0 failed" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.ome.tif")} == before
    rows, _ = read_report(out / "r2.csv")
    assert [r["status"] for r in rows] == ["skipped"] * 3
    assert all(int(r["tiles"]) > 0 for r in rows)
    code, stdout, _ = run(capsys, "batch", folder / "b.tif", "--output-dir", out, "--model", model, *FAST,
                          "--overwrite", "--report", out / "r3")
    assert code == 0
    assert "1 done, 0 skipped" in stdout
    assert (out / "b.refocused.ome.tif").stat().st_mtime_ns != before["b.refocused.ome.tif"]
    # the outputs beside their inputs are not taken as inputs the next night
    code, stdout, _ = run(capsys, "batch", folder, "--output-dir", folder, "--model", model, *FAST, "-q")
    code, stdout, _ = run(capsys, "batch", folder, "--output-dir", folder, "--model", model, *FAST)
    assert code == 0
    assert "0 done, 3 skipped, 0 failed" in stdout


def test_locked_output_fails_that_slide_only(capsys, tmp_path, folder, model) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out / "b.refocused.ome.tif"):  # another job is writing it
        code, _, _ = run(capsys, "batch", folder / "a.ome.tif", folder / "b.tif", "--output-dir", out,
                           "--model", model, *FAST, "--report", out / "r")
    assert code == 1
    rows, _ = read_report(out / "r.csv")
    assert [r["status"] for r in rows] == ["done", "failed"]
    assert "locked" in rows[1]["error"]
    assert ".b.refocused.ome.tif.lock" in rows[1]["error"]


def test_manifest_sets_output_and_model_per_slide_and_needs_an_input_column(capsys, tmp_path, folder, model,
                                                                           mono_model) -> None:
    make_mono(folder / "fluo.ome.tif", shape=(200, 150))
    manifest = folder / "list.csv"
    manifest.write_text("input,output,model\n"
                        "a.ome.tif,,\n"
                        f"fluo.ome.tif,sub/fluo-out.ome.tif,{mono_model}\n"
                        "missing.svs,,\n")
    (tmp_path / "out" / "sub").mkdir(parents=True)
    code, _, err = run(capsys, "batch", "--manifest", manifest, "--output-dir", tmp_path / "out", "--model", model,
                       *FAST, "--report", tmp_path / "out" / "r")
    assert code == 1
    rows, _ = read_report(tmp_path / "out" / "r.csv")
    assert [r["status"] for r in rows] == ["done", "done", "failed"]
    assert (tmp_path / "out" / "sub" / "fluo-out.ome.tif").exists()
    assert "missing.svs" in rows[2]["error"]
    bad = tmp_path / "bad.csv"
    bad.write_text("slidez\nx.svs\n")
    code, _, err = run(capsys, "batch", "--manifest", bad, "--output-dir", tmp_path / "out")
    assert code == 2, err
    assert "no 'input' column" in err
    assert len(err.strip().splitlines()) == 1


def test_two_inputs_one_output_is_reported(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    items = plan_batch([tmp_path / "x" / "s.svs", tmp_path / "y" / "s.svs"], tmp_path / "out")
    assert items[0].error is None
    assert "also the output of" in items[1].error
    assert "manifest" in items[1].error


@pytest.mark.slow
def test_batch_killed_after_the_rename_is_tidied_by_the_next_run(capsys, tmp_path, folder, model) -> None:
    """Killed between the OME-TIFF rename and the sidecar/scratch cleanup: the rerun
    skips the finished slide, restores its sidecar from the OME-XML and removes the scratch."""
    out = tmp_path / "out"
    code = "import sys; from wsi_deepr.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "batch", str(folder / "a.ome.tif"), "--output-dir", str(out),
                           "--model", str(model), *FAST], capture_output=True, text=True,
                          env={**os.environ, "WSI_DEEPR_CRASH_AT": "written"}, check=False, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    target = out / "a.refocused.ome.tif"
    assert target.exists()
    assert scratch_path(target).exists()
    assert not (out / "a.refocused.ome.tif.json").exists()
    code, stdout, err = run(capsys, "batch", folder / "a.ome.tif", "--output-dir", out, "--model", model, *FAST)
    assert code == 0, err
    assert "skipped" in stdout, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("wsi-deepr-batch")) == [
        "a.refocused.ome.tif", "a.refocused.ome.tif.json"]
    sidecar = json.loads((out / "a.refocused.ome.tif.json").read_text())
    assert sidecar["sidecar_restored_from"] == "OME-XML"
    assert sidecar["model"] == "rgb"


def test_provenance_in_ome_xml_and_sidecar(tmp_path, folder, model) -> None:
    src = folder / "a.ome.tif"
    out = tmp_path / "a.ome.tif"
    result = refocus(src, out, model=model, tile=128, workers=1)
    sidecar = json.loads(result.sidecar.read_text())
    xml = record_from_annotations(read_annotations(out))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    for record in (sidecar, xml):
        assert record["version"]
        assert record["model"] == "rgb"
        assert record["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert record["parameters"]["tile"] == 128
        assert record["parameters"]["halo"] == 4
        assert record["normalization"]["spec"] == "zscore"
        assert len(record["normalization"]["offset"]) == 3
        assert record["provider"] == "CPUExecutionProvider"
        assert record["input"] == str(src.resolve())
        assert record["input_size"] == src.stat().st_size
        assert record["input_sha256"] == digest
        assert record["host"]
        assert record["scheduler"]["kind"] == "threads"
        assert {"prepare", "refocus", "pyramid", "checksum"} <= set(record["timings"])
    assert {"write", "total"} <= set(sidecar["timings"])  # known only once the file is written
    assert sidecar["output"] == str(out.resolve())
    assert sidecar["windows"] == result.windows
    with tifffile.TiffFile(out) as tif:
        assert "wsi_deepr.input_sha256" in tif.ome_metadata
    np.testing.assert_equal(result.provenance["input_sha256"], digest)
