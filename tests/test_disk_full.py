"""A full disk during the scratch or the final write: one clear line, nothing lost, a rerun resumes (issue 14).

The real case runs on a 3 MiB tmpfs mounted by the test (root on Linux; it
skips where mounting is not allowed); the injected case raises ENOSPC from
the output writer wherever the tests run.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from wsi_deepr import refocus
from wsi_deepr.cli import main
from wsi_deepr.errors import DiskFullError
from wsi_deepr.runsafe.resume import scratch_path

from .builders import read_levels
from .conftest import shared_path


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MiB tmpfs (root only), grown to 128 MiB by calling the fixture's value."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=128m", str(mount)], check=True)

    yield mount, grow
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_full_tmpfs_exits_2_with_one_line_keeps_the_scratch_and_a_rerun_resumes_identical(
        small_fs, mono_model, tmp_path, capsys) -> None:
    mount, grow = small_fs
    slide = shared_path("slides", "small_vectra.qptiff")
    reference = tmp_path / "reference.ome.tif"
    refocus(slide, reference, model=mono_model, workers=2)
    out = mount / "out.ome.tif"
    args = ["refocus", str(slide), "-o", str(out), "--model", str(mono_model), "-q", "--workers", "1"]
    rc = main(args)  # the default scheduler: a LocalCluster
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert str(mount) in err[0]
    assert "MiB" in err[0]
    assert not out.exists()
    assert scratch_path(out).exists()  # finished blocks are kept
    grow()
    assert main(args) == 0
    for got, expected in zip(read_levels(out), read_levels(reference), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert sorted(p.name for p in mount.iterdir()) == ["out.ome.tif", "out.ome.tif.json"]


def test_enospc_from_the_writer_is_a_disk_full_error_and_the_rerun_resumes(mono_model, tmp_path,
                                                                           monkeypatch) -> None:
    import wsi_deepr.writers.ometiff as ometiff

    slide = shared_path("slides", "small_vectra.qptiff")
    out = tmp_path / "out.ome.tif"
    real = ometiff.write_ome_tiff

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ometiff, "write_ome_tiff", full)
    with pytest.raises(DiskFullError, match=str(tmp_path)):
        refocus(slide, out, model=mono_model, workers=2)
    assert not out.exists()
    assert scratch_path(out).exists()
    monkeypatch.setattr(ometiff, "write_ome_tiff", real)
    result = refocus(slide, out, model=mono_model, workers=2)
    assert result.resumed_blocks == result.blocks
    assert Path(result.output).exists()


def test_batch_reports_a_full_disk_as_failed(mono_model, tmp_path, monkeypatch) -> None:
    import wsi_deepr.writers.ometiff as ometiff
    from wsi_deepr.batch import plan_batch, run_batch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ometiff, "write_ome_tiff", full)
    items = plan_batch([shared_path("slides", "small_vectra.qptiff")], tmp_path)
    (report,) = run_batch(items, model=mono_model)
    assert report.status == "failed"
    assert "no space left in" in report.error
