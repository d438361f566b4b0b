"""The CLI end to end, and every kind of bad input: exit 2, one line, no output file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from wsi_deepr.cli import main

from .conftest import shared_path


@pytest.fixture
def models(rgb_model, mono_model):
    """The two everyday test models; they share a folder with nothing else in it."""
    return {"rgb": rgb_model, "mono": mono_model}


@pytest.fixture
def small_rgb(tmp_path):
    """A small RGB OME-TIFF (sizes not multiples of the tile)."""
    rng = np.random.default_rng(0)
    data = (rng.random((700, 530, 3)) * 255).astype(np.uint8)
    path = tmp_path / "small.ome.tif"
    tifffile.imwrite(path, data, photometric="rgb", tile=(256, 256),
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_refocus_writes_default_output_beside_input(capsys, small_rgb, models) -> None:
    code, out, err = run(capsys, "refocus", small_rgb, "--model", models["rgb"], "--tile", "128", "-q")
    assert code == 0, err
    target = small_rgb.with_name("small.refocused.ome.tif")
    assert target.exists()
    with tifffile.TiffFile(target) as tif:
        assert tif.is_ome
        assert tif.series[0].shape == (700, 530, 3)
    assert sorted(p.name for p in small_rgb.parent.iterdir()) == [
        "small.ome.tif", "small.refocused.ome.tif", "small.refocused.ome.tif.json"]  # + provenance sidecar


def test_tile_option_takes_auto(capsys, tmp_path, small_rgb, models) -> None:
    import json

    out = tmp_path / "auto.ome.tif"
    for workers, tile in ((1, 768), (2, 576)):
        code, _, err = run(capsys, "refocus", small_rgb, "-o", out, "--model", models["rgb"], "--tile", "auto",
                           "--workers", workers, "--scheduler", "threads", "--overwrite", "-q")
        assert code == 0, err
        # 700 x 530 px, halo 4: one worker runs one 768-px window over it, two run two 576-px windows at once
        assert json.loads(out.with_name(out.name + ".json").read_text())["parameters"]["tile"] == tile
    code, _, err = run(capsys, "refocus", small_rgb, "-o", tmp_path / "x.ome.tif", "--model", models["rgb"],
                       "--tile", "big")
    assert code == 2, err
    assert "neither a size in pixels nor 'auto'" in err


def test_scale_auto_halves_a_fine_slide_and_native_keeps_it(capsys, tmp_path, models) -> None:
    """A 0.25 µm/px slide and a model trained at 0.5: auto halves it, --scale native does not."""
    data = (np.random.default_rng(1).random((300, 260, 3)) * 255).astype(np.uint8)
    src = tmp_path / "fine.ome.tif"
    tifffile.imwrite(src, data, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.25,
                                                            "PhysicalSizeY": 0.25})
    for mode, shape in (("auto", (150, 130, 3)), ("native", (300, 260, 3))):
        out = tmp_path / f"{mode}.ome.tif"
        code, _, err = run(capsys, "refocus", src, "-o", out, "--model", models["rgb"], "--tile", "64",
                           "--scale", mode, "--output-scale", "processing", "--scheduler", "threads", "-q")
        assert code == 0, err
        with tifffile.TiffFile(out) as tif:
            assert tif.series[0].shape == shape
        record = json.loads(out.with_name(out.name + ".json").read_text())
        assert record["scale"]["action"] == ("downsample" if mode == "auto" else "native")
        assert record["output_mpp"] == pytest.approx([0.25 * 300 / shape[0]] * 2)
    code, _, err = run(capsys, "refocus", src, "--model", models["rgb"], "--scale", "half")
    assert code == 2, err
    assert "half" in err


def test_info_describes_the_slide_and_models_lists_the_model_cards(capsys, models, monkeypatch) -> None:
    svs = shared_path("slides", "CMU-1-Small-Region.svs")
    code, out, _ = run(capsys, "info", svs)
    assert code == 0
    assert "2220 x 2967" in out
    assert "brightfield" in out
    assert "0.499" in out
    monkeypatch.setenv("WSI_DEEPR_MODEL_PATH", str(models["rgb"].parent))
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert "rgb" in out
    assert "mono" in out
    assert "halo 4 px" in out


def _bad_inputs(tmp_path, small_rgb):
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all\n" * 20)
    empty = tmp_path / "empty.svs"
    empty.touch()
    png = tmp_path / "picture.png"
    import imagecodecs

    png.write_bytes(imagecodecs.png_encode(np.zeros((8, 8, 3), np.uint8)))
    cmu = shared_path("slides", "CMU-1-Small-Region.svs")
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(cmu.read_bytes()[: int(cmu.stat().st_size * 0.4)])
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {
        "missing": (tmp_path / "nope.svs", "not found|does not exist"),
        "directory": (folder, "directory"),
        "empty": (empty, "empty"),
        "truncated": (truncated, "truncated|corrupt|damaged"),
        "not-an-image": (text, "not an image|not a supported|unsupported|cannot read"),
        "unsupported": (png, "PNG|unsupported|not a supported"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "truncated", "not-an-image", "unsupported"])
def test_bad_slide_fails_with_one_line_naming_it(capsys, tmp_path, small_rgb, models, case) -> None:
    path, pattern = _bad_inputs(tmp_path, small_rgb)[case]
    out_path = tmp_path / "out.ome.tif"
    code, out, err = run(capsys, "refocus", path, "-o", out_path, "--model", models["rgb"])
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0], re.I), lines[0]
    assert str(path.name) in lines[0]
    assert not out_path.exists()


def test_bad_model_or_output_fails_in_one_line_and_touches_no_file(capsys, tmp_path, small_rgb, models) -> None:
    out_path = tmp_path / "out.ome.tif"
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x00garbage" * 10)
    cases = [
        (["--model", not_onnx], "not a valid ONNX model"),
        (["--model", models["mono"], "--modality", "brightfield"], "fluorescence model|channels"),
        (["--model", models["rgb"], "--modality", "fluorescence"], "brightfield model"),
        (["--model", models["rgb"], "-o", small_rgb], "is the input"),
        (["--model", models["rgb"], "-o", tmp_path / "missing_dir" / "x.ome.tif"], "does not exist"),
        (["--model", models["rgb"], "--tile", "20", "--halo", "8"], "raise --tile"),
    ]
    for extra, pattern in cases:
        args = ["refocus", small_rgb, *extra]
        if "-o" not in extra:
            args += ["-o", out_path]
        code, _, err = run(capsys, *args)
        assert code == 2, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
        import re

        assert re.search(pattern, err), (pattern, err)
        assert not out_path.exists()
    before = small_rgb.read_bytes()
    out_path.write_bytes(b"keep me")
    code, _, err = run(capsys, "refocus", small_rgb, "-o", out_path, "--model", models["rgb"])
    assert code == 2, err
    assert "--overwrite" in err
    assert out_path.read_bytes() == b"keep me"
    assert small_rgb.read_bytes() == before  # the input is never touched


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_output_dir_is_refused(capsys, tmp_path, small_rgb, models) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run(capsys, "refocus", small_rgb, "-o", locked / "x.ome.tif", "--model", models["rgb"])
    finally:
        locked.chmod(0o700)
    assert code == 2, err
    assert "not writable" in err


def test_unwritable_output_dir_is_refused_as_root(capsys, tmp_path, small_rgb, models, monkeypatch) -> None:
    """Root bypasses permission bits, so simulate a read-only mount via os.access."""
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked) else real_access(p, mode))
    code, _, err = run(capsys, "refocus", small_rgb, "-o", locked / "x.ome.tif", "--model", models["rgb"])
    assert code == 2, err
    assert "not writable" in err
    assert str(locked) in err
    assert not any(locked.iterdir())


def test_verbose_shows_traceback(capsys, tmp_path, models) -> None:
    code, _, err = run(capsys, "refocus", tmp_path / "nope.svs", "-v")
    assert code == 2, err
    assert "Traceback" in err


def test_cli_and_refocus_path_never_import_torch(tmp_path, small_rgb, models) -> None:
    """Run a real refocus through the CLI in a fresh interpreter: torch never loads."""
    out = tmp_path / "out.ome.tif"
    code = (
        "import sys\n"
        "from wsi_deepr.cli import main\n"
        f"rc = main(['refocus', {str(small_rgb)!r}, '-o', {str(out)!r}, '--model', {str(models['rgb'])!r},"
        " '--tile', '128', '-q'])\n"
        "assert rc == 0, rc\n"
        "import wsi_deepr.api, wsi_deepr.parallel.graph, wsi_deepr.readers, wsi_deepr.inference.card, wsi_deepr.inference.kernel\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


def test_console_script_installed() -> None:
    exe = shutil.which("wsi-deepr")
    if exe is None:
        pytest.skip("package not installed with its console script")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "wsi-deepr" in proc.stdout


@pytest.mark.slow
def test_distributed_scheduler_prints_dashboard_and_matches_local(capsys, tmp_path, small_rgb, models) -> None:
    from distributed import LocalCluster

    local = tmp_path / "local.ome.tif"
    remote = tmp_path / "remote.ome.tif"
    code, _, err = run(capsys, "refocus", small_rgb, "-o", local, "--model", models["rgb"], "--tile", "128", "-q")
    assert code == 0, err
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      scheduler_port=0) as cluster:
        code, _, err = run(capsys, "refocus", small_rgb, "-o", remote, "--model", models["rgb"], "--tile", "128",
                           "--scheduler", cluster.scheduler_address)
    assert code == 0, err
    assert "Dask dashboard: http://127.0.0.1:" in err
    a = tifffile.imread(local, series=0, level=0)
    b = tifffile.imread(remote, series=0, level=0)
    np.testing.assert_array_equal(a, b)
