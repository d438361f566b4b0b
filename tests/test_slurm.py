"""Where users run it: a real one-node SLURM (tests/slurm_fixture.py) and workers that die.

* ``pipelines/run_batch.py`` on SLURM worker jobs gives the same pixels as a
  local ``--scheduler threads`` run; the worker jobs are sized as asked
  (threads x workers = cores, memory split), log into the log folder, the
  scheduler and its dashboard listen on loopback, on a free port;
* a job no node can run fails at once, naming the sizes;
* a GPU worker job (``--gres=gpu:1``) is scheduled on the fake GPU and its
  worker declares ``GPU=1``;
* ``pipelines/nightly.sbatch`` pre-empted by ``scancel`` in the middle of a
  slide cancels its worker jobs; resubmitted with ``sbatch --wait`` it resumes
  and writes its report;
* a worker killed with ``kill -9`` (LocalCluster of processes; SLURM: one
  worker process killed, another worker job cancelled) in the middle of a
  slide: the slide finishes, pixel-identical.

The sizing rules themselves are checked without SLURM.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tifffile

from wsi_deepr.cli import main
from wsi_deepr.runsafe.resume import scratch_path
from wsi_deepr.testing import conv_model, default_card, save_model

from .conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
CMU = "CMU-1-Small-Region.svs"
BOXES = "boxes.tiff"
CLI = "import sys; from wsi_deepr.cli import main; sys.exit(main(sys.argv[1:]))"


def _clusters():
    pytest.importorskip("dask_jobqueue")
    spec = importlib.util.spec_from_file_location("wsi_deepr_pipelines_clusters_slurm", PIPELINES / "clusters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


def assert_identical(a: Path, b: Path) -> None:
    """Every pyramid level of ``a`` equals that of ``b``."""
    la, lb = levels(a), levels(b)
    assert [x.shape for x in la] == [x.shape for x in lb]
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)


def markers(output: Path) -> int:
    """Blocks of ``output`` finished in its scratch store."""
    folder = scratch_path(output) / ".blocks"
    return len(os.listdir(folder)) if folder.is_dir() else 0


def wait_until(predicate, *, timeout: float, what: str, poll: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def env() -> dict[str, str]:
    """Environment of drivers and worker jobs: this checkout's wsi_deepr, on this python."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "WSI_DEEPR_PROLOGUE": f"export PYTHONPATH={path}"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """``fast``: 2 narrow convolutions; ``slow``: 4 wider ones (a few seconds per slide, to kill in)."""
    d = tmp_path_factory.mktemp("models")
    card = default_card(halo=4)
    return {"fast": save_model(conv_model(channels=3, depth=2, card=card), d / "fast.onnx"),
            "slow": save_model(conv_model(channels=3, depth=4, hidden=32, card=card), d / "slow.onnx")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models):
    """``reference(slide, model, tile)``: the output of a local ``--scheduler threads`` run (cached)."""
    cache: dict[tuple, Path] = {}
    base = tmp_path_factory.mktemp("reference")

    def get(slide: str, model: str, tile: str = "512") -> Path:
        key = (slide, model, tile)
        if key not in cache:
            out = base / f"{model}-{tile}"
            code = main(["batch", str(shared_path("slides", slide)), "--output-dir", str(out), "--model",
                         str(models[model]), "--tile", tile, "--scheduler", "threads", "-q"])
            assert code == 0
            cache[key] = out / f"{Path(slide).stem}.refocused.ome.tif"
        return cache[key]

    return get


def driver(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``pipelines/run_batch.py ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, str(PIPELINES / "run_batch.py"), *args], capture_output=True, text=True,
                          env=env(), timeout=timeout, check=False)


LOOPBACK = ["--interface", "lo", "--dashboard-address", "127.0.0.1:0"]


# --- job sizing, without SLURM ------------------------------------------------------------

@pytest.mark.parametrize(("cores", "processes", "threads"), [(1, 1, 1), (2, 1, 2), (3, 1, 3), (8, 2, 4), (12, 3, 4),
                                                              (16, 4, 4)])
def test_overriding_cores_derives_processes_and_splits_memory(tmp_path, cores, processes, threads) -> None:
    """threads x workers = the cores asked for; each worker gets memory / workers; never ``--nthreads 0``."""
    clusters = _clusters()
    cluster = clusters.slurm_cluster(cores=cores, memory=f"{2 * cores}GB", log_directory=str(tmp_path / "logs"),
                                     interface="lo", dashboard_address="127.0.0.1:0")
    try:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    finally:
        cluster.close()
    assert f"--cpus-per-task={cores}" in script
    assert f"--nthreads {threads} " in script and "--nthreads 0" not in script
    assert (f"--nworkers {processes} " in script) == (processes > 1)
    limit = float(re.search(r"--memory-limit ([\d.]+)GiB", script).group(1))
    assert limit == pytest.approx(2 * cores * 1e9 / processes / 2 ** 30, abs=0.01)
    assert f"{tmp_path / 'logs'}/wsi-deepr-worker-%J.err" in script
    assert "--interface lo" in script and "--local-directory ${TMPDIR:-/tmp}" in script


def test_job_size_rules() -> None:
    clusters = _clusters()
    assert clusters.job_size() == {"cores": 16, "memory": "64GB", "processes": 4}
    assert clusters.job_size(cores=2) == {"cores": 2, "memory": "8GB", "processes": 1}  # memory per core kept
    assert clusters.job_size(gpu=True, cores=2) == {"cores": 2, "memory": "12GB", "processes": 1}
    assert clusters.job_size(cores=2, processes=2)["processes"] == 2
    with pytest.raises(ValueError, match=r"processes=4 > cores=2.*--processes 2 or fewer"):
        clusters.job_size(cores=2, processes=4)
    with pytest.raises(ValueError, match=r"cores=6 is not a multiple of processes=4.*--processes 1, 2, 3, 6"):
        clusters.job_size(cores=6, processes=4)
    with pytest.raises(ValueError, match="one worker process"):
        clusters.job_size(gpu=True, processes=2)
    with pytest.raises(ValueError, match="cores must be at least 1, got 0"):
        clusters.job_size(cores=0)


def test_job_that_fits_no_node_is_named() -> None:
    clusters = _clusters()
    small = [clusters.NodeInfo("n1", "debug", 2, 24105, 0, "infinite"),
             clusters.NodeInfo("n2", "debug", 8, 64000, 1, "1-00:00:00")]
    clusters.check_job_fits(cores=8, memory="48GB", gpus=1, nodes=small)  # n2
    with pytest.raises(clusters.JobTooLargeError,
                       match=r"16 cores, 64GB \(--mem=61440M\) fits no node .* n2 with 8 cores, 64000 MB"):
        clusters.check_job_fits(cores=16, memory="64GB", nodes=small)
    with pytest.raises(clusters.JobTooLargeError, match=r"2 GPU fits no node.*or no --gpu"):
        clusters.check_job_fits(cores=2, memory="4GB", gpus=2, nodes=small)
    with pytest.raises(clusters.JobTooLargeError, match=r"walltime 2-00:00:00 exceeds .*1-00:00:00"):
        clusters.check_job_fits(cores=8, memory="4GB", walltime="2-00:00:00", nodes=small)


#: ``pbsnodes -a -F json`` as OpenPBS 2022 prints it (abridged to the attributes read; node names made up)
PBSNODES_JSON = """{
 "timestamp":1699630815, "pbs_version":"2022.1.1.20220926110806", "pbs_server":"pbs-01",
 "nodes":{
  "gpu01":{"Mom":"gpu01.cluster", "ntype":"PBS", "state":"free", "pcpus":64,
           "resources_available":{"arch":"linux", "host":"gpu01", "mem":"527672488kb", "ncpus":64, "ngpus":4,
                                  "vnode":"gpu01"},
           "resources_assigned":{}, "resv_enable":"True", "sharing":"default_shared"},
  "cpu01":{"Mom":"cpu01.cluster", "ntype":"PBS", "state":"job-busy", "pcpus":16,
           "resources_available":{"arch":"linux", "host":"cpu01", "mem":"32gb", "ncpus":16, "vnode":"cpu01"},
           "resources_assigned":{"ncpus":16}, "resv_enable":"True", "sharing":"default_shared"}
 }
}"""


def test_pbs_nodes_are_read_and_a_job_that_fits_none_is_named(caplog) -> None:
    clusters = _clusters()
    nodes = clusters.parse_pbsnodes(PBSNODES_JSON, queue="workq", time_limit="24:00:00")
    assert nodes == [clusters.NodeInfo("gpu01", "workq", 64, 515305, 4, "24:00:00"),
                     clusters.NodeInfo("cpu01", "workq", 16, 32768, 0, "24:00:00")]
    assert clusters._pbs_mebibytes("48GB") == 49152 and clusters._pbs_mebibytes("512mb") == 512
    clusters.check_job_fits(cores=16, memory="32GB", nodes=nodes, system="pbs")  # cpu01 exactly
    with pytest.raises(clusters.JobTooLargeError,
                       match=r"16 cores, 48GB \(mem=48gb, 49152 MiB\) fits no node of the cluster: the largest is "
                             r"cpu01 with 16 cores, 32768 MB; pass e.g. --cores 16 --memory 28GB"):
        clusters.check_job_fits(cores=16, memory="48GB", nodes=nodes[1:], system="pbs")
    with pytest.raises(clusters.JobTooLargeError, match=r"walltime 48:00:00 exceeds .*24:00:00"):
        clusters.check_job_fits(cores=8, memory="4GB", walltime="48:00:00", nodes=nodes, system="pbs")
    with pytest.raises(RuntimeError, match="printed no JSON"):
        clusters.parse_pbsnodes("Mom = node01\n     state = free")
    with pytest.raises(ValueError, match="system must be"):
        clusters.check_job_fits(cores=1, memory="1GB", nodes=nodes, system="lsf")


def test_size_check_without_pbsnodes_is_logged_not_fatal(monkeypatch, caplog) -> None:
    clusters = _clusters()
    monkeypatch.setenv("PATH", "/nonexistent")
    with caplog.at_level("WARNING"):
        clusters.check_job_fits(cores=512, memory="4TB", system="pbs")
    assert "pbsnodes not found on PATH" in caplog.text


def test_taken_dashboard_port_falls_back_to_a_free_one(tmp_path) -> None:
    clusters = _clusters()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = clusters.slurm_cluster(cores=1, dashboard_address=f"127.0.0.1:{port}", interface="lo",
                                         log_directory=str(tmp_path))
        try:
            link = cluster.dashboard_link
        finally:
            cluster.close()
    assert link.startswith("http://127.0.0.1:") and f":{port}/" not in link


# --- a worker killed on a LocalCluster of processes -----------------------------------------

@pytest.mark.slow
def test_local_cluster_worker_killed_mid_slide_finishes_identical(tmp_path, models, reference) -> None:
    """``wsi-deepr batch --workers 2``: kill -9 one worker process after 3 blocks; the nanny restarts it."""
    out = tmp_path / "out"
    target = out / "CMU-1-Small-Region.refocused.ome.tif"
    args = ["batch", str(shared_path("slides", CMU)), "--output-dir", str(out), "--model", str(models["slow"]),
            "--tile", "256", "--workers", "2", "--threads-per-worker", "1", "--dashboard-address", "127.0.0.1:0",
            "--report", str(out / "report")]
    with subprocess.Popen([sys.executable, "-c", CLI, *args], env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        wait_until(lambda: markers(target) >= 3 or proc.poll() is not None, timeout=120, what="3 blocks")
        workers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2 and proc.poll() is None
        done_at_kill = markers(target)
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    with open(out / "report.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    blocks = json.loads((out / "CMU-1-Small-Region.refocused.ome.tif.json").read_text())["blocks"]
    assert row["status"] == "done" and done_at_kill < blocks
    assert_identical(target, reference(CMU, "slow", "256"))


# --- SLURM ------------------------------------------------------------------------------------

def _job_ids(logs: Path) -> list[str]:
    return sorted({m.group(1) for p in logs.glob("wsi-deepr-worker-*.err")
                   if (m := re.fullmatch(r"wsi-deepr-worker-(\d+)\.err", p.name))})


@pytest.mark.slurm
def test_job_too_big_for_any_node_fails_at_once(slurm_cluster, tmp_path) -> None:
    cores = slurm_cluster.cpus + 1
    t0 = time.monotonic()
    proc = driver("--jobs", "1", "--cores", str(cores), "--memory", "1GB", *LOOPBACK, "--",
                  "x.svs", "--output-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert f"a worker job of {cores} cores, 1GB" in proc.stderr
    assert f"the largest is {slurm_cluster.node} with {slurm_cluster.cpus} cores" in proc.stderr
    proc = driver("--queue", "nosuch", "--cores", "1", "--", "x.svs", "--output-dir", str(tmp_path))
    assert proc.returncode == 2 and "partition nosuch has no nodes (sinfo); check --queue" in proc.stderr
    # unchecked, SLURM takes the job and leaves it pending for ever: the wait notices at once and cancels it
    proc = driver("--jobs", "1", "--cores", str(cores), "--memory", "1GB", "--no-size-check", *LOOPBACK,
                  "--log-dir", str(tmp_path / "logs"), "--", "x.svs", "--output-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "will never start" in proc.stderr and "PartitionConfig" in proc.stderr
    assert time.monotonic() - t0 < 60
    assert not slurm_cluster.jobs("wsi-deepr-worker")


@pytest.mark.slurm
def test_run_batch_on_slurm_workers_identical_to_local(slurm_cluster, tmp_path, models, reference) -> None:
    """Two shared slides through SLURM worker jobs: same pixels at every level as a local run; the job
    is sized as asked, logs into --log-dir, and everything listens on loopback."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    proc = driver("--jobs", "1", "--cores", "2", "--processes", "2", "--memory", "4GB", *LOOPBACK,
                  "--log-dir", str(logs), "--",
                  str(shared_path("slides", BOXES)), str(shared_path("slides", CMU)), "--output-dir", str(out),
                  "--model", str(models["fast"]), "--report", str(out / "report"))
    assert proc.returncode == 0, proc.stderr
    (job,) = _job_ids(logs)
    shown = slurm_cluster.run("scontrol", "show", "job", job).stdout  # before MinJobAge forgets it
    assert "NumCPUs=2" in shown and "mem=4G" in shown and "JobName=wsi-deepr-worker" in shown
    link = re.search(r"Dask dashboard: (http://\S+)", proc.stderr).group(1)
    assert link.startswith("http://127.0.0.1:") and ":8787/" not in link
    for slide in (BOXES, CMU):
        target = out / f"{Path(slide).stem}.refocused.ome.tif"
        assert_identical(target, reference(slide, "fast"))
        scheduler = json.loads(target.with_name(target.name + ".json").read_text())["scheduler"]
        assert scheduler["scheduler"].startswith("tcp://127.0.0.1:")
        assert (scheduler["workers"], scheduler["threads"]) == (2, 2)  # 2 processes x 1 thread = 2 cores
    worker_log = (logs / f"wsi-deepr-worker-{job}.err").read_text()
    assert re.findall(r"Threads:\s+(\d+)", worker_log) == ["1", "1"]
    assert re.findall(r"Memory:\s+([\d.]+ GiB)", worker_log) == ["1.86 GiB"] * 2  # 4 GB / 2 workers
    assert "tcp://127.0.0.1:" in worker_log and not slurm_cluster.jobs("wsi-deepr-worker")


@pytest.mark.slurm
def test_gpu_job_scheduled_on_the_fake_gres(slurm_cluster, tmp_path, models, reference) -> None:
    """``--gpu``: the job holds the (fake) GPU, its worker declares GPU=1; inference itself on CPU."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    environ = env()
    environ["WSI_DEEPR_PROLOGUE"] += "; echo CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}"
    proc = subprocess.run([sys.executable, str(PIPELINES / "run_batch.py"), "--gpu", "--jobs", "1", "--cores", "1",
                           "--memory", "2GB", *LOOPBACK, "--log-dir", str(logs), "--",
                           str(shared_path("slides", BOXES)), "--output-dir", str(out), "--model",
                           str(models["fast"]), "--device", "auto"],
                          capture_output=True, text=True, env=environ, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    (job,) = _job_ids(logs)
    shown = slurm_cluster.run("scontrol", "show", "job", "--details", job).stdout  # before MinJobAge forgets it
    assert re.search(r"GRES=gpu(:\w+)?:1", shown), shown
    target = out / "boxes.refocused.ome.tif"
    record = json.loads(target.with_name(target.name + ".json").read_text())
    assert record["scheduler"]["resources"] == {"GPU": 1}
    assert record["provider"] == "CPUExecutionProvider"
    assert "CUDA_VISIBLE_DEVICES=0" in (logs / f"wsi-deepr-worker-{job}.out").read_text()
    assert_identical(target, reference(BOXES, "fast"))


def _slurm_workers(job: str) -> list[psutil.Process]:
    """The Dask worker processes (children of the nanny) of SLURM job ``job``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "spawn_main" in " ".join(p.info["cmdline"] or []) and f"SLURM_JOB_ID={job}" in \
                    "\0".join(f"{k}={v}" for k, v in p.environ().items()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slurm
def test_slurm_worker_killed_and_worker_job_cancelled_mid_slide(slurm_cluster, tmp_path, models, reference) -> None:
    """Two worker jobs: kill -9 the worker process of one after 2 blocks (its nanny restarts it), scancel
    the other job after 8; the slide finishes on what is left, pixel-identical."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    target = out / "CMU-1-Small-Region.refocused.ome.tif"
    cmd = [sys.executable, str(PIPELINES / "run_batch.py"), "--jobs", "2", "--cores", "1", "--memory", "2GB",
           *LOOPBACK, "--log-dir", str(logs), "--", str(shared_path("slides", CMU)), "--output-dir", str(out),
           "--model", str(models["slow"]), "--tile", "256", "--report", str(out / "report")]
    with subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        wait_until(lambda: len(_job_ids(logs)) == 2 and all(_slurm_workers(j) for j in _job_ids(logs))
                   or proc.poll() is not None, timeout=180, what="a worker process in both jobs", poll=0.2)
        wait_until(lambda: markers(target) >= 2 or proc.poll() is not None, timeout=180, what="2 blocks")
        jobs = _job_ids(logs)
        assert len(jobs) == 2 and proc.poll() is None
        (victim,) = _slurm_workers(jobs[0])
        victim.kill()
        killed_at = markers(target)
        wait_until(lambda: markers(target) >= 8 or proc.poll() is not None, timeout=180, what="8 blocks")
        cancelled_at = markers(target)
        slurm_cluster.run("scancel", jobs[1])
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    blocks = json.loads(target.with_name(target.name + ".json").read_text())["blocks"]
    assert killed_at < cancelled_at < blocks
    worker_log = (logs / f"wsi-deepr-worker-{jobs[0]}.err").read_text()
    assert "restart" in worker_log.lower()  # the nanny restarted the killed worker
    assert_identical(target, reference(CMU, "slow", "256"))
    assert not slurm_cluster.jobs("wsi-deepr-worker")


@pytest.mark.slurm
def test_nightly_sbatch_preempted_by_scancel_resumes_on_resubmission(slurm_cluster, tmp_path, models,
                                                                       reference) -> None:
    """``nightly.sbatch`` (1-core driver + two worker jobs of all the other cores, so one of them waits in
    the queue): scancel in the middle of the first slide cancels the worker jobs too, the pending one
    included; ``sbatch --wait`` again resumes the slide and writes the report."""
    if slurm_cluster.cpus < 2:
        pytest.skip("the driver and a worker job need 2 cores")
    incoming, out = tmp_path / "incoming", tmp_path / "out"
    incoming.mkdir()
    for slide in (CMU, BOXES):
        (incoming / slide).symlink_to(shared_path("slides", slide))
    environ = {**env(), "WSI_DEEPR_INCOMING": str(incoming), "WSI_DEEPR_OUTPUT": str(out),
               "WSI_DEEPR_VENV": sys.prefix, "WSI_DEEPR_PIPELINES": str(PIPELINES), "WSI_DEEPR_GPU": "0",
               "WSI_DEEPR_JOBS": "2", "WSI_DEEPR_WORKER_CORES": str(slurm_cluster.cpus - 1),
               "WSI_DEEPR_WORKER_MEMORY": "2GB",
               "WSI_DEEPR_DRIVER_ARGS": " ".join(LOOPBACK),
               "WSI_DEEPR_BATCH_ARGS": f"--model {models['slow']} --tile 256"}
    sbatch = ["sbatch", "--parsable", "--cpus-per-task=1", "--mem=2G", f"--chdir={tmp_path}",
              f"--output={tmp_path}/driver-%j.log", str(PIPELINES / "nightly.sbatch")]
    first = subprocess.run(sbatch, capture_output=True, text=True, env=environ, timeout=60, check=True)
    job = first.stdout.strip().split(";")[0]
    target = out / "CMU-1-Small-Region.refocused.ome.tif"
    wait_until(lambda: markers(target) >= 3 or job not in slurm_cluster.jobs(), timeout=180, what="3 blocks",
               poll=0.1)
    assert job in slurm_cluster.jobs(), (tmp_path / f"driver-{job}.log").read_text()
    assert sorted(slurm_cluster.jobs("wsi-deepr-worker").values()) == ["PENDING", "RUNNING"]
    slurm_cluster.run("scancel", job)
    wait_until(lambda: not slurm_cluster.jobs(), timeout=20, what="the driver and its worker job to end", poll=0.5)
    assert not target.exists() and markers(target) >= 3
    t0 = time.monotonic()
    second = subprocess.run([*sbatch[:1], "--wait", *sbatch[1:]], capture_output=True, text=True, env=environ,
                            timeout=400, check=False)
    job2 = second.stdout.strip().split(";")[0]
    log = (tmp_path / f"driver-{job2}.log").read_text()
    assert second.returncode == 0, log
    (report,) = sorted((out / "logs").glob("report-*.csv"))[-1:]
    with open(report, newline="") as fh:
        rows = {Path(r["input"]).name: r for r in csv.DictReader(fh)}
    assert {k: v["status"] for k, v in rows.items()} == {CMU: "done", BOXES: "done"}
    assert int(rows[CMU]["resumed_blocks"]) >= 3
    for slide in (CMU, BOXES):
        assert_identical(out / f"{Path(slide).stem}.refocused.ome.tif", reference(slide, "slow", "256"))
    print(f"resubmitted nightly.sbatch: {time.monotonic() - t0:.1f} s, {rows[CMU]['resumed_blocks']} blocks resumed")
