"""The Python API: ``refocus`` a slide into a pyramidal OME-TIFF.

Notebooks, pipelines and the CLI all call :func:`refocus`.  Everything that
can be checked before the expensive part (input, output path, model, channel
match, execution provider) is checked first, so that a bad call fails in
seconds with a message that names the culprit, and leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._version import __version__
from .background import OD_THRESHOLD, BackgroundMask, glass_level, tissue_mask, window_skip_mask
from .errors import OutputError, OutputExistsError
from .geometry import TileGrid, choose_tile
from .inference import SessionSpec, active_provider, get_session, providers_for
from .io import open_slide
from .io.slide import Modality, Slide
from .model import ModelInfo, check_compatible, resolve_model
from .normalization import NormStats, compute_stats, stats_sample
from .io.scaled import ReducedReader
from .pipeline import RefocusPlan, store_to_zarr
from .scale import choose_scale

__all__ = ["BACKGROUND_MODES", "RefocusResult", "default_batch", "default_output_path", "detect_background", "plan_refocus",
           "refocus"]

BACKGROUND_MODES = ("auto", "skip", "process")
#: default feather between window cores, px (capped by the halo)
DEFAULT_OVERLAP = 16

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
    resumed_blocks: int = 0
    sidecar: Path | None = None
    provenance: dict[str, object] = field(default_factory=dict)


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


def plan_refocus(
    slide: Slide,
    model: ModelInfo,
    *,
    device: str = "auto",
    tile: int | str = 512,
    halo: int | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    parallel: int = 1,
    threads_per_task: int = 0,
    skip: np.ndarray | None = None,
    check_session: bool = True,
    scale: str = "auto",
    background: str = "auto",
) -> RefocusPlan:
    """Check the model against ``slide`` and build the :class:`RefocusPlan`.

    Opens the ONNX Runtime session once here (unless ``check_session`` is
    false: the session is checked on the cluster's workers instead), so that
    ``device="cuda"`` without a working CUDA provider fails before any work
    is done.  ``scale`` (``"auto"`` or ``"native"``) picks the pixel size the
    model runs at (:func:`wsi_deepr.scale.choose_scale`): the slide's level 0,
    a pyramid level, or a level reduced by an integer factor.  ``background``
    (``"auto"``, ``"skip"`` or ``"process"``) decides whether windows of blank
    glass are passed through (:mod:`wsi_deepr.background`); ``"auto"`` skips
    them on brightfield slides.  An explicit ``skip`` mask wins over it.
    ``tile="auto"`` picks the window size that runs the model on the fewest
    pixels (:func:`wsi_deepr.geometry.choose_tile`, 512-1536 px, with
    ``parallel`` windows at a time); ``batch=None`` runs
    :func:`default_batch` windows per call.
    """
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background={background!r}: use one of {BACKGROUND_MODES}")
    check_compatible(model, n_channels=slide.n_channels, modality=slide.modality)
    halo = model.card.halo if halo is None else int(halo)
    overlap = min(halo, DEFAULT_OVERLAP) if overlap is None else int(overlap)
    decision = choose_scale(level_mpps(slide), model_mpp=model.card.mpp, model_mpp_range=model.card.mpp_range,
                            mode=scale)
    log.info("scale: %s", decision.reason)
    reader, level = slide.reader, decision.level
    h, w, c = slide.level_shapes[level]
    if decision.action == "downsample":
        reader = ReducedReader(slide.reader, decision.level, decision.factor, slide.level_shapes[level],
                               np.dtype(slide.dtype))
        (h, w, c), level = reader.shape, 0
    if tile == "auto":
        tile = choose_tile((h, w), halo=halo, overlap=overlap, parallel=max(1, int(parallel)))
    elif isinstance(tile, str) and not tile.isdigit():
        raise ValueError(f"tile={tile!r}: give a window size in pixels or 'auto'")
    tile = int(tile)
    grid = TileGrid((h, w), tile=tile, halo=halo, overlap=overlap)
    if batch is None:
        batch = default_batch(device, tile)
    spec = SessionSpec(str(model.path), device, threads_per_task)
    if check_session:
        get_session(spec)  # fail fast: provider, model loads
    pixels, source = stats_sample(slide.level_shapes, slide.read_region)
    stats = compute_stats(model.card.normalization, pixels, dtype=slide.dtype, source=source)
    log.info("normalisation %s from %s: offset %s scale %s", stats.spec, source,
             np.round(stats.offset, 3).tolist(), np.round(stats.scale, 3).tolist())
    found = None
    if skip is None and _detects_background(background, slide):
        found = detect_background(slide, grid)
        skip = found.skip
        log.info("background: %d of %d windows are blank glass (tissue %.1f %% of %s); passed through",
                 np.count_nonzero(skip), skip.size, 100 * found.tissue_fraction, found.source)
    return RefocusPlan(
        reader=reader, level=level, grid=grid, n_channels=c, spec=spec,
        model_channels=model.card.channels, stats=stats, dtype=slide.dtype,
        skip=grid.check_mask(skip), batch=batch, scale=decision,
        background=None if found is None else found.to_dict(),
    )


def default_batch(device: str, tile: int) -> int:
    """Windows per inference task: 2 of 512 px on the CPU, 8 on CUDA, fewer for larger windows.

    The batch keeps about the same pixels per task whatever the window size,
    so memory stays bounded (peak RSS 3.1 GB with two 1344-px windows of the
    brightfield preview at once, against 1.0 GB with 512-px windows): one
    window per task from 592 px on the CPU.  On the CPU batching gains
    nothing and small tasks balance better.
    """
    base = 8 if "CUDAExecutionProvider" in providers_for(device) else 2
    return max(1, round(base * (512 / tile) ** 2))


def _detects_background(mode: str, slide: Slide) -> bool:
    if mode == "process":
        return False
    brightfield = slide.modality is Modality.BRIGHTFIELD
    if mode == "skip" and not brightfield:
        raise ValueError(f"background='skip' finds glass by optical density, which needs a brightfield slide "
                         f"(this one is {slide.modality.value}); use background='process'")
    return brightfield


def detect_background(slide: Slide, grid: TileGrid, *, max_ratio: int = 32,
                      max_pixels: int = 4_000_000) -> BackgroundMask:
    """Find the windows of ``grid`` that hold only glass, on a low-resolution thumbnail.

    The thumbnail is the coarsest pyramid level at most ``max_ratio`` times
    smaller than the grid's image (a 512-px window then covers >= 16
    thumbnail pixels), block-averaged further if it has over ``max_pixels``
    (a 2048-px window still covers >= 64 of them at the default 4 MP).
    """
    h, w = grid.shape
    chosen = 0  # levels run from fine to coarse: the last that is fine enough
    for i, (ly, lx, _) in enumerate(slide.level_shapes):
        if h / ly <= max_ratio and w / lx <= max_ratio:
            chosen = i
    ly, lx, lc = slide.level_shapes[chosen]
    factor = max(1, int(np.ceil(np.sqrt(ly * lx / max_pixels))))
    reader, level, (ty, tx) = slide.reader, chosen, (ly, lx)
    if factor > 1:  # block means, kept in float (no rounding back to the slide's type)
        reader = ReducedReader(slide.reader, chosen, factor, (ly, lx, lc), np.dtype(np.float32))
        level, (ty, tx) = 0, reader.shape[:2]
    step = max(1, 256 // factor)  # strips of <= ~256 source rows: a large level is never held whole
    thumb = np.concatenate([np.asarray(reader.read(level, y0, 0, min(y0 + step, ty), tx))
                            for y0 in range(0, ty, step)], axis=0)
    dt = np.dtype(slide.dtype)
    full = float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0
    glass = glass_level(thumb, full_scale=full)
    tissue = tissue_mask(thumb, full_scale=full, glass=glass, od_threshold=OD_THRESHOLD)
    source = f"level {chosen} ({lx}x{ly}){f' averaged {factor}x{factor}' if factor > 1 else ''}"
    return BackgroundMask(skip=window_skip_mask(tissue, grid), tissue_fraction=float(tissue.mean()),
                          glass=tuple(float(g) for g in glass), source=source, od_threshold=OD_THRESHOLD)


def _output_mpp(slide: Slide, plan: RefocusPlan) -> tuple[float, float] | None:
    """µm/px ``(y, x)`` of the refocused image (the slide's, scaled by the plan's level and factor)."""
    if slide.mpp is None:
        return None
    decision = plan.scale
    level, factor = (decision.level, decision.factor) if decision is not None else (0, 1)
    (y0, x0, _), (yk, xk, _) = slide.level_shapes[0], slide.level_shapes[level]
    return slide.mpp[0] * y0 / yk * factor, slide.mpp[1] * x0 / xk * factor


def level_mpps(slide: Slide) -> list[float | None]:
    """µm/px (mean of y and x) of every level of ``slide`` (``None`` when unknown)."""
    if slide.mpp is None:
        return [None] * slide.level_count
    base = 0.5 * (slide.mpp[0] + slide.mpp[1])
    return [base * d for d in slide.level_downsamples]


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporaries a killed writer of ``out`` left (we hold its lock).

    Skipped while another output of the same stem (``a.tif`` beside
    ``a.ome.tif``) is locked: its writer's temporaries match the same pattern.
    """
    import glob

    from .io.ometiff import _stem

    stem = _stem(out)
    folder = out.parent
    for lock in folder.glob(".*.lock"):
        other = folder / lock.name[1:-len(".lock")]
        if other != out and _stem(other) == stem:
            return
    stale = [p for p in folder.glob(f".{glob.escape(stem)}.*.tmp") if len(p.name) == len(stem) + 14]
    stale += folder.glob(f".{glob.escape(out.name)}.json.*.tmp")  # the sidecar's
    for tmp in stale:  # ".<stem>.<8 hex>.tmp" of write_ome_tiff
        log.info("removing %s left by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)


def _resolve_client(scheduler):
    """``(client or None, local scheduler name)`` for ``scheduler``."""
    if isinstance(scheduler, str):
        if scheduler not in ("threads", "sync", "synchronous", "single-threaded"):
            raise ValueError(f"scheduler must be 'threads', 'sync', a distributed.Client or a callable "
                             f"returning one, got {scheduler!r}")
        return None, scheduler
    if hasattr(scheduler, "get") and hasattr(scheduler, "dashboard_link"):
        return scheduler, "distributed"
    if callable(scheduler):  # a lazy client factory (wsi_deepr.cluster.ClusterClient)
        return scheduler(), "distributed"
    raise ValueError(f"scheduler must be 'threads', 'sync', a distributed.Client or a callable, got {scheduler!r}")


def refocus(
    slide_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
    modality: str = "auto",
    device: str = "auto",
    tile: int | str = 512,
    halo: int | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    workers: int | None = None,
    scheduler: str | object = "threads",
    overwrite: bool = False,
    jpeg_quality: int = 90,
    compression: str = "auto",
    skip: np.ndarray | None = None,
    resume: bool = True,
    scale: str = "auto",
    background: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> RefocusResult:
    """Refocus a whole slide and write a pyramidal OME-TIFF.

    The run is resumable and exclusive: while it runs, ``.<output>.lock``
    beside the output keeps other jobs off it; finished blocks are kept in
    ``.<output>.scratch.zarr`` beside the output, and a rerun after a crash
    or a kill reuses them (see :mod:`wsi_deepr.resume`).  The scratch is
    removed once the OME-TIFF is in place.  Provenance goes into the OME-XML
    and into ``<output>.json`` (see :mod:`wsi_deepr.provenance`).

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
    tile : int or "auto"
        Model window size in pixels.  ``"auto"``: the size from 512 to 1536
        px that runs the model on the fewest pixels for this slide
        (:func:`wsi_deepr.geometry.choose_tile`: the halo of every window is
        context computed and thrown away, so larger windows waste less).  It
        is not the default because a large window is also slower per pixel
        where activations outgrow the CPU cache (measured on 2 cores:
        ``benchmarks/installed_models.py --tiles 512 auto``).
    halo : int, optional
        Context cropped from each window side; default from the model card.
    overlap : int, optional
        Feathered overlap between window cores; default ``min(halo, 16)``
        (every core pixel already has ``halo`` px of context: a wider feather
        only adds windows, see ``benchmarks/seams.py``).
    batch : int, optional
        Windows per inference task; default :func:`default_batch`: 2 windows
        of 512 px on the CPU (where batching gains nothing and small tasks
        balance better), 8 on CUDA, and as many pixels per task for larger
        windows (at least one window).  On the CPU, ONNX Runtime gets at most
        :data:`wsi_deepr.inference.CPU_PIXELS_PER_CALL` pixels per call.
    workers : int, optional
        Parallel inference tasks on the local threaded scheduler (default:
        CPU count); with a distributed client, the cluster's threads.
    scheduler : "threads", "sync", distributed.Client or callable
        Where the task graph runs; a callable (e.g.
        :class:`wsi_deepr.cluster.ClusterClient`) is called for the client
        only once the checks have passed.  With a client, each worker holds
        one ONNX Runtime session (:class:`wsi_deepr.cluster.SessionPlugin`)
        and, on CUDA with workers that declare ``GPU`` resources, each
        inference task needs ``{"GPU": 1}``.
    overwrite : bool
        Replace an existing output.
    jpeg_quality : int
        JPEG quality for brightfield RGB output.
    compression : str
        ``"auto"`` (JPEG for RGB, zlib otherwise), ``"jpeg"``, ``"zlib"`` or ``"zstd"``.
    skip : numpy.ndarray, optional
        Boolean window-grid mask of windows to pass through unchanged (wins
        over ``background``).
    resume : bool
        Reuse a matching scratch from an interrupted run (default); ``False``
        starts afresh.
    scale : {"auto", "native"}
        ``"auto"`` compares the slide's µm/px with the model's training µm/px
        and, for a finer slide, refocuses the pyramid level (or an integer
        area-mean reduction) that matches it; the output is then written at
        that pixel size.  ``"native"`` always refocuses full resolution.  What
        was done is in the provenance (``scale``); see :mod:`wsi_deepr.scale`.
    background : {"auto", "skip", "process"}
        ``"skip"`` passes windows of blank glass through unchanged (tissue
        found by optical density on a thumbnail, see
        :mod:`wsi_deepr.background`); ``"process"`` refocuses every window;
        ``"auto"`` (default) skips on brightfield slides and processes
        fluorescence.  What was found is in the provenance (``background``).
    progress : callable, optional
        ``progress(done, total)`` in model windows (tiles), called as their
        output is written (a resumed run starts at the windows already done).

    Returns
    -------
    RefocusResult

    Raises
    ------
    OutputLockedError
        Another live job is writing the same output.
    """
    from . import cluster as clusters
    from .io.ometiff import write_ome_tiff
    from .lock import OutputLock
    from .provenance import Checksum, host_record, to_annotations, write_sidecar
    from .pyramid import build_pyramid, pyramid_shapes
    from .resume import crash_point, input_identity, mask_digest, open_scratch, scratch_path

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    slide_path = Path(slide_path)
    slide = open_slide(slide_path, modality=modality)
    out = Path(output) if output is not None else default_output_path(slide_path)
    _check_output(slide_path, out, overwrite=overwrite)
    info = resolve_model(model, modality=slide.modality)
    n_cpu = os.cpu_count() or 1
    workers = max(1, int(workers or n_cpu))
    local = isinstance(scheduler, str)
    if local:
        _resolve_client(scheduler)  # a bad name fails here, before any work
    # On a cluster the session is checked on the workers: this process may have no GPU.
    plan = plan_refocus(
        slide, info, device=device, tile=tile, halo=halo, overlap=overlap, batch=batch,
        parallel=workers, threads_per_task=max(1, n_cpu // workers), skip=skip, check_session=local, scale=scale,
        background=background,
    )
    out_mpp = _output_mpp(slide, plan)

    with OutputLock(out):
        if out.exists() and not overwrite:  # finished by another job meanwhile
            raise OutputExistsError(f"output {out} exists; pass --overwrite to replace it")
        _remove_stale_temporaries(out)
        checksum = Checksum(slide_path)  # streams in the background
        identity = input_identity(slide_path)

        client, scheduler_name = _resolve_client(scheduler)
        infer_resources = None
        scheduler_info: dict[str, object] = {"kind": scheduler_name}
        if client is None:
            provider = active_provider(plan.spec)
            scheduler_info["workers"] = workers
        else:
            scheduler_info.update(clusters.describe(client))
            spec = SessionSpec(plan.spec.model_path, plan.spec.device, clusters.threads_per_task(client))
            plan = dataclasses.replace(plan, spec=spec)
            if device != "cpu" and clusters.gpu_resources(client):
                infer_resources = {"GPU": 1}
            clusters.register_session(client, plan.spec)  # one session per worker, checked there
            provider = client.submit(active_provider, plan.spec, pure=False, resources=infer_resources).result()
            if provider != "CUDAExecutionProvider":
                infer_resources = None

        nby, nbx = plan.block_grid
        total = plan.grid.n_windows
        shapes = pyramid_shapes(plan.shape[:2])
        cy, cx, cc = plan.chunks
        arrays = [("0", plan.shape, plan.chunks, slide.dtype)] + [
            (str(k), (*shapes[k], cc), (max(1, cy >> k), max(1, cx >> k), cc), slide.dtype)
            # Tiny chunks make zarr slow: deeper levels come from build_pyramid.
            for k in range(1, min(len(shapes), plan.block_local_levels + 1))
            if min(cy, cx) >> k >= 128
        ]
        fingerprint = {
            "format": 1, "version": __version__, "input": identity, "model_sha256": info.sha256,
            "provider": provider, "level": plan.level, "shape": plan.shape, "dtype": np.dtype(slide.dtype).str,
            "tile": plan.grid.tile, "halo": plan.grid.halo, "overlap": plan.grid.overlap, "batch": plan.batch,
            "model_channels": plan.model_channels, "stats": json.loads(plan.stats.to_json()),
            "skip": mask_digest(plan.skip), "scale": [plan.scale.action, plan.scale.level, plan.scale.factor],
            "arrays": [[n, list(s), list(c)] for n, s, c, _ in arrays],
        }
        scratch = open_scratch(scratch_path(out), fingerprint, arrays, resume=resume)
        timings["prepare"] = time.perf_counter() - t0
        log.info("%s: %d windows of %d px (halo %d, overlap %d) with %s on %s%s", slide_path,
                 plan.grid.n_windows, plan.grid.tile, plan.grid.halo, plan.grid.overlap, info.name, provider,
                 f"; resuming, {len(scratch.done)} of {nby * nbx} blocks done" if scratch.done else "")
        crash_point("prepared")

        done_blocks = scratch.done
        done_count = sum(plan.windows_in_block(by, bx) for by, bx in done_blocks)
        stored = len(done_blocks)
        if progress is not None and done_count:
            progress(done_count, total)

        def on_block(n: int) -> None:
            nonlocal done_count, stored
            done_count += n
            stored += 1
            if progress is not None:
                progress(done_count, total)
            crash_point("blocks", stored)

        t1 = time.perf_counter()
        store_to_zarr(plan, scratch.base, reduced=scratch.reduced, done=scratch.is_done, mark=scratch.markers,
                      scheduler=client or scheduler_name, num_workers=workers, progress=on_block,
                      infer_resources=infer_resources)
        for array in scratch.reduced:  # build_pyramid reuses complete levels
            array.attrs["complete"] = True
        timings["refocus"] = time.perf_counter() - t1
        crash_point("stored")

        t2 = time.perf_counter()
        bands = 0

        def on_band(level: int, rows: int) -> None:
            nonlocal bands
            bands += 1
            crash_point("pyramid", bands)

        levels = build_pyramid(scratch.base, scratch.group, progress=on_band)
        timings["pyramid"] = time.perf_counter() - t2

        sha256, timings["checksum"] = checksum.result()
        parameters = {
            "tile": plan.grid.tile, "halo": plan.grid.halo, "overlap": plan.grid.overlap, "batch": plan.batch,
            "device": device, "modality": slide.modality.value, "level": plan.scale.level,
            "jpeg_quality": jpeg_quality, "compression": compression,
            "skipped_windows": int(np.count_nonzero(plan.skip)) if plan.skip is not None else 0,
            "workers": workers if client is None else scheduler_info.get("threads"),
            "intra_op_threads": plan.spec.intra_op_threads, "resume": resume, "scale": scale,
            "background": background,
        }
        record = {
            "version": __version__,
            "input": str(slide_path.resolve()),
            "input_format": f"{slide.format} ({slide.backend})",
            "input_size": identity["size"],
            "input_mtime": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(identity["mtime_ns"] / 1e9)),
            "input_sha256": sha256,
            "input_shape": list(slide.shape),
            "input_dtype": np.dtype(slide.dtype).name,
            "model": info.name,
            "model_path": str(info.path),
            "model_sha256": info.sha256,
            "model_card": info.card.as_dict(),
            "provider": provider,
            "parameters": parameters,
            "normalization": json.loads(plan.stats.to_json()),
            "scale": plan.scale.as_dict(),
            "background": plan.background,
            "output_shape": list(plan.shape),
            "output_mpp": list(out_mpp) if out_mpp else None,
            "scheduler": scheduler_info,
            "windows": plan.grid.n_windows,
            "blocks": nby * nbx,
            "resumed_blocks": len(done_blocks),
            "started": started,
            **host_record(),
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        annotations = to_annotations(record)
        rgb = slide.modality is Modality.BRIGHTFIELD and slide.n_channels == 3 and slide.dtype == np.uint8
        associated = {}
        for name, load in slide.associated.items():
            try:
                associated[name] = load()
            except Exception as exc:  # an unreadable label must not sink the slide
                log.warning("%s: associated image %r not carried over: %s", slide_path, name, exc)
        t3 = time.perf_counter()
        tiles_written = 0

        def on_tiles(n: int) -> None:
            nonlocal tiles_written
            tiles_written += n
            crash_point("write", tiles_written)

        write_ome_tiff(
            out, levels, mpp=out_mpp, channel_names=slide.channel_names, rgb=rgb,
            compression=compression, jpeg_quality=jpeg_quality, associated=associated,
            annotations=annotations, name=slide_path.name, overwrite=overwrite, progress=on_tiles,
        )
        timings["write"] = time.perf_counter() - t3
        crash_point("written")
        timings["total"] = time.perf_counter() - t0
        record["timings"] = {k: round(v, 3) for k, v in timings.items()}
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record["output"] = str(out.resolve())
        sidecar = write_sidecar(out, record)
        scratch.remove()  # only now: the output is in place
    log.info("wrote %s in %.1f s", out, timings["total"])
    return RefocusResult(
        output=out, model=info.name, model_sha256=info.sha256, provider=provider,
        windows=plan.grid.n_windows, blocks=nby * nbx, stats=plan.stats, seconds=timings,
        parameters=parameters, resumed_blocks=len(done_blocks), sidecar=sidecar, provenance=record,
    )
