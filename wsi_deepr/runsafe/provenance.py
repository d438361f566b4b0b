"""Provenance of an output: what made it, from what, how, and how long it took.

Every output gets the same record twice:

* in its OME-XML, as the key/values of one ``MapAnnotation`` (keys
  ``wsi_deepr.*``; nested values as JSON text), so the file alone says how it
  was made;
* in a JSON sidecar ``<output>.json`` (written atomically, tmp + rename),
  easy to collect across a batch.

The record holds the wsi-deepr version, the model (name, path, SHA-256, card),
all parameters, the normalisation statistics, the execution provider, the
input (path, size, mtime, **SHA-256 of the whole file**, format), the scheduler
and the timings.  The input's SHA-256 is streamed in a background thread while
the slide is refocused (hashlib releases the GIL), so it costs no wall time on
any slide that takes longer to refocus than to read.  For multi-file formats
(MRXS, VMS) it covers the file named as input only.

The OME-XML is written before the file is finished, so its timings stop at the
pyramid; the sidecar, written last, has the write and total times too.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from wsi_deepr.writers.atomic import atomic_write_text

__all__ = [
    "Checksum", "file_sha256", "host_record", "provenance_record", "read_annotations", "record_from_annotations",
    "sidecar_path", "stamp", "to_annotations", "write_sidecar",
]

_PREFIX = "wsi_deepr."


def sidecar_path(output: str | os.PathLike) -> Path:
    """``<output>.json``: the JSON sidecar of an output."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def file_sha256(path: str | os.PathLike, *, block: int = 8 << 20) -> str:
    """SHA-256 of a file, streamed in ``block``-byte reads."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(block)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class Checksum:
    """SHA-256 of a file computed in a background thread.

    ``Checksum(path).result()`` waits for it and returns ``(hexdigest, seconds)``;
    an unreadable file gives ``("error: ...", seconds)`` rather than raising.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._value: str | None = None
        self._seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="wsi-deepr-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t = time.perf_counter()
        try:
            self._value = file_sha256(self.path)
        except OSError as exc:
            self._value = f"error: {exc}"
        self._seconds = time.perf_counter() - t

    def result(self) -> tuple[str, float]:
        """Wait for the digest; return ``(hexdigest, seconds it took)``."""
        self._thread.join()
        assert self._value is not None
        return self._value, self._seconds


def host_record() -> dict:
    """Host name, platform and Python of this process."""
    return {"host": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version()}


def to_annotations(record: Mapping[str, object]) -> dict[str, str]:
    """Flatten a provenance record into ``wsi_deepr.*`` string key/values.

    Strings stay as they are; everything else becomes JSON text.
    """
    out = {}
    for key, value in record.items():
        out[_PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                                              default=str)
    return out


def write_sidecar(output: str | os.PathLike, record: Mapping[str, object]) -> Path:
    """Write ``record`` to ``<output>.json`` atomically; return its path."""
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_text(sidecar_path(output), text, fsync=True)


def stamp(seconds: float | None = None) -> str:
    """Local time as recorded in provenance (``%Y-%m-%dT%H:%M:%S%z``; now by default)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def provenance_record(*, slide, slide_path: Path, identity: dict, sha256: str, model, provider: str,
                      parameters: dict, plan, output_mpp: tuple[float, float] | None, scheduler: dict,
                      resumed_blocks: int, started: str, timings: Mapping[str, float]) -> dict:
    """The provenance record of one refocused slide (the key/values listed in the module notes).

    Parameters
    ----------
    slide : Slide
        The input, opened.
    slide_path : path
        The input as given.
    identity : dict
        :func:`wsi_deepr.runsafe.resume.input_identity` of the input.
    sha256 : str
        SHA-256 of the whole input file (:class:`Checksum`).
    model : ModelInfo
        The model.
    provider : str
        The ONNX Runtime execution provider used.
    parameters : dict
        The run's parameters as recorded.
    plan : RefocusPlan
        What was computed.
    output_mpp : (float, float) or None
        µm/px of the output.
    scheduler : dict
        Where it ran (:func:`wsi_deepr.parallel.cluster.describe` for a cluster).
    resumed_blocks : int
        Blocks taken over from an interrupted run.
    started : str
        :func:`stamp` of the start.
    timings : mapping
        Seconds per stage so far.
    """
    import numpy as np

    from wsi_deepr._version import __version__

    nby, nbx = plan.block_grid
    return {
        "version": __version__,
        "input": str(Path(slide_path).resolve()),
        "input_format": f"{slide.format} ({slide.backend})",
        "input_size": identity["size"],
        "input_mtime": stamp(identity["mtime_ns"] / 1e9),
        "input_sha256": sha256,
        "input_shape": list(slide.shape),
        "input_dtype": np.dtype(slide.dtype).name,
        "model": model.name,
        "model_path": str(model.path),
        "model_sha256": model.sha256,
        "model_card": model.card.as_dict(),
        "provider": provider,
        "parameters": parameters,
        "normalization": json.loads(plan.stats.to_json()),
        "scale": plan.scale.as_dict(),
        "background": plan.background,
        **({"focus": plan.focus} if plan.focus is not None else {}),
        "output_shape": list(plan.shape),
        "output_mpp": list(output_mpp) if output_mpp else None,
        "scheduler": scheduler,
        "windows": plan.grid.n_windows,
        "blocks": nby * nbx,
        "resumed_blocks": resumed_blocks,
        "started": started,
        **host_record(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def read_annotations(path: str | os.PathLike) -> dict[str, str]:
    """The ``MapAnnotation`` key/values of an OME-TIFF written by wsi-deepr."""
    import xml.etree.ElementTree as ET

    import tifffile

    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    if not xml:
        return {}
    root = ET.fromstring(xml)
    out = {}
    for element in root.iter():
        if element.tag.endswith("}M") or element.tag == "M":
            out[element.get("K", "")] = element.text or ""
    return out


def record_from_annotations(annotations: Mapping[str, str]) -> dict:
    """Invert :func:`to_annotations`: objects, lists and integers parsed back, prefix removed."""
    record: dict[str, object] = {}
    for key, text in annotations.items():
        if not key.startswith(_PREFIX):
            continue
        value: object = text
        if text[:1] in "{[" or text.isdigit():
            try:
                value = json.loads(text)
            except ValueError:
                pass
        record[key[len(_PREFIX):]] = value
    return record
