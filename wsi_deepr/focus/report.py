"""Focus QC reports of a defocus map: summary, JSON, PNG overlay, HTML, batch CSV.

* :func:`summary` condenses a :class:`~wsi_deepr.focus.map.DefocusMap` into
  the figures a lab decides on (tissue area, share of tissue above 1/2/3/5 µm,
  median and 95th percentile, worst regions);
* :func:`summary_columns` flattens it into the columns of the QC summary CSV
  (and of ``batch`` reports);
* :func:`write_qc` writes ``<stem>.focus.json``, ``<stem>.focus.png`` and
  ``<stem>.focus.html`` (each atomically: a temporary beside the target, then
  :func:`os.replace`);
* :func:`write_qc_summary_csv` writes one row per slide.

Shares and percentiles are weighted by tissue area: a window counts with its
tissue fraction times its area, and only windows with an estimate count
(``estimated_share`` says how much of the tissue that is).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from wsi_deepr._version import __version__
from wsi_deepr.errors import OutputError
from wsi_deepr.writers.atomic import atomic_file
from wsi_deepr.writers.paths import image_stem

__all__ = ["QC_COLUMNS", "SCHEMA", "SHARE_THRESHOLDS_UM", "SUMMARY_CSV_FIELDS", "QcOutputs", "qc_document",
           "qc_paths", "qc_stem", "summary", "summary_columns", "write_qc", "write_qc_summary_csv"]

log = logging.getLogger(__name__)

#: identifier and version of the JSON layout (bumped on incompatible changes)
SCHEMA = "wsi-deepr/focus-qc/1"
#: defocus thresholds (µm) whose tissue shares are reported
SHARE_THRESHOLDS_UM = (1, 2, 3, 5)
#: the columns :func:`summary_columns` returns, in order
QC_COLUMNS = ("mpp", "tissue_mm2", "tissue_px", "estimated_share", "in_focus_share",
              *(f"share_above_{t}um" for t in SHARE_THRESHOLDS_UM), "median_defocus_um", "p95_defocus_um",
              "worst_defocus_um")
#: the columns of the QC summary CSV
SUMMARY_CSV_FIELDS = ("slide", "status", "error", "seconds", *QC_COLUMNS, "json", "png", "html")
#: worst regions listed (and cropped in the HTML) by default
TOP_K = 8
#: tissue fraction from which a region is listed among the worst before regions with less tissue
MOSTLY_TISSUE = 0.5
#: suffixes taken off a slide name to make the report stem (longest first)


@dataclass(frozen=True)
class QcOutputs:
    """Paths of the three QC files of one slide."""

    json: Path
    png: Path
    html: Path


def qc_stem(slide_path: str | os.PathLike) -> str:
    """Report stem of a slide: its file name without the format suffix (``x.ome.tif`` -> ``x``)."""
    return image_stem(slide_path)


def qc_paths(output_dir: str | os.PathLike, stem: str) -> QcOutputs:
    """The three report paths ``<output_dir>/<stem>.focus.{json,png,html}``."""
    d = Path(output_dir)
    return QcOutputs(json=d / f"{stem}.focus.json", png=d / f"{stem}.focus.png", html=d / f"{stem}.focus.html")


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w) - 0.5 * w
    return float(np.interp(q, cum / w.sum(), v))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def summary(dmap, *, top_k: int = TOP_K) -> dict:
    """The focus QC figures of a defocus map.

    Parameters
    ----------
    dmap : DefocusMap
        The map (:func:`wsi_deepr.focus.map.defocus_map`).
    top_k : int
        How many worst regions to list.

    Returns
    -------
    dict
        JSON-ready: ``mpp``, ``windows``, ``tissue_windows``,
        ``estimated_windows``, ``tissue_area_px`` (level-0 px²),
        ``tissue_area_mm2`` (``None`` when µm/px is unknown),
        ``estimated_share``, ``in_focus_share`` (at most the map's
        threshold), ``share_above_{1,2,3,5}um``, ``median_defocus_um``,
        ``p95_defocus_um``, ``max_defocus_um`` and ``worst_regions`` (list of
        ``{rank, x, y, width, height, defocus_um, confidence, tissue}``,
        worst first; regions of at least :data:`MOSTLY_TISSUE` tissue before
        the others).  Shares are fractions (0-1) of the estimated tissue
        area; figures without any estimate are ``None``.
    """
    boxes = np.asarray(dmap.boxes, dtype=np.int64).reshape(-1, 4)
    tissue = np.nan_to_num(np.asarray(dmap.tissue, dtype=np.float64))
    defocus = np.asarray(dmap.defocus_um, dtype=np.float64)
    confidence = np.nan_to_num(np.asarray(dmap.confidence, dtype=np.float64))
    tissue_px = tissue * boxes[:, 2] * boxes[:, 3]
    estimated = np.isfinite(defocus) & (tissue_px > 0)
    area, est_area = float(tissue_px.sum()), float(tissue_px[estimated].sum())
    mpp = None if dmap.mpp is None else float(dmap.mpp)
    out: dict = {
        "mpp": mpp,
        "windows": int(len(boxes)),
        "tissue_windows": int(np.count_nonzero(tissue > 0)),
        "estimated_windows": int(np.count_nonzero(estimated)),
        "tissue_area_px": round(area, 1),
        "tissue_area_mm2": None if mpp is None else round(area * mpp * mpp / 1e6, 4),
        "estimated_share": _round(est_area / area, 4) if area > 0 else None,
    }
    d, w = defocus[estimated], tissue_px[estimated]

    def share(mask: np.ndarray) -> float | None:
        return round(float(w[mask].sum()) / est_area, 4) if est_area > 0 else None

    out["in_focus_share"] = share(d <= float(dmap.threshold_um))
    for t in SHARE_THRESHOLDS_UM:
        out[f"share_above_{t}um"] = share(d > t)
    out["median_defocus_um"] = _round(_weighted_quantile(d, w, 0.5), 3) if est_area > 0 else None
    out["p95_defocus_um"] = _round(_weighted_quantile(d, w, 0.95), 3) if est_area > 0 else None
    out["max_defocus_um"] = _round(d.max(), 3) if d.size else None
    idx = np.flatnonzero(estimated)
    # regions mostly of tissue first (a sliver of debris at a tissue edge is not what a lab rescans), then
    # by defocus and confidence
    mostly = tissue[idx] < MOSTLY_TISSUE
    worst = idx[np.lexsort((-confidence[idx], -defocus[idx], mostly))][: max(0, int(top_k))]
    out["worst_regions"] = [
        {"rank": r, "x": int(boxes[i, 0]), "y": int(boxes[i, 1]), "width": int(boxes[i, 2]),
         "height": int(boxes[i, 3]), "defocus_um": round(float(defocus[i]), 3),
         "confidence": round(float(confidence[i]), 4), "tissue": round(float(tissue[i]), 4)}
        for r, i in enumerate(worst, start=1)
    ]
    return out


def summary_columns(summary: Mapping) -> dict[str, object]:
    """Flatten a :func:`summary` into the QC columns (:data:`QC_COLUMNS`) of CSV reports.

    ``worst_defocus_um`` is the largest defocus; missing figures are ``None``.
    """
    cols: dict[str, object] = {
        "mpp": summary.get("mpp"),
        "tissue_mm2": summary.get("tissue_area_mm2"),
        "tissue_px": summary.get("tissue_area_px"),
        "estimated_share": summary.get("estimated_share"),
        "in_focus_share": summary.get("in_focus_share"),
    }
    for t in SHARE_THRESHOLDS_UM:
        cols[f"share_above_{t}um"] = summary.get(f"share_above_{t}um")
    cols["median_defocus_um"] = summary.get("median_defocus_um")
    cols["p95_defocus_um"] = summary.get("p95_defocus_um")
    cols["worst_defocus_um"] = summary.get("max_defocus_um")
    return cols


def qc_document(slide, dmap, *, top_k: int = TOP_K) -> dict:
    """The QC JSON document of ``dmap`` (without its ``overlay`` entry, added by :func:`write_qc`).

    See the README ("wsi-deepr qc") for every field.
    """
    h0, w0 = slide.level_shapes[0][:2]
    boxes = np.asarray(dmap.boxes, dtype=np.int64).reshape(-1, 4)
    regions = [
        {"x": int(b[0]), "y": int(b[1]), "width": int(b[2]), "height": int(b[3]),
         "tissue": round(float(np.nan_to_num(t)), 4),
         "defocus_um": _round(d, 3), "confidence": round(float(np.nan_to_num(c)), 4)}
        for b, t, d, c in zip(boxes, dmap.tissue, dmap.defocus_um, dmap.confidence)
    ]
    return {
        "schema": SCHEMA,
        "wsi_deepr_version": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "slide": str(slide.path),
        "slide_name": Path(str(slide.path)).name,
        "modality": slide.modality.value,
        "width": int(w0),
        "height": int(h0),
        "mpp": None if dmap.mpp is None else float(dmap.mpp),
        "window": int(dmap.window),
        "window_um": None if dmap.mpp is None else round(dmap.window * float(dmap.mpp), 3),
        "grid_shape": [int(v) for v in dmap.grid_shape],
        "level": int(dmap.level),
        "threshold_um": float(dmap.threshold_um),
        "method": str(dmap.method),
        "seconds": round(float(dmap.seconds), 3),
        "summary": summary(dmap, top_k=top_k),
        "regions": regions,
    }


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (:func:`wsi_deepr.writers.atomic.atomic_file`), as an :class:`OutputError`."""
    try:
        with atomic_file(path) as fh:
            fh.write(data)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}; check that its folder exists and is "
                          f"writable, or choose another --output-dir") from exc


def write_qc(slide, dmap, output_dir: str | os.PathLike, *, stem: str | None = None,
             top_k: int = TOP_K, refocused=None) -> QcOutputs:
    """Write the three QC files of ``slide`` and its defocus map into ``output_dir``.

    Parameters
    ----------
    slide : Slide
        The slide (read for the thumbnail and the full-resolution crops).
    dmap : DefocusMap
        Its defocus map.
    output_dir : path-like
        Folder of the reports (created if missing).
    stem : str, optional
        File stem (default :func:`qc_stem` of the slide).
    top_k : int
        Worst regions listed, outlined on the PNG and cropped in the HTML.
    refocused : Slide, optional
        The refocused output of ``slide`` (``refocus --qc``): each crop then
        shows the region before (left) and after (right) refocusing.

    Returns
    -------
    QcOutputs
        Paths of ``<stem>.focus.json``, ``.png`` and ``.html``; existing
        files are replaced (atomically).

    Raises
    ------
    OutputError
        The folder cannot be created or a file cannot be written.
    """
    from wsi_deepr.focus.render import (
        crop_region,
        display_ranges,
        render_html,
        render_overlay,
        side_by_side,
        slide_thumbnail,
    )

    out_dir = Path(output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out_dir}: {exc.strerror or exc}; choose another "
                          f"--output-dir") from exc
    paths = qc_paths(out_dir, stem or qc_stem(slide.path))
    doc = qc_document(slide, dmap, top_k=top_k)
    worst = doc["summary"]["worst_regions"]
    thumb = slide_thumbnail(slide)
    overlay = render_overlay(slide, dmap, worst=worst, thumb=thumb)
    buf = io.BytesIO()
    overlay.image.save(buf, format="PNG", optimize=True)
    png = buf.getvalue()
    doc["overlay"] = {"png": paths.png.name, "width": overlay.image.width, "height": overlay.image.height,
                      "thumbnail_width": overlay.thumb_size[0], "thumbnail_height": overlay.thumb_size[1],
                      "scale": round(overlay.scale, 6)}
    ranges = display_ranges(slide, thumb[0])
    crops = [crop_region(slide, reg, ranges=ranges) for reg in worst]
    if refocused is not None:
        doc["crops"] = "before | after"
        crops = [(side_by_side(img, crop_region(refocused, _scaled(reg, slide, refocused), ranges=ranges,
                                                max_side=max(img.size))[0]), box)
                 for reg, (img, box) in zip(worst, crops, strict=True)]
    _atomic_write(paths.json, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    _atomic_write(paths.png, png)
    _atomic_write(paths.html, render_html(doc, png, crops).encode("utf-8"))
    log.info("focus QC of %s written to %s", slide.path, paths.html)
    return paths


def _scaled(region: Mapping, slide, other) -> dict:
    """``region`` (level-0 px of ``slide``) in the level-0 px of ``other`` (e.g. an output at another pixel size)."""
    fy = other.level_shapes[0][0] / slide.level_shapes[0][0]
    fx = other.level_shapes[0][1] / slide.level_shapes[0][1]
    return {**region, "x": int(region["x"] * fx), "y": int(region["y"] * fy),
            "width": max(1, int(region["width"] * fx)), "height": max(1, int(region["height"] * fy))}


def write_qc_summary_csv(rows: Iterable[Mapping], path: str | os.PathLike) -> Path:
    """Write the QC summary CSV (atomically): one row per slide, :data:`SUMMARY_CSV_FIELDS` columns.

    Parameters
    ----------
    rows : iterable of mapping
        One mapping per slide with (some of) the :data:`SUMMARY_CSV_FIELDS`
        keys; missing and ``None`` values are written as empty cells, other
        keys are ignored.
    path : path-like
        The CSV file (its folder is created if missing).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of {path}: {exc.strerror or exc}; choose another "
                          f"--summary path") from exc
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in SUMMARY_CSV_FIELDS})
    _atomic_write(path, buf.getvalue().encode("utf-8"))
    return path
