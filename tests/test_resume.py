"""Never lose work: kill -9 at every stage, rerun, identical pixels; markers; the lock.

The crash tests run the real CLI in a subprocess and make it SIGKILL itself at
a reproducible point (``WSI_DEEPR_CRASH_AT``, see :func:`wsi_deepr.resume.crash_point`):
before any block is written, in the middle of the tiles, while the reduced
pyramid levels are built, while the OME-TIFF is written.  The rerun must
finish, reuse what was done, leave nothing behind but the output and its
sidecar, and give exactly the pixels of an uninterrupted run, on every
pyramid level: brightfield (JPEG, deterministic for identical pixels) and
16-bit two-channel fluorescence (lossless).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsi_deepr import refocus
from wsi_deepr.errors import OutputLockedError
from wsi_deepr.runsafe.lock import OutputLock, lock_path
from wsi_deepr.runsafe.resume import BlockMarkers, open_scratch, scratch_path
from .builders import make_mono, make_rgb, mono_card, read_levels

# window 264 - 2 * halo 4 = stride 256: blocks of 256 x 512 px with one block-local
# reduced level (chunks 128 x 256); the next level comes from build_pyramid
RGB_ARGS = ["--tile", "264", "--batch", "2"]
MONO_ARGS = ["--tile", "136", "--batch", "2"]


@pytest.fixture(scope="module")
def models(rgb_model, model_factory) -> dict[str, Path]:
    return {"rgb": rgb_model, "mono": model_factory("mono", mono_card(), channels=1, seed=2)}


@pytest.fixture(scope="module")
def slides(tmp_path_factory, models) -> dict[str, tuple[Path, list[np.ndarray]]]:
    """Each slide with the levels of an uninterrupted run (API, threads)."""
    d = tmp_path_factory.mktemp("slides")
    out = {}
    for kind, make, args in (("rgb", make_rgb, RGB_ARGS), ("mono", make_mono, MONO_ARGS)):
        src = make(d / f"{kind}.ome.tif")
        ref = d / f"{kind}.ref.ome.tif"
        refocus(src, ref, model=models[kind], tile=int(args[1]), batch=2, workers=2)
        out[kind] = (src, read_levels(ref))
    return out


def cli(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter (so that it can be killed)."""
    code = "import sys; from wsi_deepr.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False, timeout=300)


def kill_at(point: str, *args) -> None:
    """Run ``wsi-deepr ARGS`` in a subprocess that SIGKILLs itself at ``point``."""
    killed = cli(*args, env={"WSI_DEEPR_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-2000:])


def rerun(capsys, *args) -> str:
    """Run the CLI again, in this process (faster); return its stdout."""
    from wsi_deepr.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.slow
@pytest.mark.parametrize("point", ["prepared", "blocks:14", "pyramid:1", "write:12"])
def test_kill9_brightfield_then_rerun_is_pixel_identical(tmp_path, models, slides, capsys, point) -> None:
    src, expected = slides["rgb"]
    out = tmp_path / "out.ome.tif"
    args = ["refocus", src, "-o", out, "--model", models["rgb"], *RGB_ARGS, "--scheduler", "threads"]
    kill_at(point, *args)
    assert not out.exists()
    assert lock_path(out).exists()  # left by the dead process: stale, broken by the rerun
    stdout = rerun(capsys, *args)
    got = read_levels(out)
    assert len(got) == len(expected) == 3
    for level, (a, b) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"level {level} after kill at {point}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.tif", "out.ome.tif.json"]
    resumed_blocks = json.loads((tmp_path / "out.ome.tif.json").read_text())["resumed_blocks"]
    if point == "prepared":
        assert resumed_blocks == 0
    elif point.startswith("blocks"):
        assert 14 <= resumed_blocks < 36
        assert "blocks resumed" in stdout
    else:
        assert resumed_blocks == 36  # all blocks; and the complete reduced level


@pytest.mark.slow
def test_kill9_on_local_cluster_then_rerun(tmp_path, models, slides, capsys) -> None:
    """The default scheduler: a LocalCluster of worker processes, killed with its client."""
    src, expected = slides["rgb"]
    out = tmp_path / "out.ome.tif"
    args = ["refocus", src, "-o", out, "--model", models["rgb"], *RGB_ARGS]
    kill_at("blocks:10", *args, "--workers", "2", "--threads-per-worker", "1",
            "--dashboard-address", "127.0.0.1:0")
    assert "blocks resumed" in rerun(capsys, *args, "--scheduler", "threads")
    for a, b in zip(read_levels(out), expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_kill9_fluorescence_lossless_identical(tmp_path, models, slides, capsys) -> None:
    """16-bit lossless: the strongest check; killed twice in a row."""
    src, expected = slides["mono"]
    out = tmp_path / "out.ome.tif"
    args = ["refocus", src, "-o", out, "--model", models["mono"], *MONO_ARGS, "--scheduler", "threads"]
    for point in ("blocks:15", "write:3"):
        kill_at(point, *args)
    rerun(capsys, *args, "-q")
    got = read_levels(out)
    assert got[0].dtype == np.uint16
    assert got[0].shape == (2, 1200, 1000)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


class _Stop(Exception):
    pass


def _interrupt_after(n: int):
    def progress(done: int, total: int) -> None:
        if done >= n and done < total:
            raise _Stop
    return progress


def test_interrupted_api_run_resumes_and_untrusted_chunks_are_redone(tmp_path, models, slides) -> None:
    """An exception mid-run keeps the scratch; a block without its marker is recomputed
    even though its chunk file exists (here: garbage, as a half-written chunk would be)."""
    src, expected = slides["rgb"]
    out = tmp_path / "out.ome.tif"
    with pytest.raises(_Stop):
        refocus(src, out, model=models["rgb"], tile=264, batch=2, workers=1, progress=_interrupt_after(20))
    scratch = scratch_path(out)
    markers = BlockMarkers(scratch / ".blocks")
    done = markers.load()
    assert 5 <= len(done) < 36
    assert not lock_path(out).exists()
    by, bx = min(done)
    chunk = scratch / "0" / "c" / str(by) / str(bx) / "0"
    chunk.write_bytes(b"half-written")  # a torn chunk...
    os.unlink(scratch / ".blocks" / f"{by}.{bx}")  # ...whose block never got its marker
    result = refocus(src, out, model=models["rgb"], tile=264, batch=2, workers=1)
    assert result.resumed_blocks == len(done) - 1
    for a, b in zip(read_levels(out), expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not scratch.exists()


def test_scratch_of_other_parameters_is_replaced(tmp_path, models) -> None:
    src = make_rgb(tmp_path / "small.ome.tif", shape=(600, 500))
    out = tmp_path / "out.ome.tif"
    with pytest.raises(_Stop):
        refocus(src, out, model=models["rgb"], tile=72, batch=2, workers=1, progress=_interrupt_after(20))
    assert scratch_path(out).exists()
    # another batch size: another block layout, the old blocks are useless
    result = refocus(src, out, model=models["rgb"], tile=72, batch=3, workers=1)
    assert result.resumed_blocks == 0
    # a scratch whose creation was cut off before its fingerprint: replaced too
    arrays = [("0", (8, 8, 3), (8, 8, 3), np.uint8)]
    first = open_scratch(tmp_path / "s.zarr", {"a": 1}, arrays)
    assert not first.resumed
    first.markers(0, 0)
    assert open_scratch(tmp_path / "s.zarr", {"a": 1}, arrays).done == {(0, 0)}
    assert not open_scratch(tmp_path / "s.zarr", {"a": 2}, arrays).done
    (tmp_path / "s.zarr" / "zarr.json").write_text("{ torn")
    assert not open_scratch(tmp_path / "s.zarr", {"a": 2}, arrays).resumed


def test_lock_excludes_a_second_job_and_breaks_stale_locks(tmp_path) -> None:
    out = tmp_path / "x.ome.tif"
    with OutputLock(out) as held:
        assert held.path == tmp_path / ".x.ome.tif.lock"
        with pytest.raises(OutputLockedError, match=r"\.x\.ome\.tif\.lock") as info:
            OutputLock(out).acquire()
        assert f"pid {os.getpid()}" in str(info.value)
    assert not lock_path(out).exists()
    # a dead holder on this host: stale
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    lock_path(out).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0}))
    with OutputLock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    # a pid that was reused by another process (start time differs): stale as well
    lock_path(out).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": 1}))
    OutputLock(out).acquire().release()
    # another host: never broken automatically
    lock_path(out).write_text(json.dumps({"pid": 1, "host": "some-other-node", "started": 0}))
    with pytest.raises(OutputLockedError, match="some-other-node"):
        OutputLock(out).acquire()


def test_cli_refuses_a_locked_output(tmp_path, models, slides, capsys) -> None:
    from wsi_deepr.cli import main

    src, _ = slides["rgb"]
    out = tmp_path / "out.ome.tif"
    with OutputLock(out):
        code = main(["refocus", str(src), "-o", str(out), "--model", str(models["rgb"]), "--scheduler", "threads"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert str(lock_path(out)) in err
    assert "locked" in err
    assert not out.exists()
    assert not scratch_path(out).exists()
