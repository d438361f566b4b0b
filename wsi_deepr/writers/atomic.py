"""Atomic writes: a file appears at its final path complete, or not at all.

Everything wsi-deepr writes (the OME-TIFF, the JSON sidecar, batch reports,
training checkpoints) is first written to a hidden temporary file beside the
target, ``.<target name>.<8 hex>.tmp``, and renamed onto the target at the
end (``os.replace``: atomic on one file system).  A failure removes the
temporary; a killed process leaves it behind, and :func:`temporaries` finds
those of a given target so that the next run (holding the target's lock)
can remove them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from wsi_deepr.errors import OutputError

__all__ = ["atomic_file", "atomic_write_text", "temporaries", "temporary_path"]

_SUFFIX = ".tmp"


def temporary_path(target: str | os.PathLike) -> Path:
    """A fresh temporary path for ``target``: ``.<name>.<8 hex>.tmp`` in its folder."""
    target = Path(target)
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}{_SUFFIX}")


def temporaries(target: str | os.PathLike) -> list[Path]:
    """The temporaries of ``target`` that exist (left by writers that were killed)."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]{{8}}{re.escape(_SUFFIX)}")
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return []
    return sorted(target.parent / n for n in names if pattern.fullmatch(n))


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
    for _ in range(16):
        tmp = temporary_path(target)
        try:
            handle = open(tmp, mode.replace("w", "x"), encoding=(encoding or "utf-8") if mode == "w" else None)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot create a file in output folder {target.parent}: {exc}") from exc
    else:
        raise OutputError(f"cannot create a temporary file in {target.parent}")
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
