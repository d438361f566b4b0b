#!/usr/bin/env python3
"""Driver of a cluster batch: start a dask-jobqueue cluster, run ``wsi-deepr batch`` on it.

The driver runs as a small job (2 cores; it computes the slide statistics,
the reduced pyramid levels and writes the OME-TIFFs); the inference runs on
worker jobs that the cluster submits to the queue (see ``clusters.py``).
Arguments after ``--`` go to ``wsi-deepr batch``::

    python pipelines/run_batch.py --system slurm --gpu --jobs 4 -- \\
        /data/incoming --output-dir /data/refocused --device cuda

Before submitting, a SLURM worker job is checked against the nodes
(``sinfo``): a job no node can run fails at once, naming the sizes, instead
of pending for ever.  While waiting for the first worker, jobs that SLURM
reports as never runnable (``PartitionConfig``, ...) or that could not be
submitted end the wait too.  SIGTERM (``scancel`` of the driver job,
pre-emption) cancels the worker jobs before the driver exits; the slide in
progress resumes from its finished blocks on the next run.

``--system local`` runs the same on this machine with a LocalCluster (what
``wsi-deepr batch`` does by itself).  The exit status is that of the batch:
0 when no slide failed, 1 when any did, 2 for bad usage (a job too large
for the nodes, an impossible job size); 143 after SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("wsi_deepr.pipelines.run_batch")

#: SLURM pending reasons of a job that can never start as submitted
NEVER_RUNS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
              "ReqNodeNotAvail", "InvalidAccount", "InvalidQOS", "QOSMaxCpuPerJobLimit",
              "QOSMaxMemoryPerJob", "QOSMaxGRESPerJob")
#: exit status for bad usage, as ``wsi-deepr``'s
EXIT_USAGE = 2


class WorkersNeverStart(RuntimeError):
    """No worker job can start: all were rejected or are pending for a reason that never clears."""


def _job_ids(cluster) -> list[str]:
    return [str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]


def _slurm_pending(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` from ``squeue`` (empty when it cannot tell)."""
    if not job_ids:
        return {}
    proc = subprocess.run(["squeue", "--noheader", "--jobs", ",".join(job_ids), "--format", "%i|%T|%r"],
                          capture_output=True, text=True, timeout=30, check=False)
    states = {}
    for line in proc.stdout.splitlines():
        job_id, state, reason = (line.strip().split("|") + ["", ""])[:3]
        states[job_id] = (state, reason)
    return states


def wait_for_workers(client, cluster, *, system: str, jobs: int, timeout: float, poll: float = 1.0) -> None:
    """Wait for the first worker; fail early when no worker job can ever start.

    Raises
    ------
    WorkersNeverStart
        Every job is pending with a reason in :data:`NEVER_RUNS`, or no job
        was submitted 60 s after :meth:`scale` (the submission command failed;
        its error is in this process's log).
    TimeoutError
        No worker joined within ``timeout`` seconds.
    """
    start = time.monotonic()
    while True:
        if client.scheduler_info(n_workers=-1).get("workers"):
            return
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            ids = ", ".join(_job_ids(cluster)) or "none"
            raise TimeoutError(f"no worker joined within {timeout:.0f} s (jobs {ids}); check the queue (squeue) "
                               f"and the worker logs, or raise --wait")
        ids = _job_ids(cluster)
        if not ids and elapsed > 60:
            raise WorkersNeverStart(f"none of the {jobs} worker job(s) was submitted after {elapsed:.0f} s: "
                                    f"the submission command failed (its error is logged above)")
        if system == "slurm" and ids:
            states = _slurm_pending(ids)
            hopeless = {i: r for i, (s, r) in states.items() if s == "PENDING" and r.split(",")[0] in NEVER_RUNS}
            if states and len(hopeless) == len(ids):
                detail = ", ".join(f"{i}: {r}" for i, r in hopeless.items())
                raise WorkersNeverStart(f"SLURM will never start the worker job(s) ({detail}): they ask for more "
                                        f"than a node of the partition has; pass smaller --cores/--memory")
        time.sleep(poll)


def _terminate(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the driver; return the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    batch_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=["slurm", "pbs", "local"], default="slurm")
    parser.add_argument("--gpu", action="store_true", help="GPU worker jobs (one GPU each)")
    parser.add_argument("--jobs", type=int, default=2, help="worker jobs to submit")
    parser.add_argument("--cores", type=int, default=None, help="cores per worker job [GPU 8, CPU 16]")
    parser.add_argument("--memory", default=None,
                        help="memory per worker job, e.g. 48GB [the default job's memory per core x --cores]")
    parser.add_argument("--processes", type=int, default=None,
                        help="worker processes per job; each gets cores/processes threads and memory/processes "
                             "[GPU 1; CPU cores//4, a divisor of --cores]")
    parser.add_argument("--walltime", default="12:00:00")
    parser.add_argument("--queue", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--interface", default=None,
                        help="network interface of the scheduler and the workers (ib0; lo: one machine)")
    parser.add_argument("--dashboard-address", default=":8787", metavar="[HOST]:PORT",
                        help="dashboard of the scheduler (a taken port falls back to a free one; :0 a free one)")
    parser.add_argument("--log-dir", default=None,
                        help="folder of the worker jobs' logs [$WSI_DEEPR_LOG_DIR or ./wsi-deepr-logs]")
    parser.add_argument("--wait", type=float, default=3600, help="seconds to wait for the first worker")
    parser.add_argument("--no-size-check", action="store_true",
                        help="submit without checking the job size against the nodes (sinfo, pbsnodes)")
    args = parser.parse_args(own)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    from wsi_deepr.cli import main as wsi_deepr

    if args.system == "local":
        return wsi_deepr(["batch", *batch_args])

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clusters import LOG_DIRECTORY, check_job_fits, job_size, make_cluster
    from distributed import Client

    try:
        size = job_size(gpu=args.gpu, cores=args.cores, memory=args.memory, processes=args.processes)
        if not args.no_size_check:
            check_job_fits(cores=size["cores"], memory=size["memory"], gpus=1 if args.gpu else 0,
                           walltime=args.walltime, queue=args.queue, system=args.system)
    except ValueError as exc:  # JobTooLargeError too
        print(f"run_batch.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    signal.signal(signal.SIGTERM, _terminate)  # scancel / pre-emption: cancel the worker jobs, then exit
    cluster = make_cluster(args.system, gpu=args.gpu, walltime=args.walltime, queue=args.queue,
                           account=args.account, interface=args.interface, dashboard_address=args.dashboard_address,
                           log_directory=args.log_dir, **size)
    try:
        log.info("worker job: %d core(s), %s, %d worker process(es) x %d thread(s)%s; logs in %s",
                 size["cores"], size["memory"], size["processes"], size["cores"] // size["processes"],
                 ", 1 GPU" if args.gpu else "",
                 args.log_dir or os.environ.get("WSI_DEEPR_LOG_DIR") or LOG_DIRECTORY)
        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
            try:  # the batch starts with the first worker
                wait_for_workers(client, cluster, system=args.system, jobs=args.jobs, timeout=args.wait)
            except (WorkersNeverStart, TimeoutError) as exc:
                print(f"run_batch.py: error: {exc}", file=sys.stderr)
                return EXIT_USAGE if isinstance(exc, WorkersNeverStart) else 1
        return wsi_deepr(["batch", *batch_args, "--scheduler", cluster.scheduler_address])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
