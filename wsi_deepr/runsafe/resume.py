"""Resumable refocusing: the scratch zarr store, its fingerprint and block markers.

While a slide is refocused, its blocks are written into a scratch zarr group
``.<output name>.scratch.zarr`` beside the output.  After a crash, a kill or a
pre-emption, the next run reuses it when its *fingerprint* matches:

* the fingerprint (group attribute ``wsi_deepr_fingerprint``) names everything
  that decides the scratch's pixels and layout: the input (resolved path,
  size, mtime and a SHA-256 of its first and last MiB), the model's SHA-256,
  the execution provider, tile/halo/overlap/batch, the normalisation
  statistics, the skip mask, the dtype and the chunking, and the wsi-deepr
  version.  Anything else is replaced by a fresh scratch.
* a block counts as done only when its *marker* exists: an empty file
  ``.blocks/<by>.<bx>`` inside the store, created by the store task *after* the
  block's level-0 chunk and its block-local reduced chunks are written.  Zarr
  writes a chunk file in place (not atomically), so the existence of a chunk
  file proves nothing; an interrupted block has no marker and is recomputed
  whole.
* the reduced pyramid levels carry ``"complete": True`` once finished and are
  reused by :func:`wsi_deepr.imaging.pyramid.build_pyramid`.

The fingerprint is written last when a scratch is created, so a scratch cut
off while being created never matches.  :func:`crash_point` lets tests kill
the process (SIGKILL) at a chosen stage through ``WSI_DEEPR_CRASH_AT``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BlockMarkers", "Scratch", "crash_point", "input_identity", "mask_digest", "open_scratch", "quick_digest",
    "scratch_arrays", "scratch_fingerprint", "scratch_path",
]

log = logging.getLogger(__name__)

#: bump when the scratch layout changes
SCRATCH_FORMAT = 1
_FINGERPRINT = "wsi_deepr_fingerprint"
_MARKERS = ".blocks"
_CRASH_ENV = "WSI_DEEPR_CRASH_AT"
_MIB = 1 << 20


def scratch_path(output: str | os.PathLike) -> Path:
    """``.<output name>.scratch.zarr`` beside ``output``."""
    output = Path(output)
    return output.with_name(f".{output.name}.scratch.zarr")


def quick_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the file's size and its first and last MiB (fast at any size)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(_MIB))
        if size > 2 * _MIB:
            fh.seek(size - _MIB)
            h.update(fh.read(_MIB))
    return h.hexdigest()


def input_identity(path: str | os.PathLike) -> dict:
    """What identifies an input for resuming: path, size, mtime, quick digest."""
    path = Path(path).resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "quick_sha256": quick_digest(path)}


def mask_digest(mask: np.ndarray | None) -> str | None:
    """SHA-256 of a boolean mask's shape and bits (``None`` if no mask)."""
    if mask is None or not np.any(mask):
        return None
    mask = np.ascontiguousarray(mask, dtype=bool)
    return hashlib.sha256(repr(mask.shape).encode() + np.packbits(mask).tobytes()).hexdigest()


def scratch_arrays(plan, dtype) -> list[tuple[str, tuple[int, ...], tuple[int, ...], object]]:
    """``(name, shape, chunks, dtype)`` of the scratch arrays of ``plan``: level 0 first.

    Then the block-local 2× levels (:attr:`~wsi_deepr.tiling.plan.RefocusPlan.block_local_levels`)
    whose chunks stay at least 128 px (tiny chunks make zarr slow: deeper
    levels come from :func:`wsi_deepr.imaging.pyramid.build_pyramid`).
    """
    from wsi_deepr.imaging.pyramid import pyramid_shapes

    shapes = pyramid_shapes(plan.shape[:2])
    cy, cx, cc = plan.chunks
    return [("0", plan.shape, plan.chunks, dtype)] + [
        (str(k), (*shapes[k], cc), (max(1, cy >> k), max(1, cx >> k), cc), dtype)
        for k in range(1, min(len(shapes), plan.block_local_levels + 1))
        if min(cy, cx) >> k >= 128
    ]


def scratch_fingerprint(plan, *, identity: dict, model_sha256: str, provider: str, dtype,
                        arrays: Sequence[tuple]) -> dict:
    """Everything that decides the scratch's pixels and layout (see the module notes)."""
    from wsi_deepr._version import __version__

    return {
        "format": SCRATCH_FORMAT, "version": __version__, "input": identity, "model_sha256": model_sha256,
        "provider": provider, "level": plan.level, "shape": plan.shape, "dtype": np.dtype(dtype).str,
        "tile": plan.grid.tile, "halo": plan.grid.halo, "overlap": plan.grid.overlap, "batch": plan.batch,
        "model_channels": plan.model_channels, "stats": json.loads(plan.stats.to_json()),
        "skip": mask_digest(plan.skip), "scale": [plan.scale.action, plan.scale.level, plan.scale.factor],
        "arrays": [[n, list(s), list(c)] for n, s, c, _ in arrays],
        # a non-blind method or a hand-off: its parameters and the windows' defocus decide pixels too
        **({"restore": plan.session.to_dict()} if hasattr(plan.session, "to_dict") else {}),
        **({"defocus": hashlib.sha256(np.ascontiguousarray(plan.defocus, dtype="<f8").tobytes()).hexdigest()}
           if plan.defocus is not None else {}),
    }


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class BlockMarkers:
    """Per-block completion markers in a folder (picklable: just the path).

    ``markers(by, bx)`` records block ``(by, bx)`` as complete; call it only
    after all of the block's chunks are written.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = str(folder)

    def __call__(self, by: int, bx: int) -> None:
        fd = os.open(os.path.join(self.folder, f"{int(by)}.{int(bx)}"), os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)

    def load(self) -> frozenset[tuple[int, int]]:
        """The blocks marked complete."""
        done = set()
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return frozenset()
        for name in names:
            by, _, bx = name.partition(".")
            if by.isdigit() and bx.isdigit():
                done.add((int(by), int(bx)))
        return frozenset(done)


@dataclass
class Scratch:
    """An open scratch store: level 0, block-local reduced levels, markers."""

    path: Path
    group: object
    base: object
    reduced: list
    markers: BlockMarkers
    done: frozenset[tuple[int, int]]
    resumed: bool

    def is_done(self, by: int, bx: int) -> bool:
        """Whether block ``(by, bx)`` was completed by an earlier run."""
        return (by, bx) in self.done

    def remove(self) -> None:
        """Delete the scratch store."""
        shutil.rmtree(self.path, ignore_errors=True)


def _open_existing(path: Path, fingerprint: dict, arrays: Sequence[tuple]) -> Scratch | None:
    import zarr

    if not (path / "zarr.json").is_file():
        return None
    try:
        group = zarr.open_group(str(path), mode="r+")
        if _canonical(group.attrs.get(_FINGERPRINT)) != _canonical(fingerprint):
            log.info("scratch %s was made for other inputs or parameters; starting afresh", path)
            return None
        opened = []
        for name, shape, chunks, dtype in arrays:
            array = group[name]
            if (tuple(array.shape) != tuple(shape) or tuple(array.chunks) != tuple(chunks)
                    or np.dtype(array.dtype) != np.dtype(dtype)):
                return None
            opened.append(array)
    except Exception as exc:  # noqa: BLE001 - a damaged scratch is simply replaced
        log.warning("scratch %s unreadable (%s); starting afresh", path, exc)
        return None
    markers = BlockMarkers(path / _MARKERS)
    (path / _MARKERS).mkdir(exist_ok=True)
    return Scratch(path, group, opened[0], opened[1:], markers, markers.load(), True)


def open_scratch(path: str | os.PathLike, fingerprint: dict, arrays: Sequence[tuple], *,
                 resume: bool = True) -> Scratch:
    """Open the scratch at ``path`` if its fingerprint matches, else create it.

    Parameters
    ----------
    path : path
        The scratch zarr group (see :func:`scratch_path`).
    fingerprint : dict
        JSON-able description of everything that decides the scratch's content.
    arrays : sequence of (name, shape, chunks, dtype)
        Level 0 first, then the block-local reduced levels.
    resume : bool
        ``False`` always starts afresh.

    Returns
    -------
    Scratch
        With :attr:`Scratch.done` the blocks finished by an earlier run.
    """
    import zarr

    path = Path(path)
    if resume:
        scratch = _open_existing(path, fingerprint, arrays)
        if scratch is not None:
            log.info("resuming from %s: %d block(s) already done", path, len(scratch.done))
            return scratch
    if path.exists():
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w")
    created = [
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                           compressors=zarr.codecs.ZstdCodec(level=1))
        for name, shape, chunks, dtype in arrays
    ]
    (path / _MARKERS).mkdir()
    group.attrs[_FINGERPRINT] = json.loads(_canonical(fingerprint))  # last: marks the scratch usable
    return Scratch(path, group, created[0], created[1:], BlockMarkers(path / _MARKERS), frozenset(), False)


def crash_point(stage: str, count: int = 0) -> None:
    """Kill this process with SIGKILL when ``$WSI_DEEPR_CRASH_AT`` names this point.

    ``WSI_DEEPR_CRASH_AT=STAGE[:N]`` kills at the first call of ``stage``
    with ``count >= N``.  For crash tests: a real ``kill -9`` at a
    reproducible moment.  Stages: ``prepared`` (scratch ready, no block
    written), ``blocks`` (``count`` blocks stored), ``stored`` (all blocks
    stored), ``pyramid`` (``count`` bands of reduced levels written),
    ``write`` (``count`` level-0 tiles of the OME-TIFF written),
    ``written`` (OME-TIFF in place, sidecar and cleanup not done).
    """
    point = os.environ.get(_CRASH_ENV)
    if not point:
        return
    name, _, n = point.partition(":")
    if name == stage and count >= int(n or 0):
        log.warning("%s=%s: killing this process (SIGKILL)", _CRASH_ENV, point)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
