"""Options and error handling shared by the CLI commands."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from wsi_deepr.errors import WsiDeeprError

if TYPE_CHECKING:
    from wsi_deepr.options import RefocusOptions

log = logging.getLogger("wsi_deepr.cli")

#: exit status for bad input (missing file, bad model, existing output, ...)
EXIT_USAGE = 2


def verbosity_options(func: Callable) -> Callable:
    """Add ``-v/--verbose`` (repeatable) and ``-q/--quiet``."""
    func = click.option("-q", "--quiet", is_flag=True, help="Only print errors.")(func)
    func = click.option("-v", "--verbose", count=True,
                        help="More logging (-v info, -vv debug); tracebacks on errors.")(func)
    return func


def configure_logging(verbose: int, quiet: bool) -> None:
    """Map ``-v``/``-q`` to log levels; the only place logging is configured."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)
    _quiet_third_party(verbose, quiet)


def _quiet_third_party(verbose: int, quiet: bool) -> None:
    """Third-party chatter stays quiet unless -vv (again after importing distributed, which sets its own)."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    if verbose < 2:
        for name in ("distributed", "asyncio", "numcodecs", "tifffile", "PIL"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
    if verbose < 1:  # a failed task's traceback from a worker: the CLI prints the error itself, in one line
        for name in ("distributed.worker", "distributed.scheduler", "distributed.client"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        for name in ("bokeh", "tornado"):  # the dashboard's web server: warnings about its own setup
            logging.getLogger(name).setLevel(logging.ERROR)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for this process (no-op elsewhere).

    Many threads allocating tile-sized arrays make glibc open one arena per
    thread and keep freed memory in each, so RSS creeps up with slide size
    although live data does not.  Only the CLI calls this (a process-wide
    setting, like logging); API users can set ``MALLOC_ARENA_MAX=2``.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, int(arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        log.debug("mallopt not available; malloc arenas not capped")


def handle_errors(func: Callable) -> Callable:
    """Turn wsi-deepr errors into one line on stderr and exit status 2.

    Tracebacks are printed only with ``-v``.  Unexpected exceptions exit
    with status 1, also as one line unless ``-v`` is given.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", 0)
        try:
            return func(*args, **kwargs)
        except (WsiDeeprError, PermissionError) as exc:
            if verbose:
                log.exception("failed")
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except BrokenPipeError:  # output piped into `head` and the like: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)
        except Exception as exc:  # noqa: BLE001 - last line of defence of the CLI
            if verbose:
                log.exception("failed")
            click.echo(f"Error: {type(exc).__name__}: {exc} (rerun with -v for the traceback)", err=True)
            sys.exit(1)

    return wrapper


class TileSize(click.ParamType):
    """A window size in pixels (>= 16) or ``auto``."""

    name = "PX|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            px = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a size in pixels nor 'auto'", param, ctx)
        if px < 16:
            self.fail(f"{px} is below 16 px", param, ctx)
        return px


def _click_option(f: dataclasses.Field) -> Callable:
    """The click option of one :class:`~wsi_deepr.options.RefocusOptions` field (from its metadata)."""
    meta = f.metadata
    name = meta.get("flag", "--" + f.name.replace("_", "-"))
    kwargs: dict = {"help": meta["help"]}
    kind = meta.get("kind")
    if "choices" in meta:
        kwargs.update(type=click.Choice(list(meta["choices"])), default=f.default, show_default=True)
        if "flag" in meta:  # a flag name other than the field's: keep the field's name for the parameter
            return click.option(name, f.name, **kwargs)
    elif kind == "tile":
        kwargs.update(type=TileSize(), default=str(f.default), show_default=True)
    elif kind == "count":
        kwargs.update(type=click.IntRange(min=0), default=f.default)
    elif kind == "positive":
        kwargs.update(type=click.IntRange(min=1), default=f.default)
    elif kind == "quality":
        kwargs.update(type=click.IntRange(1, 100), default=f.default, show_default=True)
    elif kind == "flag":
        kwargs.update(is_flag=True)
    else:
        kwargs.update(default=f.default, metavar=meta.get("metavar"))
    return click.option(name, **kwargs)


def refocus_options(func: Callable) -> Callable:
    """The options shared by ``refocus`` and ``batch``, generated from :class:`~wsi_deepr.options.RefocusOptions`.

    The command receives them as keyword arguments; :func:`options_from` turns
    them back into the options object.
    """
    from wsi_deepr.options import RefocusOptions

    for f in reversed(dataclasses.fields(RefocusOptions)):
        if f.metadata.get("cli", True):
            func = _click_option(f)(func)
    return func


def options_from(params: dict) -> RefocusOptions:
    """Pop the refocus options out of a command's ``params`` into a :class:`~wsi_deepr.options.RefocusOptions`."""
    from wsi_deepr.options import RefocusOptions

    values = {}
    for f in dataclasses.fields(RefocusOptions):
        if not f.metadata.get("cli", True):
            continue
        key = f.name if "choices" in f.metadata else f.metadata.get("flag", f.name).lstrip("-").replace("-", "_")
        value = params.pop(key)
        values[f.name] = (not value) if f.metadata.get("invert") else value
    return RefocusOptions(**values)


def cluster_options(func: Callable) -> Callable:
    """``--scheduler``, ``--workers``, ``--threads-per-worker``, ``--dashboard-address``."""
    options = [
        click.option("--scheduler", default="local", show_default=True, metavar="local|threads|ADDRESS",
                     help="'local': a Dask LocalCluster on this machine (up to 4 cores: one worker in this "
                          "process, a thread per core; more: worker processes); 'threads': "
                          "threads in this process (no cluster); or the address of a running Dask "
                          "scheduler (tcp://host:8786) to attach to."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="LocalCluster worker processes (threads with --scheduler threads) "
                          "[default: sized to the machine (one in-process worker up to 4 cores); 1 per GPU "
                          "with CUDA]."),
        click.option("--threads-per-worker", type=click.IntRange(min=1), default=None,
                     help="Threads of each LocalCluster worker [default: the cores split among the workers]."),
        click.option("--dashboard-address", default=":8787", show_default=True, metavar="[HOST]:PORT",
                     help="Where the LocalCluster serves the Dask dashboard (a taken port falls back to a "
                          "free one)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_scheduler(scheduler: str, *, workers: int | None, threads_per_worker: int | None,
                   dashboard_address: str, device: str, verbose: int, quiet: bool):
    """``(scheduler for api.refocus, ClusterClient or None)`` from the CLI options.

    The cluster starts lazily, on the first slide that passed its checks;
    its dashboard link is printed then (unless ``quiet``).
    """
    if scheduler == "threads":
        return "threads", None
    import distributed  # noqa: F401 - sets its loggers' levels on import: set ours again after it

    from wsi_deepr.parallel.cluster import ClusterClient

    _quiet_third_party(verbose, quiet)

    def announce(client) -> None:
        if not quiet:
            click.echo(f"Dask dashboard: {client.dashboard_link}", err=True)

    gpu = False
    if scheduler == "local" and device != "cpu":
        from wsi_deepr.inference.session import providers_for

        try:
            gpu = "CUDAExecutionProvider" in providers_for(device)
        except WsiDeeprError:  # refocus reports it, after the input checks
            gpu = False
    cluster = ClusterClient(None if scheduler == "local" else scheduler, workers=workers,
                            threads_per_worker=threads_per_worker, dashboard_address=dashboard_address,
                            gpu=gpu, on_start=announce)
    return cluster, cluster


class ProgressBar:
    """A tqdm bar created on the first ``progress(done, total)`` call (nothing when quiet)."""

    def __init__(self, *, quiet: bool, desc: str = "refocus") -> None:
        self.quiet, self.desc, self.bar = quiet, desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="tile", desc=self.desc, dynamic_ncols=True, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        """Close the bar (a new one starts on the next call)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
