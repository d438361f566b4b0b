#!/usr/bin/env python3
"""Driver of a cluster batch: start a dask-jobqueue cluster, run ``wsi-deepr batch`` on it.

The driver runs as a small job (2 cores; it computes the slide statistics,
the reduced pyramid levels and writes the OME-TIFFs); the inference runs on
worker jobs that the cluster submits to the queue (see ``clusters.py``).
Arguments after ``--`` go to ``wsi-deepr batch``::

    python pipelines/run_batch.py --system slurm --gpu --jobs 4 -- \\
        /data/incoming --output-dir /data/refocused --device cuda

``--system local`` runs the same on this machine with a LocalCluster (what
``wsi-deepr batch`` does by itself).  The exit status is that of the batch:
0 when no slide failed, 1 when any did, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    batch_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=["slurm", "pbs", "local"], default="slurm")
    parser.add_argument("--gpu", action="store_true", help="GPU worker jobs (one GPU each)")
    parser.add_argument("--jobs", type=int, default=2, help="worker jobs to submit")
    parser.add_argument("--cores", type=int, default=None, help="cores per worker job")
    parser.add_argument("--memory", default=None, help="memory per worker job, e.g. 48GB")
    parser.add_argument("--walltime", default="12:00:00")
    parser.add_argument("--queue", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--wait", type=float, default=3600, help="seconds to wait for the first worker")
    args = parser.parse_args(own)

    from wsi_deepr.cli import main as wsi_deepr

    if args.system == "local":
        return wsi_deepr(["batch", *batch_args])

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clusters import make_cluster
    from distributed import Client

    cluster = make_cluster(args.system, gpu=args.gpu, cores=args.cores, memory=args.memory,
                           walltime=args.walltime, queue=args.queue, account=args.account)
    try:
        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
            client.wait_for_workers(1, timeout=args.wait)  # the batch starts with the first worker
        return wsi_deepr(["batch", *batch_args, "--scheduler", cluster.scheduler_address])
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
