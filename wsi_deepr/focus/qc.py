"""Focus QC of many slides: :func:`run_qc`, the work behind ``wsi-deepr qc``.

Each slide is opened, mapped (:func:`~wsi_deepr.focus.map.defocus_map`) and
reported (:func:`~wsi_deepr.focus.report.write_qc`); a failing slide never
stops the others, and an optional summary CSV is rewritten after every slide
so that an interrupted run still leaves one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wsi_deepr.errors import WsiDeeprError
from wsi_deepr.focus.report import (
    TOP_K,
    QcOutputs,
    qc_paths,
    qc_stem,
    summary_columns,
    write_qc,
    write_qc_summary_csv,
)

__all__ = ["QcResult", "qc_slide", "run_qc"]

log = logging.getLogger(__name__)


@dataclass
class QcResult:
    """What happened to one slide: ``status`` is ``"done"`` or ``"failed"``.

    Attributes
    ----------
    slide : Path
        The slide as given.
    status : str
        ``"done"`` or ``"failed"``.
    error : str
        One line saying why it failed (empty when done).
    seconds : float
        Wall time for this slide.
    outputs : QcOutputs or None
        The report files (``None`` when failed).
    summary : dict or None
        :func:`~wsi_deepr.focus.report.summary` of its map (``None`` when failed).
    exception : BaseException or None
        The exception that failed it, for callers that re-raise it.
    """

    slide: Path
    status: str
    error: str = ""
    seconds: float = 0.0
    outputs: QcOutputs | None = None
    summary: dict | None = None
    exception: BaseException | None = field(default=None, repr=False)

    def row(self) -> dict[str, object]:
        """This slide's row of the QC summary CSV."""
        row: dict[str, object] = {"slide": str(self.slide), "status": self.status, "error": self.error,
                                  "seconds": round(self.seconds, 2)}
        if self.summary is not None:
            row.update(summary_columns(self.summary))
        if self.outputs is not None:
            row.update(json=str(self.outputs.json), png=str(self.outputs.png), html=str(self.outputs.html))
        return row


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, WsiDeeprError) else f"{type(exc).__name__}: {text}"


def qc_slide(slide_path: str | os.PathLike, *, output_dir: str | os.PathLike | None = None,
             modality: str = "auto", window_um: float | None = None, top_k: int = TOP_K,
             max_workers: int | None = None) -> tuple[QcOutputs, dict]:
    """Focus QC of one slide; errors propagate.

    Returns
    -------
    (QcOutputs, dict)
        The report paths and the summary.
    """
    from wsi_deepr.readers import open_slide
    from wsi_deepr.focus.map import defocus_map
    from wsi_deepr.focus.report import summary

    path = Path(slide_path)
    slide = open_slide(path, modality=modality)
    dmap = defocus_map(slide, window_um=window_um, max_workers=max_workers)
    out_dir = Path(output_dir) if output_dir is not None else path.absolute().parent
    outputs = write_qc(slide, dmap, out_dir, stem=qc_stem(path), top_k=top_k)
    return outputs, summary(dmap, top_k=top_k)


def run_qc(slides: Sequence[str | os.PathLike], *, output_dir: str | os.PathLike | None = None,
           modality: str = "auto", summary_csv: str | os.PathLike | None = None, window_um: float | None = None,
           top_k: int = TOP_K, max_workers: int | None = None,
           on_start: Callable[[int, Path], None] | None = None,
           on_done: Callable[[int, QcResult], None] | None = None) -> list[QcResult]:
    """Focus QC of every slide: JSON, PNG and HTML reports, and optionally a summary CSV.

    Parameters
    ----------
    slides : sequence of path-like
        Slide files.
    output_dir : path-like, optional
        Folder of the reports (created if missing); default beside each slide.
        Existing reports of the same slide are replaced.
    modality : {"auto", "brightfield", "fluorescence"}
        Override the detected modality.
    summary_csv : path-like, optional
        Write (and rewrite after every slide) a CSV with one row per slide.
    window_um : float, optional
        Window side of the defocus map in µm (default: the map's).
    top_k : int
        Worst regions listed and cropped per slide.
    max_workers : int, optional
        Threads of the defocus map.
    on_start, on_done : callable, optional
        Called with ``(index, slide path)`` before and ``(index, QcResult)``
        after each slide.

    Returns
    -------
    list of QcResult
        One per slide, in order.  A slide that fails is recorded with its error
        and the next one started; ``KeyboardInterrupt`` stops the run.
    """
    results: list[QcResult] = []
    claimed: dict[Path, Path] = {}
    for index, item in enumerate(slides):
        path = Path(item)
        if on_start is not None:
            on_start(index, path)
        start = time.perf_counter()
        target = qc_paths(Path(output_dir) if output_dir is not None else path.absolute().parent,
                          qc_stem(path)).json.absolute()
        try:
            if target in claimed:
                raise WsiDeeprError(f"the reports of {path} would replace those of {claimed[target]} "
                                    f"({target.with_suffix('').with_suffix('')}.*); rename one slide or QC them "
                                    f"into different --output-dir folders")
            claimed[target] = path
            outputs, summ = qc_slide(path, output_dir=output_dir, modality=modality, window_um=window_um,
                                     top_k=top_k, max_workers=max_workers)
            result = QcResult(path, "done", outputs=outputs, summary=summ)
        except Exception as exc:  # noqa: BLE001 - one slide never stops the others
            log.debug("focus QC of %s failed", path, exc_info=True)
            result = QcResult(path, "failed", error=_one_line(exc), exception=exc)
        result.seconds = time.perf_counter() - start
        results.append(result)
        if summary_csv is not None:
            write_qc_summary_csv([r.row() for r in results], summary_csv)
        if on_done is not None:
            on_done(index, result)
    return results
