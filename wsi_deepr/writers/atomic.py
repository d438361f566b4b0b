"""Atomic writes: an output appears at its final path complete, or not at all.

Everything wsi-deepr writes (the OME-TIFF and TIFF outputs, the JSON sidecar,
batch reports, training checkpoints) is first written to a hidden temporary
beside the target, ``.<target name>.<8 hex>.tmp``, and renamed onto the target
at the end (``os.replace``: atomic on one file system).  A folder output (an
OME-Zarr store, :func:`atomic_folder`) is built the same way; a previous
output it replaces is first renamed aside to ``.<target name>.<8 hex>.old``
and deleted once the new one is in place.  A failure removes the temporary;
a killed process leaves it behind, and :func:`temporaries` finds those of a
given target so that the next run (holding the target's lock) can remove them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from wsi_deepr.errors import OutputError

__all__ = ["atomic_file", "atomic_folder", "atomic_write_text", "remove_temporaries", "temporaries",
           "temporary_path"]

_SUFFIX = ".tmp"


def temporary_path(target: str | os.PathLike) -> Path:
    """A fresh temporary path for ``target``: ``.<name>.<8 hex>.tmp`` in its folder."""
    target = Path(target)
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}{_SUFFIX}")


def temporaries(target: str | os.PathLike) -> list[Path]:
    """The temporaries (and set-aside previous outputs) of ``target`` left by writers that were killed."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]{{8}}\.(tmp|old)")
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return []
    return sorted(target.parent / n for n in names if pattern.fullmatch(n))


def _new_temporary(target: Path, create: Callable[[Path], object]) -> tuple[Path, object]:
    """A fresh temporary path for ``target`` and what ``create(path)`` made there (exclusive creation)."""
    for _ in range(16):
        tmp = temporary_path(target)
        try:
            return tmp, create(tmp)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot create a temporary in output folder {target.parent}: {exc}") from exc
    raise OutputError(f"cannot create a temporary in {target.parent}")


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb", *, fsync: bool = False,
                encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary beside ``target`` for writing; rename it onto ``target`` on success.

    Parameters
    ----------
    target : path
        The final file.
    mode : {"wb", "w"}
        Binary or text.
    fsync : bool
        Flush the data to disk before the rename.
    encoding : str, optional
        Text encoding (text mode; default UTF-8).

    Raises
    ------
    OutputError
        The temporary cannot be created in the target's folder.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r}: use 'wb' or 'w'")
    target = Path(target)
    tmp, handle = _new_temporary(target, lambda t: open(t, mode.replace("w", "x"),
                                                        encoding=(encoding or "utf-8") if mode == "w" else None))
    try:
        with handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically; return ``target``."""
    with atomic_file(target, "w", fsync=fsync) as fh:
        fh.write(text)
    return Path(target)


def remove_temporaries(target: str | os.PathLike) -> list[Path]:
    """Delete what :func:`temporaries` finds for ``target`` (files or folders); return the paths removed."""
    found = temporaries(target)
    for tmp in found:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return found


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Build a folder at a temporary beside ``target``; move it onto ``target`` on success.

    An existing ``target`` (the caller checked it may be replaced) is renamed
    aside first and deleted after the move, or put back if the move fails.

    Raises
    ------
    OutputError
        The temporary folder cannot be created in the target's folder.
    """
    target = Path(target)
    tmp, _ = _new_temporary(target, Path.mkdir)
    try:
        yield tmp
        old = None
        if target.exists() or target.is_symlink():
            old = tmp.with_name(tmp.name.removesuffix(_SUFFIX) + ".old")
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
