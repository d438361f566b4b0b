"""The Python API: ``refocus`` a slide into a pyramidal OME-TIFF.

Notebooks, pipelines and the CLI all call :func:`refocus`.  Everything that
can be checked before the expensive part (input, output path, model, channel
match, execution provider) is checked first, so that a bad call fails in
seconds with a message that names the culprit, and leaves no file behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import OutputError, OutputExistsError
from .geometry import TileGrid
from .inference import SessionSpec, active_provider, get_session, providers_for
from .io import open_slide
from .io.slide import Modality, Slide
from .model import ModelInfo, check_compatible, resolve_model
from .normalization import NormStats, compute_stats, stats_sample
from .pipeline import RefocusPlan, store_to_zarr

__all__ = ["RefocusResult", "default_output_path", "plan_refocus", "refocus"]

log = logging.getLogger(__name__)

_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".qptiff")


@dataclass
class RefocusResult:
    """What :func:`refocus` did."""

    output: Path
    model: str
    model_sha256: str
    provider: str
    windows: int
    blocks: int
    stats: NormStats
    seconds: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, object] = field(default_factory=dict)


def default_output_path(slide_path: str | os.PathLike) -> Path:
    """``<stem>.refocused.ome.tif`` beside the input."""
    path = Path(slide_path)
    name = path.name
    for suffix in _TIFF_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = path.stem
    return path.with_name(f"{name}.refocused.ome.tif")


def _check_output(slide_path: Path, output: Path, *, overwrite: bool) -> None:
    if output.exists() and output.resolve() == slide_path.resolve():
        raise OutputError(f"output {output} is the input slide; choose another path with -o")
    if output.is_dir():
        raise OutputError(f"output {output} is a directory; give a file path such as {output / 'out.ome.tif'}")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output {output} exists; pass --overwrite to replace it")
    folder = output.parent
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable; choose another with -o")


def _scratch_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.scratch.zarr")


def plan_refocus(
    slide: Slide,
    model: ModelInfo,
    *,
    device: str = "auto",
    tile: int = 512,
    halo: int | None = None,
    overlap: int | None = None,
    batch: int = 4,
    threads_per_task: int = 0,
    skip: np.ndarray | None = None,
) -> RefocusPlan:
    """Check the model against ``slide`` and build the :class:`RefocusPlan`.

    Opens the ONNX Runtime session once here, so that ``device="cuda"``
    without a working CUDA provider fails before any work is done.
    """
    check_compatible(model, n_channels=slide.n_channels, modality=slide.modality)
    halo = model.card.halo if halo is None else int(halo)
    overlap = halo if overlap is None else int(overlap)
    h, w, c = slide.shape
    grid = TileGrid((h, w), tile=tile, halo=halo, overlap=overlap)
    spec = SessionSpec(str(model.path), device, threads_per_task)
    get_session(spec)  # fail fast: provider, model loads
    pixels, source = stats_sample(slide.level_shapes, slide.read_region)
    stats = compute_stats(model.card.normalization, pixels, dtype=slide.dtype, source=source)
    log.info("normalisation %s from %s: offset %s scale %s", stats.spec, source,
             np.round(stats.offset, 3).tolist(), np.round(stats.scale, 3).tolist())
    return RefocusPlan(
        reader=slide.reader, level=0, grid=grid, n_channels=c, spec=spec,
        model_channels=model.card.channels, stats=stats, dtype=slide.dtype,
        skip=grid.check_mask(skip), batch=batch,
    )


def refocus(
    slide_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
    modality: str = "auto",
    device: str = "auto",
    tile: int = 512,
    halo: int | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    workers: int | None = None,
    scheduler: str | object = "threads",
    overwrite: bool = False,
    jpeg_quality: int = 90,
    compression: str = "auto",
    skip: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RefocusResult:
    """Refocus a whole slide and write a pyramidal OME-TIFF.

    Parameters
    ----------
    slide_path : path
        Input slide (SVS and other OpenSlide formats, OME-TIFF, QPTIFF, TIFF).
    output : path, optional
        Output file; default ``<stem>.refocused.ome.tif`` beside the input.
    model : str or path, optional
        ONNX model path or installed model name; default: the installed
        default model for the slide's modality.
    modality : {"auto", "brightfield", "fluorescence"}
        Override the detected modality.
    device : {"auto", "cpu", "cuda"}
        ONNX Runtime execution provider; ``"cuda"`` fails fast when unusable.
    tile : int
        Model window size in pixels.
    halo : int, optional
        Context cropped from each window side; default from the model card.
    overlap : int, optional
        Feathered overlap between window cores; default = halo.
    batch : int, optional
        Windows per ONNX Runtime call and per task (default: 2 on the CPU,
        where batching gains nothing and small tasks balance better; 8 on CUDA).
    workers : int, optional
        Parallel inference tasks on the local scheduler (default: CPU count).
    scheduler : "threads", "sync" or distributed.Client
        Where the task graph runs.
    overwrite : bool
        Replace an existing output.
    jpeg_quality : int
        JPEG quality for brightfield RGB output.
    compression : str
        ``"auto"`` (JPEG for RGB, zlib otherwise), ``"jpeg"``, ``"zlib"`` or ``"zstd"``.
    skip : numpy.ndarray, optional
        Boolean window-grid mask of windows to pass through unchanged.
    progress : callable, optional
        ``progress(done, total)`` in model windows (tiles), called as their
        output is written.

    Returns
    -------
    RefocusResult
    """
    from .io.ometiff import write_ome_tiff
    from .pyramid import build_pyramid, pyramid_shapes

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    slide_path = Path(slide_path)
    slide = open_slide(slide_path, modality=modality)
    out = Path(output) if output is not None else default_output_path(slide_path)
    _check_output(slide_path, out, overwrite=overwrite)
    info = resolve_model(model, modality=slide.modality)
    n_cpu = os.cpu_count() or 1
    workers = max(1, int(workers or n_cpu))
    if batch is None:
        batch = 8 if "CUDAExecutionProvider" in providers_for(device) else 2
    plan = plan_refocus(
        slide, info, device=device, tile=tile, halo=halo, overlap=overlap, batch=batch,
        threads_per_task=max(1, n_cpu // workers), skip=skip,
    )
    provider = active_provider(plan.spec)
    timings["prepare"] = time.perf_counter() - t0
    log.info("%s: %d windows of %d px (halo %d, overlap %d) with %s on %s", slide_path,
             plan.grid.n_windows, tile, plan.grid.halo, plan.grid.overlap, info.name, provider)

    import zarr

    scratch = _scratch_path(out)
    if scratch.exists():
        shutil.rmtree(scratch)
    nby, nbx = plan.block_grid
    total = plan.grid.n_windows
    try:
        group = zarr.open_group(str(scratch), mode="w")
        base = group.create_array(
            "0", shape=plan.shape, chunks=plan.chunks,
            dtype=slide.dtype, compressors=zarr.codecs.ZstdCodec(level=1),
        )
        done_count = 0

        def on_block(n: int) -> None:
            nonlocal done_count
            done_count += n
            if progress is not None:
                progress(done_count, total)

        shapes = pyramid_shapes(plan.shape[:2])
        cy, cx, cc = plan.chunks
        reduced = [
            group.create_array(
                str(k), shape=(*shapes[k], cc), chunks=(max(1, cy >> k), max(1, cx >> k), cc),
                dtype=slide.dtype, compressors=zarr.codecs.ZstdCodec(level=1),
            )
            # Tiny chunks make zarr slow: deeper levels come from build_pyramid.
            for k in range(1, min(len(shapes), plan.block_local_levels + 1))
            if min(cy, cx) >> k >= 128
        ]
        t1 = time.perf_counter()
        store_to_zarr(plan, base, reduced=reduced, scheduler=scheduler, num_workers=workers,
                      progress=on_block)
        for array in reduced:  # build_pyramid reuses complete levels
            array.attrs["complete"] = True
        timings["refocus"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        levels = build_pyramid(base, group)
        timings["pyramid"] = time.perf_counter() - t2

        parameters = {
            "tile": tile, "halo": plan.grid.halo, "overlap": plan.grid.overlap, "batch": batch,
            "device": device, "modality": slide.modality.value, "level": plan.level,
            "jpeg_quality": jpeg_quality, "compression": compression,
            "skipped_windows": int(np.count_nonzero(plan.skip)) if plan.skip is not None else 0,
        }
        annotations = {
            "wsi_deepr.version": __version__,
            "wsi_deepr.input": str(slide_path.resolve()),
            "wsi_deepr.input_format": f"{slide.format} ({slide.backend})",
            "wsi_deepr.model": info.name,
            "wsi_deepr.model_sha256": info.sha256,
            "wsi_deepr.model_card": json.dumps(info.card.as_dict()),
            "wsi_deepr.provider": provider,
            "wsi_deepr.parameters": json.dumps(parameters),
            "wsi_deepr.normalization": plan.stats.to_json(),
        }
        rgb = slide.modality is Modality.BRIGHTFIELD and slide.n_channels == 3 and slide.dtype == np.uint8
        associated = {}
        for name, load in slide.associated.items():
            try:
                associated[name] = load()
            except Exception as exc:  # an unreadable label must not sink the slide
                log.warning("%s: associated image %r not carried over: %s", slide_path, name, exc)
        t3 = time.perf_counter()
        write_ome_tiff(
            out, levels, mpp=slide.mpp, channel_names=slide.channel_names, rgb=rgb,
            compression=compression, jpeg_quality=jpeg_quality, associated=associated,
            annotations=annotations, name=slide_path.name, overwrite=overwrite,
        )
        timings["write"] = time.perf_counter() - t3
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    timings["total"] = time.perf_counter() - t0
    log.info("wrote %s in %.1f s", out, timings["total"])
    return RefocusResult(
        output=out, model=info.name, model_sha256=info.sha256, provider=provider,
        windows=plan.grid.n_windows, blocks=nby * nbx, stats=plan.stats, seconds=timings,
        parameters=parameters,
    )
