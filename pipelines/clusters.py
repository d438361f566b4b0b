#!/usr/bin/env python3
"""dask-jobqueue cluster definitions for wsi-deepr: SLURM and PBS, GPU or CPU workers.

Each batch *job* of the queue runs Dask worker(s) that join the scheduler of
the driver (``run_batch.py``).  GPU jobs: one GPU each (``--gres=gpu:1`` /
``ngpus=1``), one worker process per GPU, declared to Dask as
``--resources GPU=1`` so that wsi-deepr sends each inference task to a worker
with a GPU, while the light merge/store tasks go anywhere.  Every worker
process holds one ONNX Runtime session, created when it joins
(``wsi_deepr.parallel.cluster.SessionPlugin``); the model file must be on a shared
file system, like the slides and the output folder.

Site settings (queue, account, how to activate the environment) come from
arguments or the environment variables ``WSI_DEEPR_QUEUE``,
``WSI_DEEPR_ACCOUNT`` and ``WSI_DEEPR_PROLOGUE`` (shell lines separated by
``;``, e.g. ``module load cuda/12.4; source ~/venvs/wsi-deepr/bin/activate``).

Job size (:func:`job_size`): ``cores`` threads split over ``processes``
worker processes (a divisor of ``cores``; 1 for GPU jobs, else ``cores // 4``
by default), each with ``memory / processes``.  :func:`check_job_fits`
compares a job with the nodes ``sinfo`` (SLURM) or ``pbsnodes -a -F json``
(OpenPBS / PBS Pro, with the queue's ``resources_max.walltime`` from ``qstat
-Qf``) reports, since both leave a job that no node can run queued for ever.  Worker logs go to ``log_directory``
(``$WSI_DEEPR_LOG_DIR``, ``./wsi-deepr-logs``); the dashboard to
``dashboard_address`` (a free port when ``:8787`` is taken); ``interface``
picks the network of the scheduler and workers (``lo`` on one machine).

Show the worker job script that would be submitted::

    python pipelines/clusters.py slurm --gpu
    python pipelines/clusters.py pbs --cores 16

Needs ``pip install "wsi-deepr[cluster]"`` (dask-jobqueue).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import subprocess
from typing import NamedTuple

from wsi_deepr.parallel.cluster import free_address

__all__ = [
    "JobTooLargeError", "NodeInfo", "check_job_fits", "job_size", "make_cluster", "parse_pbsnodes", "pbs_cluster",
    "pbs_nodes",
    "slurm_cluster", "slurm_nodes",
]

log = logging.getLogger(__name__)

#: worker job size: (cores, memory, processes) for GPU and CPU jobs
GPU_JOB = {"cores": 8, "memory": "48GB", "processes": 1}
CPU_JOB = {"cores": 16, "memory": "64GB", "processes": 4}
#: threads per worker process of a CPU job when only ``cores`` is given (as in ``CPU_JOB``)
CPU_THREADS_PER_WORKER = 4
#: where worker job logs go by default (relative to the driver's folder)
LOG_DIRECTORY = "wsi-deepr-logs"


class JobTooLargeError(ValueError):
    """A worker job asks for more than any node of the queue has: it would wait forever."""


def job_size(*, gpu: bool = False, cores: int | None = None, memory: str | None = None,
             processes: int | None = None) -> dict:
    """Cores, memory and worker processes of one worker job, checked.

    Parameters
    ----------
    gpu : bool
        A GPU job (:data:`GPU_JOB`): one worker process, it holds the GPU.
    cores : int, optional
        Cores of the job [default: that of :data:`GPU_JOB` / :data:`CPU_JOB`].
    memory : str, optional
        Memory of the job (``"48GB"``) [default: the default job's memory
        per core times ``cores``]; each worker process gets
        ``memory / processes`` as its Dask memory limit.
    processes : int, optional
        Worker processes of the job.  Default: 1 for a GPU job; for a CPU job
        that of :data:`CPU_JOB` when ``cores`` is not given, else
        ``cores // 4`` (at least 1) lowered until it divides ``cores``.

    Returns
    -------
    dict
        ``{"cores", "memory", "processes"}`` with ``cores % processes == 0``:
        every worker gets ``cores // processes`` threads and threads x workers
        equals the cores the job asks for.

    Raises
    ------
    ValueError
        ``cores`` or ``processes`` below 1, more processes than cores, cores
        not a multiple of processes, or a GPU job with several processes.
    """
    from dask.utils import parse_bytes

    job = dict(GPU_JOB if gpu else CPU_JOB)
    if cores is not None:
        if int(cores) < 1:
            raise ValueError(f"cores must be at least 1, got {cores}")
        if not memory:  # the default job's memory per core
            per_core = parse_bytes(job["memory"]) / job["cores"]
            memory = f"{math.ceil(per_core * int(cores) / 1e9)}GB"
        job["cores"] = int(cores)
        if processes is None and not gpu:  # the default job's ratio, never more processes than cores
            n = max(1, job["cores"] // CPU_THREADS_PER_WORKER)
            while job["cores"] % n:
                n -= 1
            job["processes"] = n
    if memory:
        job["memory"] = str(memory)
    if processes is not None:
        job["processes"] = int(processes)
    cores, processes = job["cores"], job["processes"]
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if gpu and processes != 1:
        raise ValueError(f"a GPU job runs one worker process (it holds the job's one GPU), got processes={processes}; "
                         f"drop --processes or use CPU jobs")
    if processes > cores:
        raise ValueError(f"processes={processes} > cores={cores}: every worker process needs a thread; "
                         f"pass --processes {cores} or fewer, or more --cores")
    if cores % processes:
        divisors = [str(d) for d in range(1, cores + 1) if cores % d == 0]
        raise ValueError(f"cores={cores} is not a multiple of processes={processes}: the workers would use "
                         f"{processes} x {cores // processes} = {processes * (cores // processes)} of the {cores} "
                         f"cores; pass --processes {', '.join(divisors)}")
    return job


def _slurm_mebibytes(memory: str) -> int:
    """MiB that dask-jobqueue's ``#SBATCH --mem=`` asks for ``memory`` (rounded up as it does)."""
    from dask.utils import parse_bytes

    n = parse_bytes(memory)
    for unit, mib in ((1024 ** 3, 1024), (1024 ** 2, 1)):
        if n >= unit:
            return math.ceil(n / unit) * mib
    return 1


def _pbs_mebibytes(memory: str, *, round_up: bool = True) -> int:
    """MiB of a PBS size: what dask-jobqueue's ``select=...:mem=`` asks for ``memory`` (its lower-cased
    string; PBS units are binary), rounded up, or a node's memory (``round_up=False``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(b|w)?\s*", memory.lower())
    if not m:
        raise ValueError(f"memory={memory!r}: give a size such as 48GB")
    number, prefix, unit = float(m.group(1)), m.group(2), m.group(3) or "b"
    n = number * 1024 ** "_kmgtp".index(prefix or "_") * (8 if unit == "w" else 1)
    return max(1, math.ceil(n / 1024**2)) if round_up else int(n // 1024**2)


def _minutes(limit: str) -> float:
    """SLURM time ``[D-]HH:MM:SS`` / ``MM:SS`` / ``infinite`` in minutes."""
    limit = limit.strip()
    if not limit or limit.lower() in ("infinite", "unlimited", "n/a"):
        return math.inf
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, sec = parts[-3:]
    return (int(days or 0) * 24 + h) * 60 + m + sec / 60


class NodeInfo(NamedTuple):
    """One node of a partition or queue, as ``sinfo`` or ``pbsnodes`` reports it."""

    name: str
    partition: str
    cpus: int
    memory_mb: int
    gpus: int
    time_limit: str


def slurm_nodes(partition: str | None = None) -> list[NodeInfo]:
    """The nodes of ``partition`` (default: of every partition) from ``sinfo``.

    Raises
    ------
    FileNotFoundError
        ``sinfo`` is not on the ``PATH``.
    RuntimeError
        ``sinfo`` failed (its message is included).
    """
    if shutil.which("sinfo") is None:
        raise FileNotFoundError("sinfo not found on PATH")
    cmd = ["sinfo", "--noheader", "--Node", "--format", "%N|%P|%c|%m|%G|%l"]
    if partition:
        cmd += ["--partition", partition]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    nodes = []
    for line in proc.stdout.splitlines():
        name, part, cpus, mem, gres, limit = line.strip().split("|")
        gpus = sum(int(m.group(1)) for m in re.finditer(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))
        nodes.append(NodeInfo(name, part.rstrip("*"), int(cpus), int(mem.rstrip("+")), gpus, limit))
    return nodes


def parse_pbsnodes(text: str, *, queue: str = "", time_limit: str = "infinite") -> list[NodeInfo]:
    """The nodes of ``pbsnodes -a -F json`` output (OpenPBS / PBS Pro).

    Cores from ``resources_available.ncpus`` (else ``pcpus``), memory from
    ``resources_available.mem`` (PBS sizes such as ``527672488kb``), GPUs from
    ``resources_available.ngpus``; every node gets ``queue`` and ``time_limit``.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"pbsnodes -a -F json printed no JSON ({exc}); is this OpenPBS / PBS Pro?") from exc
    nodes = []
    for name, node in (data.get("nodes") or {}).items():
        res = node.get("resources_available") or {}
        cpus = int(res.get("ncpus", node.get("pcpus", 0)) or 0)
        mem = str(res.get("mem", "0kb"))
        nodes.append(NodeInfo(name, queue, cpus, _pbs_mebibytes(mem, round_up=False),
                              int(res.get("ngpus", 0) or 0), time_limit))
    return nodes


def pbs_nodes(queue: str | None = None) -> list[NodeInfo]:
    """The nodes from ``pbsnodes -a -F json``, with the walltime limit of ``queue`` (``qstat -Qf -F json``).

    Raises
    ------
    FileNotFoundError
        ``pbsnodes`` is not on the ``PATH``.
    RuntimeError
        ``pbsnodes`` failed or printed no JSON (its message is included).
    """
    if shutil.which("pbsnodes") is None:
        raise FileNotFoundError("pbsnodes not found on PATH")
    cmd = ["pbsnodes", "-a", "-F", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    limit = "infinite"
    if queue and shutil.which("qstat"):
        q = subprocess.run(["qstat", "-Q", "-f", "-F", "json", queue], capture_output=True, text=True, timeout=30,
                           check=False)
        if not q.returncode:
            try:
                limit = json.loads(q.stdout)["Queue"][queue]["resources_max"]["walltime"]
            except (json.JSONDecodeError, KeyError, TypeError):
                pass
    return parse_pbsnodes(proc.stdout, queue=queue or "", time_limit=limit)


def check_job_fits(*, cores: int, memory: str, gpus: int = 0, walltime: str | None = None,
                   queue: str | None = None, nodes: list[NodeInfo] | None = None, system: str = "slurm") -> None:
    """Raise :class:`JobTooLargeError` when no node of ``queue`` can ever run the worker job.

    SLURM accepts such a job and leaves it pending for ever (reason
    ``PartitionConfig``, or "Invalid generic resource" for GPUs on a
    cluster without GRES), and PBS queues it for ever: check before
    submitting.  ``nodes`` default to :func:`slurm_nodes` or
    :func:`pbs_nodes` (``system``); without ``sinfo`` / ``pbsnodes``
    nothing is checked (logged).
    """
    if system not in ("slurm", "pbs"):
        raise ValueError(f"system must be 'slurm' or 'pbs', got {system!r}")
    tool = "sinfo" if system == "slurm" else "pbsnodes"
    if nodes is None:
        try:
            nodes = slurm_nodes(queue) if system == "slurm" else pbs_nodes(queue)
        except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as exc:
            log.warning("job size not checked against the nodes: %s", exc)
            return
    where = (f"partition {queue}" if system == "slurm" else f"queue {queue}") if queue else "the cluster"
    if system == "slurm":
        mib = _slurm_mebibytes(memory)
        asked = f"{cores} cores, {memory} (--mem={mib}M)" + (f", {gpus} GPU" if gpus else "")
    else:
        mib = _pbs_mebibytes(memory)
        asked = f"{cores} cores, {memory} (mem={memory.lower()}, {mib} MiB)" + (f", {gpus} GPU" if gpus else "")
    if not nodes:
        raise JobTooLargeError(f"a worker job of {asked} cannot run: {where} has no nodes ({tool}); "
                               f"check --queue")
    fits = [n for n in nodes if n.cpus >= cores and n.memory_mb >= mib and n.gpus >= gpus]
    if walltime and fits and all(_minutes(walltime) > _minutes(n.time_limit) for n in fits):
        limits = ", ".join(sorted({n.time_limit for n in fits}))
        raise JobTooLargeError(f"a worker job of walltime {walltime} exceeds the time limit of {where} "
                               f"({limits}); pass a shorter --walltime")
    if not fits:
        biggest = max(nodes, key=lambda n: (n.gpus >= gpus, n.cpus, n.memory_mb))
        fix_mem = f"{max(1, biggest.memory_mb * 9 // 10 // 1024)}GB"
        raise JobTooLargeError(
            f"a worker job of {asked} fits no node of {where}: the largest is {biggest.name} with "
            f"{biggest.cpus} cores, {biggest.memory_mb} MB" + (f", {biggest.gpus} GPU" if gpus else "")
            + f"; pass e.g. --cores {min(cores, biggest.cpus)} --memory {fix_mem}"
            + (" (or no --gpu)" if gpus and biggest.gpus < gpus else ""))
    log.info("a worker job of %s fits %d node(s) of %s", asked, len(fits), where)


def _prologue(prologue: list[str] | None) -> list[str]:
    lines = list(prologue) if prologue is not None else [
        line.strip() for line in os.environ.get("WSI_DEEPR_PROLOGUE", "").split(";") if line.strip()]
    # glibc arenas: keep worker RSS flat, as the CLI does for its own process
    return [*lines, "export MALLOC_ARENA_MAX=2"]


def _common(*, gpu: bool, cores: int | None, memory: str | None, processes: int | None, walltime: str,
            prologue: list[str] | None, dashboard_address: str, interface: str | None,
            log_directory: str | None) -> dict:
    job = job_size(gpu=gpu, cores=cores, memory=memory, processes=processes)
    options = {
        **job,
        "walltime": walltime,
        "job_script_prologue": _prologue(prologue),
        "local_directory": "${TMPDIR:-/tmp}",  # worker spill space on the node's local disk
        "scheduler_options": {"dashboard_address": free_address(dashboard_address)},
        "worker_extra_args": ["--resources", "GPU=1"] if gpu else [],
        "job_name": "wsi-deepr-worker",
        "log_directory": log_directory or os.environ.get("WSI_DEEPR_LOG_DIR") or LOG_DIRECTORY,
    }
    if interface:  # scheduler and workers listen on it (``lo``: one machine, loopback only)
        options["interface"] = interface
    return options


def slurm_cluster(*, gpu: bool = False, queue: str | None = None, account: str | None = None,
                  cores: int | None = None, memory: str | None = None, processes: int | None = None,
                  walltime: str = "12:00:00", prologue: list[str] | None = None,
                  dashboard_address: str = ":8787", interface: str | None = None,
                  log_directory: str | None = None, **overrides):
    """A ``dask_jobqueue.SLURMCluster`` whose jobs are wsi-deepr workers (one GPU per job with ``gpu``).

    Parameters
    ----------
    gpu : bool
        One GPU per job (``--gres=gpu:1``), one worker process declared
        with ``--resources GPU=1``.
    queue, account : str, optional
        Partition and account [default: ``$WSI_DEEPR_QUEUE``, ``$WSI_DEEPR_ACCOUNT``].
    cores, memory, processes
        Size of one worker job, see :func:`job_size`.
    walltime : str
        Time limit of a worker job.
    prologue : list of str, optional
        Shell lines run before the worker starts [default: ``$WSI_DEEPR_PROLOGUE``
        split at ``;``].
    dashboard_address : str
        ``[HOST]:PORT`` of the scheduler's dashboard; a taken port falls
        back to a free one (``:0`` always takes a free one).
    interface : str, optional
        Network interface the scheduler and the workers listen on
        (``ib0``; ``lo`` keeps a one-machine cluster on loopback).
    log_directory : str, optional
        Folder of the worker jobs' stdout/stderr [default: ``$WSI_DEEPR_LOG_DIR``
        or ``wsi-deepr-logs``].
    **overrides
        Any other ``SLURMCluster`` argument.
    """
    from dask_jobqueue import SLURMCluster

    options = _common(gpu=gpu, cores=cores, memory=memory, processes=processes, walltime=walltime,
                      prologue=prologue, dashboard_address=dashboard_address, interface=interface,
                      log_directory=log_directory)
    options["job_extra_directives"] = ["--gres=gpu:1"] if gpu else []
    options["queue"] = queue or os.environ.get("WSI_DEEPR_QUEUE")
    options["account"] = account or os.environ.get("WSI_DEEPR_ACCOUNT")
    options.update(overrides)
    return SLURMCluster(**options)


def pbs_cluster(*, gpu: bool = False, queue: str | None = None, account: str | None = None,
                cores: int | None = None, memory: str | None = None, processes: int | None = None,
                walltime: str = "12:00:00", prologue: list[str] | None = None,
                dashboard_address: str = ":8787", interface: str | None = None,
                log_directory: str | None = None, **overrides):
    """A ``dask_jobqueue.PBSCluster`` whose jobs are wsi-deepr workers (one GPU per job with ``gpu``).

    Same parameters as :func:`slurm_cluster`.
    """
    from dask_jobqueue import PBSCluster

    options = _common(gpu=gpu, cores=cores, memory=memory, processes=processes, walltime=walltime,
                      prologue=prologue, dashboard_address=dashboard_address, interface=interface,
                      log_directory=log_directory)
    ncpus, mem = options["cores"], options["memory"].lower()
    options["resource_spec"] = f"select=1:ncpus={ncpus}:mem={mem}" + (":ngpus=1" if gpu else "")
    options["queue"] = queue or os.environ.get("WSI_DEEPR_QUEUE")
    options["account"] = account or os.environ.get("WSI_DEEPR_ACCOUNT")
    options.update(overrides)
    return PBSCluster(**options)


def make_cluster(system: str, **options):
    """``slurm_cluster`` or ``pbs_cluster`` by name."""
    factories = {"slurm": slurm_cluster, "pbs": pbs_cluster}
    if system not in factories:
        raise ValueError(f"system must be one of {', '.join(factories)}, got {system!r}")
    return factories[system](**options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the worker job script of a wsi-deepr cluster.")
    parser.add_argument("system", choices=["slurm", "pbs"])
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker job")
    parser.add_argument("--cores", type=int, default=None)
    parser.add_argument("--memory", default=None)
    parser.add_argument("--processes", type=int, default=None, help="worker processes per job")
    parser.add_argument("--queue", default=None)
    parser.add_argument("--account", default=None)
    args = parser.parse_args(argv)
    logs = os.environ.get("WSI_DEEPR_LOG_DIR") or LOG_DIRECTORY
    existed = os.path.isdir(logs)
    cluster = make_cluster(args.system, gpu=args.gpu, cores=args.cores, memory=args.memory,
                           processes=args.processes, queue=args.queue, account=args.account,
                           dashboard_address="127.0.0.1:0", log_directory=logs)
    try:
        print(cluster.job_script())
    finally:
        cluster.close()
        if not existed and os.path.isdir(logs) and not os.listdir(logs):
            os.rmdir(logs)  # dask-jobqueue creates it; only printing here


if __name__ == "__main__":
    main()
