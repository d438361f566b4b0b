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

Show the worker job script that would be submitted::

    python pipelines/clusters.py slurm --gpu
    python pipelines/clusters.py pbs --cores 16

Needs ``pip install "wsi-deepr[cluster]"`` (dask-jobqueue).
"""

from __future__ import annotations

import argparse
import os

__all__ = ["make_cluster", "pbs_cluster", "slurm_cluster"]

#: worker job size: (cores, memory, processes) for GPU and CPU jobs
GPU_JOB = {"cores": 8, "memory": "48GB", "processes": 1}
CPU_JOB = {"cores": 16, "memory": "64GB", "processes": 4}


def _prologue(prologue: list[str] | None) -> list[str]:
    lines = list(prologue) if prologue is not None else [
        line.strip() for line in os.environ.get("WSI_DEEPR_PROLOGUE", "").split(";") if line.strip()]
    # glibc arenas: keep worker RSS flat, as the CLI does for its own process
    return [*lines, "export MALLOC_ARENA_MAX=2"]


def _common(gpu: bool, cores: int | None, memory: str | None, walltime: str,
            prologue: list[str] | None) -> dict:
    job = dict(GPU_JOB if gpu else CPU_JOB)
    if cores:
        job["cores"] = cores
    if memory:
        job["memory"] = memory
    options = {
        **job,
        "walltime": walltime,
        "job_script_prologue": _prologue(prologue),
        "local_directory": "$TMPDIR",  # worker spill space on the node's local disk
        "scheduler_options": {"dashboard_address": ":8787"},
        "worker_extra_args": ["--resources", "GPU=1"] if gpu else [],
        "job_name": "wsi-deepr-worker",
    }
    return options


def slurm_cluster(*, gpu: bool = False, queue: str | None = None, account: str | None = None,
                  cores: int | None = None, memory: str | None = None, walltime: str = "12:00:00",
                  prologue: list[str] | None = None, **overrides):
    """A ``dask_jobqueue.SLURMCluster`` whose jobs are wsi-deepr workers (one GPU per job with ``gpu``)."""
    from dask_jobqueue import SLURMCluster

    options = _common(gpu, cores, memory, walltime, prologue)
    options["job_extra_directives"] = ["--gres=gpu:1"] if gpu else []
    options["queue"] = queue or os.environ.get("WSI_DEEPR_QUEUE")
    options["account"] = account or os.environ.get("WSI_DEEPR_ACCOUNT")
    options.update(overrides)
    return SLURMCluster(**options)


def pbs_cluster(*, gpu: bool = False, queue: str | None = None, account: str | None = None,
                cores: int | None = None, memory: str | None = None, walltime: str = "12:00:00",
                prologue: list[str] | None = None, **overrides):
    """A ``dask_jobqueue.PBSCluster`` whose jobs are wsi-deepr workers (one GPU per job with ``gpu``)."""
    from dask_jobqueue import PBSCluster

    options = _common(gpu, cores, memory, walltime, prologue)
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
    parser.add_argument("--queue", default=None)
    parser.add_argument("--account", default=None)
    args = parser.parse_args(argv)
    cluster = make_cluster(args.system, gpu=args.gpu, cores=args.cores, memory=args.memory, queue=args.queue,
                           account=args.account)
    try:
        print(cluster.job_script())
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
