"""Dask distributed: a real LocalCluster of worker processes, its dashboard, GPU resources, jobqueue."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_deepr import refocus
from wsi_deepr.parallel.cluster import ClusterClient, cluster_size, describe, gpu_resources, plugin_name
from wsi_deepr.inference.session import SessionSpec
from wsi_deepr.inference.normalization import compute_stats
from wsi_deepr.parallel.graph import refocus_dask, store_to_zarr

from .builders import make_mono, mono_card, plan_for, read_levels

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.fixture(scope="module")
def mono(tmp_path_factory, model_factory):
    d = tmp_path_factory.mktemp("cluster")
    model = model_factory("mono", mono_card(), channels=1, seed=4)
    return make_mono(d / "fluo.ome.tif", shape=(700, 610)), model


@pytest.mark.slow
def test_local_cluster_1_and_2_workers_identical_dashboard_and_one_session_per_worker(tmp_path, mono) -> None:
    src, model = mono
    outputs = {}
    for n in (1, 2):
        started = []
        with ClusterClient(workers=n, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                           on_start=started.append) as cluster:
            out = tmp_path / f"w{n}.ome.tif"
            result = refocus(src, out, model=model, tile=72, batch=2, scheduler=cluster)
            client = cluster()
            assert started == [client]  # started once, lazily
            assert result.provenance["scheduler"]["workers"] == n
            # worker processes, each holding exactly one ONNX Runtime session of this model
            assert len(set(client.run(lambda: __import__("os").getpid()).values())) == n
            sessions = client.run(lambda: [s.model_path for s in __import__("wsi_deepr.inference.session", fromlist=["_sessions"])._sessions])
            assert list(sessions.values()) == [[str(model)]] * n
            plugins = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
            assert plugin_name(SessionSpec(str(model), "auto", result.parameters["intra_op_threads"])) in plugins
            if n == 2:  # the dashboard, over HTTP on loopback
                link = client.dashboard_link
                assert link.startswith("http://127.0.0.1:")
                assert link.endswith("/status")
                with urllib.request.urlopen(link, timeout=30) as response:
                    page = response.read().decode()
                assert response.status == 200
                assert "needs bokeh" not in page
                assert "Dask" in page
        outputs[n] = read_levels(out)
    reference = tmp_path / "threads.ome.tif"
    refocus(src, reference, model=model, tile=72, batch=2, workers=2)
    for a, b, c in zip(outputs[1], outputs[2], read_levels(reference), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_gpu_resources_send_inference_to_gpu_workers_only(tmp_path, rgb_model) -> None:
    """Workers with and without a (declared) GPU: every inference task runs on the GPU one."""
    from distributed import Client, Scheduler, SpecCluster, Worker, get_task_stream

    spec = SessionSpec(str(rgb_model), "cpu", 1)
    image = (np.random.default_rng(3).random((200, 260, 3)) * 255).astype(np.uint8)
    stats = compute_stats("zscore", image.reshape(-1, 3), dtype=np.uint8)
    plan = plan_for(image, spec, tile=48, halo=4, overlap=4, stats=stats, dtype=np.uint8, batch=2)
    workers = {"gpu": {"cls": Worker, "options": {"nthreads": 2, "resources": {"GPU": 1}}},
               "cpu": {"cls": Worker, "options": {"nthreads": 2}}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False}}
    with SpecCluster(scheduler=scheduler, workers=workers) as cluster, Client(cluster) as client:
        assert gpu_resources(client)
        assert describe(client)["resources"] == {"GPU": 1}
        gpu = next(a for a, w in client.scheduler_info()["workers"].items() if w["resources"])
        target = zarr.create_array(str(tmp_path / "t.zarr"), shape=image.shape, chunks=plan.chunks, dtype="uint8")
        with get_task_stream(client) as stream:
            store_to_zarr(plan, target, scheduler=client, infer_resources={"GPU": 1})
    ran = [(t["key"], t["worker"]) for t in stream.data]
    infer = [w for k, w in ran if "deepr-infer" in str(k)]
    assert len(infer) == plan.block_grid[0] * plan.block_grid[1]
    assert set(infer) == {gpu}
    np.testing.assert_array_equal(target[:], refocus_dask(plan).compute(scheduler="threads"))


def test_cluster_size_splits_cores_into_workers_and_threads() -> None:
    assert cluster_size(cpu=2) == (2, 1)
    assert cluster_size(cpu=16) == (4, 4)
    assert cluster_size(3, None, cpu=16) == (3, 5)
    assert cluster_size(None, 4, cpu=16) == (4, 4)
    assert cluster_size(cpu=16, gpu=True) == (1, 4)


def test_local_cluster_is_one_in_process_worker_unless_asked_or_large() -> None:
    from wsi_deepr.parallel.cluster import local_cluster_layout

    assert local_cluster_layout(cpu=2) == (1, 2, False)  # a small machine: one in-process worker
    assert local_cluster_layout(cpu=4) == (1, 4, False)
    assert local_cluster_layout(cpu=16) == (4, 4, True)
    assert local_cluster_layout(2, 1, cpu=2) == (2, 1, True)  # asked for: worker processes
    assert local_cluster_layout(None, 1, cpu=2) == (2, 1, True)
    assert local_cluster_layout(cpu=2, gpu=True) == (1, 2, True)


def _load_pipelines_module(name: str):
    spec = importlib.util.spec_from_file_location(f"wsi_deepr_pipelines_{name}", PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("system", ["slurm", "pbs"])
def test_jobqueue_gpu_job_script_requests_a_gpu_and_starts_the_worker(system, tmp_path) -> None:
    pytest.importorskip("dask_jobqueue")
    clusters = _load_pipelines_module("clusters")
    local = {"scheduler_options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    cluster = clusters.make_cluster(system, gpu=True, queue="gpu", account="lab",
                                    prologue=["source /opt/venv/bin/activate"], log_directory=str(tmp_path), **local)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "--resources GPU=1" in script
    assert "--nthreads 8" in script
    assert "source /opt/venv/bin/activate" in script
    assert "MALLOC_ARENA_MAX=2" in script
    assert ("#SBATCH --gres=gpu:1" in script) if system == "slurm" else ("ngpus=1" in script)
    assert "wsi-deepr-worker" in script


def test_pipeline_scripts_parse() -> None:
    for name in ("nightly.sh", "nightly.sbatch", "nightly.pbs"):
        proc = subprocess.run(["bash", "-n", str(PIPELINES / name)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (name, proc.stderr)
    proc = subprocess.run([sys.executable, str(PIPELINES / "run_batch.py"), "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0
    assert "--system" in proc.stdout
