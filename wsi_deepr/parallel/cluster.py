"""Dask ``distributed`` clusters for wsi-deepr.

* :class:`ClusterClient` — the client the CLI runs on: a ``LocalCluster``
  sized to the machine (``workers`` x ``threads_per_worker``; on up to 4 cores
  one worker in this process, see :func:`local_cluster_layout`), or a running
  scheduler's address.  It starts lazily, on the first slide that
  passed its checks, so a bad input never waits for a cluster.
* :class:`SessionPlugin` — a ``WorkerPlugin`` that creates the one ONNX
  Runtime session of each worker process when the worker joins (or when the
  plugin is registered).  Tasks carry only a
  :class:`~wsi_deepr.inference.session.SessionSpec` (the model *path*, device, threads)
  and look the session up in the process cache: the model is never shipped
  with a task.
* GPU clusters declare ``resources={"GPU": 1}`` per worker (one worker per
  GPU); :func:`gpu_resources` tells :func:`wsi_deepr.api.refocus` to annotate
  the inference tasks with them.

``pipelines/`` holds dask-jobqueue cluster definitions for SLURM and PBS.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Self

from wsi_deepr.inference.session import SessionSpec, get_session

__all__ = [
    "IN_PROCESS_MAX_CORES", "ClusterClient", "SessionPlugin", "cluster_size", "describe", "free_address",
    "gpu_resources",
    "local_cluster_layout", "register_session", "threads_per_task",
]

log = logging.getLogger(__name__)

try:  # distributed is a dependency, but keep ``import wsi_deepr.parallel.cluster`` light when it is broken
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object  # type: ignore[misc,assignment]


def cluster_size(workers: int | None = None, threads_per_worker: int | None = None, *,
                 cpu: int | None = None, gpu: bool = False) -> tuple[int, int]:
    """``(workers, threads_per_worker)`` of a LocalCluster on a ``cpu``-core machine.

    Given neither: distributed's own split of the cores (one single-thread
    process per core up to 4 cores, then fewer, wider processes), or one
    worker with up to 4 threads when ``gpu`` (one GPU).  Given one, the other
    fills the cores.
    """
    cpu = max(1, int(cpu or os.cpu_count() or 1))
    if workers is None and threads_per_worker is None:
        if gpu:
            return 1, min(4, cpu)
        from distributed.deploy.utils import nprocesses_nthreads

        return nprocesses_nthreads(cpu)
    if workers is None:
        workers = max(1, cpu // int(threads_per_worker))
    if threads_per_worker is None:
        threads_per_worker = max(1, cpu // int(workers))
    return int(workers), int(threads_per_worker)


#: up to this many cores, a LocalCluster sized by default is one worker in this
#: process with a thread per core: worker processes split the cores without
#: sharing the ONNX Runtime session or the slide handle, balance poorly over few
#: tasks and pay transfers (the README's ``--scheduler`` row has the measurement)
IN_PROCESS_MAX_CORES = 4


def local_cluster_layout(workers: int | None = None, threads_per_worker: int | None = None, *,
                         cpu: int | None = None, gpu: bool = False) -> tuple[int, int, bool]:
    """``(workers, threads_per_worker, processes)`` of the LocalCluster for this machine.

    Given neither ``workers`` nor ``threads_per_worker``, a CPU machine of at
    most :data:`IN_PROCESS_MAX_CORES` cores gets one in-process worker with a
    thread per core; otherwise worker processes sized by :func:`cluster_size`.
    """
    cpu = max(1, int(cpu or os.cpu_count() or 1))
    if workers is None and threads_per_worker is None and not gpu and cpu <= IN_PROCESS_MAX_CORES:
        return 1, cpu, False
    return (*cluster_size(workers, threads_per_worker, cpu=cpu, gpu=gpu), True)


def free_address(address: str) -> str:
    """``address`` if its port can be bound here, else the same host with port 0 (any)."""
    host, _, port = address.rpartition(":")
    if not port or port == "0":
        return address
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host or "", int(port)))
    except (OSError, ValueError):
        log.info("dashboard port %s is taken; using a free one", port)
        return f"{host}:0"
    return address


def _worker_environ() -> dict:
    """Environment of the worker processes, set before they start (glibc reads it then).

    ``MALLOC_ARENA_MAX=2`` as :func:`wsi_deepr.cli.common.limit_malloc_arenas`
    does for the CLI process; and without distributed's default
    ``MALLOC_TRIM_THRESHOLD_``, which freezes glibc's mmap threshold so that
    every tile-sized array is mapped, faulted in and unmapped anew.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    environ["MALLOC_ARENA_MAX"] = 2
    return environ


class SessionPlugin(WorkerPlugin):
    """Create the ONNX Runtime session of ``session`` once in each worker process.

    The session lives in :mod:`wsi_deepr.inference`'s per-process cache, the
    one the inference tasks use, so they never create another.  Registered
    under a name derived from ``session`` (idempotent): registering it again
    for the next slide with the same model costs nothing.
    """

    idempotent = True

    def __init__(self, session: SessionSpec) -> None:
        self.session = session
        self.name = plugin_name(session)

    async def setup(self, worker) -> None:  # runs in the worker process
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, get_session, self.session)  # off the event loop


def plugin_name(session: SessionSpec) -> str:
    """Plugin name for ``session``: one session plugin per distinct session."""
    return "wsi-deepr-session-" + hashlib.sha1(repr(session).encode()).hexdigest()[:12]


def register_session(client, session: SessionSpec) -> None:
    """Make every worker of ``client`` (present and future) hold ``session``."""
    client.register_plugin(SessionPlugin(session))


def gpu_resources(client) -> bool:
    """Whether any worker of ``client`` declares a ``GPU`` resource."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return any((w.get("resources") or {}).get("GPU", 0) > 0 for w in workers.values())


def threads_per_task(client) -> int:
    """ONNX Runtime intra-op threads per task that fill, not oversubscribe, each host.

    ``cores of the host // task threads on the host``, the smallest over hosts.
    """
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if not workers:
        return 1
    cores = client.run(os.cpu_count)
    per_host: dict[str, list[int]] = {}
    for address, info in workers.items():
        host = info.get("host", address)
        entry = per_host.setdefault(host, [0, 0])
        entry[0] = max(entry[0], int(cores.get(address) or 1))
        entry[1] += int(info.get("nthreads", 1))
    return max(1, min(c // max(1, t) for c, t in per_host.values()))


def describe(client) -> dict:
    """Scheduler address, dashboard link, workers, threads and resources of ``client``."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    resources: dict[str, float] = {}
    for info in workers.values():
        for key, value in (info.get("resources") or {}).items():
            resources[key] = resources.get(key, 0) + value
    return {
        "scheduler": client.scheduler.address, "dashboard": client.dashboard_link,
        "workers": len(workers), "threads": sum(int(w.get("nthreads", 1)) for w in workers.values()),
        "resources": resources,
    }


class ClusterClient:
    """A ``distributed.Client`` created on first call, closed by :meth:`close`.

    Parameters
    ----------
    address : str, optional
        A running scheduler (``tcp://host:8786``); default: start a
        ``LocalCluster`` on this machine.
    workers, threads_per_worker : int, optional
        LocalCluster size; see :func:`local_cluster_layout`.
    dashboard_address : str
        Where the LocalCluster serves its dashboard (``":8787"``; a taken
        port falls back to a free one).
    gpu : bool
        LocalCluster workers declare ``resources={"GPU": 1}``.
    memory_limit : str or int
        Per-worker memory limit of the LocalCluster (distributed's ``"auto"``
        splits the machine's memory).
    on_start : callable, optional
        ``on_start(client)`` once the client is up (the CLI prints the
        dashboard link there).
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 threads_per_worker: int | None = None, dashboard_address: str = ":8787",
                 gpu: bool = False, memory_limit: str | int = "auto",
                 on_start: Callable[[object], None] | None = None) -> None:
        self.address = address
        self.workers, self.threads_per_worker = workers, threads_per_worker
        self.dashboard_address = dashboard_address
        self.gpu, self.memory_limit = gpu, memory_limit
        self.on_start = on_start
        self.client = None
        self.cluster = None

    @property
    def started(self) -> bool:
        """Whether the client exists."""
        return self.client is not None

    def __call__(self):
        """The client, started on the first call."""
        if self.client is None:
            self.client = self._start()
            if self.on_start is not None:
                self.on_start(self.client)
        return self.client

    def _start(self):
        from distributed import Client, LocalCluster

        if self.address:
            log.info("attaching to the Dask scheduler at %s", self.address)
            return Client(self.address)
        import dask

        n, t, processes = local_cluster_layout(self.workers, self.threads_per_worker, gpu=self.gpu)
        log.info("starting a LocalCluster: %d worker %s x %d thread(s)", n,
                 "process(es)" if processes else "in this process", t)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ()}):
            self.cluster = LocalCluster(
                n_workers=n, threads_per_worker=t, processes=processes,
                dashboard_address=free_address(self.dashboard_address),
                memory_limit=self.memory_limit,
                resources={"GPU": 1} if self.gpu else None,
            )
        return Client(self.cluster)

    def close(self) -> None:
        """Close the client and the LocalCluster it started."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
