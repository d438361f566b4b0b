"""Options and error handling shared by the CLI commands."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

import click

from ..errors import WsiDeeprError

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
    if verbose < 2:  # third-party chatter stays quiet unless -vv
        for name in ("distributed", "asyncio", "numcodecs", "tifffile", "PIL"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))


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
        except Exception as exc:  # noqa: BLE001 - last line of defence of the CLI
            if verbose:
                log.exception("failed")
            click.echo(f"Error: {type(exc).__name__}: {exc} (rerun with -v for the traceback)", err=True)
            sys.exit(1)

    return wrapper
