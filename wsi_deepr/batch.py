"""Refocus many slides: every slide attempted, finished ones skipped, a report.

:func:`plan_batch` turns inputs (files, folders) or a CSV manifest into
``(input, output)`` pairs; :func:`run_batch` refocuses them one after another
with :func:`wsi_deepr.api.refocus_with` and one
:class:`~wsi_deepr.options.RefocusOptions` (each slide parallel on the scheduler
given, typically one Dask cluster for the whole batch) and:

* never lets one slide stop the others: any error is caught, recorded and
  the next slide started;
* skips a slide whose output exists (idempotent reruns; ``overwrite=True``
  redoes it), tidying what an interrupted run may have left beside it
  (a missing JSON sidecar is restored from the OME-XML, a stale scratch store
  removed);
* resumes an interrupted slide at block granularity (the scratch store, see
  :mod:`wsi_deepr.runsafe.resume`); a slide another job is writing fails with
  "locked" rather than being written twice;
* rewrites the report (CSV and JSON, atomically) after every slide, so a
  killed batch still leaves one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wsi_deepr._version import __version__
from wsi_deepr.api import refocus_with
from wsi_deepr.errors import OutputLockedError, WsiDeeprError
from wsi_deepr.focus.report import QC_COLUMNS
from wsi_deepr.options import RefocusOptions
from wsi_deepr.writers.atomic import atomic_write_text
from wsi_deepr.writers.paths import default_output_path

__all__ = ["BatchItem", "ManifestError", "SlideReport", "collect_inputs", "plan_batch", "read_manifest", "run_batch",
           "write_report"]

log = logging.getLogger(__name__)

#: file suffixes taken from a folder (lower case)
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".tif", ".tiff",
                  ".qptiff")
#: manifest columns that are passed to refocus for that slide only
MANIFEST_OPTIONS = ("model", "modality", "scale", "background")
REPORT_FIELDS = ("input", "output", "status", "seconds", "tiles", "resumed_blocks", "model", "provider",
                 "error")
#: focus QC columns (``wsi-deepr qc``'s summary), filled when the defocus map was estimated
FOCUS_FIELDS = QC_COLUMNS


@dataclass
class BatchItem:
    """One slide of a batch: input, output and per-slide refocus options."""

    input: Path
    output: Path
    options: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # known bad before starting (e.g. two inputs, one output)


@dataclass
class SlideReport:
    """What happened to one slide: ``status`` is ``done``, ``skipped`` or ``failed``."""

    input: str
    output: str
    status: str
    seconds: float = 0.0
    tiles: int | None = None
    resumed_blocks: int | None = None
    model: str = ""
    provider: str = ""
    error: str = ""
    focus: dict = field(default_factory=dict)


def _is_slide(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or ".refocused." in name:  # hidden files, temporaries, our outputs
        return False
    return name.endswith(SLIDE_SUFFIXES)


def collect_inputs(inputs: Iterable[str | os.PathLike], *, recursive: bool = False) -> list[Path]:
    """Files as given, and the slides inside folders (sorted).

    A folder contributes its files with a slide suffix
    (:data:`SLIDE_SUFFIXES`), except hidden files and ``*.refocused.*``
    outputs, so a folder can be refocused in place night after night.
    A path that does not exist is kept: it fails as a slide, in the report.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = path.rglob("*") if recursive else path.iterdir()
            found.extend(sorted(p for p in files if p.is_file() and _is_slide(p)))
        else:
            found.append(path)
    return found


class ManifestError(WsiDeeprError, ValueError):
    """The manifest cannot be read."""


def read_manifest(path: str | os.PathLike, *, output_dir: str | os.PathLike | None = None) -> list[BatchItem]:
    """Read a CSV manifest: column ``input`` (or ``slide``/``path``), optional
    ``output``, ``model``, ``modality``, ``scale`` and ``background``; empty
    cells mean the default.

    Relative inputs are relative to the manifest's folder, relative outputs to
    ``output_dir`` (or the manifest's folder without it).

    Raises
    ------
    WsiDeeprError
        Unreadable manifest or no input column.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    columns = {c.strip().lower(): c for c in (reader.fieldnames or [])}
    key = next((columns[c] for c in ("input", "slide", "path") if c in columns), None)
    if key is None:
        raise ManifestError(f"manifest {path} has no 'input' column (columns: {', '.join(columns) or 'none'}); "
                            f"the first line must name the columns, e.g. input,output")
    base = path.parent
    out_base = Path(output_dir) if output_dir is not None else base
    items = []
    for row in reader:
        value = (row.get(key) or "").strip()
        if not value:
            continue
        slide = Path(value) if Path(value).is_absolute() else base / value
        out = (row.get(columns.get("output", ""), "") or "").strip()
        options = {opt: row[columns[opt]].strip() for opt in MANIFEST_OPTIONS
                   if opt in columns and (row.get(columns[opt]) or "").strip()}
        items.append(BatchItem(slide, (Path(out) if Path(out).is_absolute() else out_base / out) if out else None,
                               options))
    return items


def plan_batch(inputs: Sequence[str | os.PathLike] = (), output_dir: str | os.PathLike | None = None, *,
               manifest: str | os.PathLike | None = None, recursive: bool = False,
               output_format: str = "auto") -> list[BatchItem]:
    """``(input, output)`` pairs of a batch.

    Outputs default to ``<output_dir>/<stem>.refocused.ome.tif`` (beside the
    input without ``output_dir``; ``.tif`` or ``.ome.zarr`` for those
    ``output_format`` values).  Two inputs that would write the same
    output: the later ones are marked failed (give outputs in a manifest).
    """
    items = read_manifest(manifest, output_dir=output_dir) if manifest is not None else []
    items += [BatchItem(p, None) for p in collect_inputs(inputs, recursive=recursive)]
    seen: dict[Path, Path] = {}
    for item in items:
        if item.output is None:
            default = default_output_path(item.input, output_format)
            item.output = Path(output_dir) / default.name if output_dir is not None else default
        key = item.output.absolute()
        if key in seen:
            item.error = (f"output {item.output} is also the output of {seen[key]}; give distinct outputs in "
                          f"a manifest (column 'output')")
        else:
            seen[key] = item.input
    return items


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, WsiDeeprError) else f"{type(exc).__name__}: {text}"


def _tidy_finished(item: BatchItem, report: SlideReport) -> None:
    """For a finished output: restore a missing sidecar, drop a leftover scratch."""
    from wsi_deepr.runsafe.lock import OutputLock
    from wsi_deepr.runsafe.provenance import read_annotations, record_from_annotations, sidecar_path, write_sidecar
    from wsi_deepr.runsafe.resume import scratch_path

    try:
        with OutputLock(item.output):  # not while a job is (re)writing it
            sidecar = sidecar_path(item.output)
            record = None
            if sidecar.exists():
                record = json.loads(sidecar.read_text())
            else:
                record = record_from_annotations(read_annotations(item.output))
                if record:
                    record["output"] = str(item.output.resolve())
                    record["sidecar_restored_from"] = "OME-XML"
                    write_sidecar(item.output, record)
                    log.info("restored %s from the OME-XML of %s", sidecar, item.output)
            scratch = scratch_path(item.output)
            if scratch.exists():
                import shutil

                shutil.rmtree(scratch, ignore_errors=True)
                log.info("removed %s left after %s was finished", scratch, item.output)
    except OutputLockedError:
        return
    except Exception as exc:  # noqa: BLE001 - housekeeping must not fail a finished slide
        log.warning("%s: %s", item.output, _one_line(exc))
        return
    if record:
        report.tiles = record.get("windows")
        report.model = str(record.get("model", ""))
        report.provider = str(record.get("provider", ""))


def run_batch(
    items: Sequence[BatchItem],
    *,
    options: RefocusOptions | None = None,
    scheduler: str | object = "threads",
    overwrite: bool | None = None,
    report: str | os.PathLike | None = None,
    on_start: Callable[[int, BatchItem], None] | None = None,
    on_done: Callable[[int, SlideReport], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **option_values,
) -> list[SlideReport]:
    """Refocus every item; return one :class:`SlideReport` per item, in order.

    Parameters
    ----------
    items : sequence of BatchItem
        From :func:`plan_batch`.
    options : RefocusOptions, optional
        The refocus options of every slide (default: the defaults); a
        manifest's per-slide columns override them for that slide.
    scheduler : str, distributed.Client or callable
        Where the slides run (see :func:`wsi_deepr.api.refocus`); typically
        one cluster for the whole batch.
    overwrite : bool, optional
        Redo slides whose output exists (default: skip them); overrides
        ``options.overwrite``.
    report : path, optional
        ``<report>.csv`` (and ``<report>.json`` beside it) rewritten after
        every slide.
    on_start, on_done : callable, optional
        ``on_start(index, item)`` before a slide, ``on_done(index, report)``
        after it (the CLI prints there).
    progress : callable, optional
        Passed to :func:`~wsi_deepr.api.refocus` for each slide.
    **option_values
        Single options by name (``model=``, ``device=``, ``tile=``, ...),
        applied over ``options``.

    Raises
    ------
    OptionError
        A bad option value (before any slide is started).
    """
    options = (options or RefocusOptions()).replace(**option_values)
    if overwrite is not None:
        options = options.replace(overwrite=overwrite)
    started = time.time()
    pending = [SlideReport(str(i.input), str(i.output), "pending") for i in items]
    for index, item in enumerate(items):
        if on_start is not None:
            on_start(index, item)
        entry = pending[index]
        t0 = time.perf_counter()
        _run_one(item, entry, options, scheduler=scheduler, progress=progress)
        entry.seconds = round(time.perf_counter() - t0, 3)
        if report is not None:
            write_report(pending, report, started=started)
        if on_done is not None:
            on_done(index, entry)
    return pending


def _run_one(item: BatchItem, entry: SlideReport, options: RefocusOptions, *, scheduler: object,
             progress: Callable[[int, int], None] | None) -> None:
    """Refocus, skip or fail one slide; fill in ``entry``."""
    if item.error:
        entry.status, entry.error = "failed", item.error
        return
    if item.output.exists() and not options.overwrite:
        entry.status = "skipped"
        _tidy_finished(item, entry)
        return
    try:
        result = refocus_with(item.input, item.output, options.with_overrides(item.options), scheduler=scheduler,
                              progress=progress)
    except Exception as exc:  # one slide never stops the batch
        if not isinstance(exc, WsiDeeprError):
            log.debug("%s failed", item.input, exc_info=True)
        entry.status, entry.error = "failed", _one_line(exc)
        return
    entry.status = "done"
    entry.tiles, entry.resumed_blocks = result.windows, result.resumed_blocks
    entry.model, entry.provider = result.model, result.provider
    if result.focus:
        from wsi_deepr.focus.report import summary_columns

        entry.focus = summary_columns(result.focus)


def write_report(reports: Sequence[SlideReport], path: str | os.PathLike, *,
                 started: float | None = None) -> tuple[Path, Path]:
    """Write ``<path>.csv`` and ``<path>.json`` atomically; return both paths.

    ``path`` may end in ``.csv`` or ``.json`` or have no suffix.
    """
    path = Path(path)
    if path.suffix.lower() in (".csv", ".json"):
        path = path.with_suffix("")
    csv_path, json_path = path.with_name(path.name + ".csv"), path.with_name(path.name + ".json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_FIELDS + FOCUS_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in reports:
        row = {k: v for k, v in asdict(r).items() if k != "focus"} | {k: r.focus.get(k) for k in FOCUS_FIELDS}
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(csv_path, buffer.getvalue())
    counts: dict[str, int] = {}
    for r in reports:
        counts[r.status] = counts.get(r.status, 0) + 1
    document = {
        "wsi_deepr_version": __version__, "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)) if started else None,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "counts": counts,
        "slides": [asdict(r) for r in reports],
    }
    atomic_write_text(json_path, json.dumps(document, indent=2) + "\n")
    return csv_path, json_path
