"""The Python API: ``refocus`` a slide into a pyramidal OME-TIFF.

Notebooks, pipelines and the CLI all call :func:`refocus`.  It reads as the
pipeline it runs: the options are validated first; :func:`wsi_deepr.stages.prepare`
then checks the input, the output path, the model and every option against
them, so that a bad call fails in about a second with a message that names
the culprit and leaves no file behind; only then is the output locked and the
expensive part run, stage by stage (:mod:`wsi_deepr.stages`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_deepr import stages
from wsi_deepr.inference.normalization import NormStats
from wsi_deepr.options import RefocusOptions
from wsi_deepr.runsafe.lock import OutputLock
from wsi_deepr.runsafe.provenance import Checksum, stamp
from wsi_deepr.runsafe.resume import input_identity

__all__ = ["RefocusResult", "refocus", "refocus_with"]

log = logging.getLogger(__name__)


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
    #: the defocus map's QC summary (:func:`wsi_deepr.focus.report.summary`) when it was estimated
    focus: dict | None = None


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
    output_format: str = "auto",
    where: str = "auto",
    qc: bool = False,
    output_scale: str = "native",
    method: str = "auto",
) -> RefocusResult:
    """Refocus a whole slide and write a pyramidal OME-TIFF (or TIFF, or OME-Zarr).

    The run is resumable and exclusive: while it runs, ``.<output>.lock``
    beside the output keeps other jobs off it; finished blocks are kept in
    ``.<output>.scratch.zarr`` beside the output, and a rerun after a crash
    or a kill reuses them (see :mod:`wsi_deepr.runsafe.resume`).  The scratch is
    removed once the OME-TIFF is in place.  Provenance goes into the OME-XML
    and into ``<output>.json`` (see :mod:`wsi_deepr.runsafe.provenance`).

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
        (:func:`wsi_deepr.tiling.geometry.choose_tile`: the halo of every window is
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
        Windows per inference task; default
        :func:`wsi_deepr.tiling.plan.default_batch`: 2 windows of 512 px on
        the CPU, 8 on CUDA, and as many pixels per task for larger windows
        (at least one window).  On the CPU, ONNX Runtime gets at most
        :data:`wsi_deepr.inference.session.CPU_PIXELS_PER_CALL` pixels per call.
    workers : int, optional
        Parallel inference tasks on the local threaded scheduler (default:
        CPU count); with a distributed client, the cluster's threads.
    scheduler : "threads", "sync", distributed.Client or callable
        Where the task graph runs; a callable (e.g.
        :class:`wsi_deepr.parallel.cluster.ClusterClient`) is called for the client
        only once the checks have passed.  With a client, each worker holds
        one ONNX Runtime session (:class:`wsi_deepr.parallel.cluster.SessionPlugin`)
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
        was done is in the provenance (``scale``); see :mod:`wsi_deepr.tiling.scale`.
    background : {"auto", "skip", "process"}
        ``"skip"`` passes windows of blank glass through unchanged (tissue
        found by optical density on a thumbnail, see
        :mod:`wsi_deepr.tiling.background`); ``"process"`` refocuses every window;
        ``"auto"`` (default) skips on brightfield slides and processes
        fluorescence.  What was found is in the provenance (``background``).
    progress : callable, optional
        ``progress(done, total)`` in model windows (tiles), called as their
        output is written (a resumed run starts at the windows already done).
    output_format : {"auto", "ome-tiff", "tiff", "ome-zarr"}
        ``"auto"`` (default): by the output's suffix (``.ome.tif``, ``.tif``,
        ``.ome.zarr``; an OME-TIFF when no output is given).  ``"tiff"`` is
        an OpenSlide-readable tiled TIFF (brightfield RGB only);
        ``"ome-zarr"`` an NGFF 0.4 multiscale image
        (:mod:`wsi_deepr.writers.paths`).
    where : {"auto", "all"}
        ``"auto"`` (default): estimate the slide's defocus map and run the
        network only on windows defocused by at least the model card's
        ``min_defocus_um`` (the others are passed through bit for bit,
        feathered into their refocused neighbours); a card without that key
        runs every window.  ``"all"``: every window with tissue.  The map,
        the threshold and the counts are in the provenance (``focus``).
    output_scale : {"native", "processing"}
        When ``scale="auto"`` runs the model at a coarser pixel size than
        the scan's (a 40× slide and a 20× model): ``"native"`` (default)
        returns the scan at its own pixel size, the model's correction
        upsampled onto its pixels (:mod:`wsi_deepr.imaging.transfer`);
        ``"processing"`` returns the coarser image the model made.
    method : {"auto", "deepr", "deconvolve"}
        ``"deepr"``: the network (``model`` or the modality's default).
        ``"deconvolve"``: Richardson-Lucy with the defocus PSF the defocus
        map estimates per window (:mod:`wsi_deepr.restore`), at the scan's
        pixel size.  ``"auto"``: the method measured best for the slide's
        modality (:data:`wsi_deepr.stages.AUTO_METHOD`: the network for
        brightfield, deconvolution for fluorescence).  ``model`` always runs
        that network.
    qc : bool
        Also write the focus QC report (``<stem>.focus.json/.png/.html``)
        beside the output, with before/after crops of the worst regions.

    Returns
    -------
    RefocusResult

    Raises
    ------
    OptionError
        A bad option (checked before anything is read).
    OutputLockedError
        Another live job is writing the same output.
    WsiDeeprError
        Bad input, model or output (the subclass says which).
    """
    options = RefocusOptions(model=model, method=method, modality=modality, device=device, tile=tile, halo=halo, overlap=overlap,
                             batch=batch, workers=workers, overwrite=overwrite, jpeg_quality=jpeg_quality,
                             compression=compression, resume=resume, scale=scale, background=background,
                             output_format=output_format, where=where, qc=qc, output_scale=output_scale)
    return refocus_with(slide_path, output, options, scheduler=scheduler, skip=skip, progress=progress)


def refocus_with(slide_path: str | os.PathLike, output: str | os.PathLike | None, options: RefocusOptions, *,
                 scheduler: str | object = "threads", skip: np.ndarray | None = None,
                 progress: Callable[[int, int], None] | None = None) -> RefocusResult:
    """:func:`refocus` with its options given as one :class:`~wsi_deepr.options.RefocusOptions`.

    The CLI and :func:`wsi_deepr.batch.run_batch` call this; the stages are
    those of :mod:`wsi_deepr.stages`, in order.
    """
    timer, hooks, started = stages.StageTimer(), stages.RunHooks(progress), stamp()
    job = stages.prepare(slide_path, output, options, scheduler=scheduler)
    with OutputLock(job.output), stages.disk_full_is_resumable(job):
        stages.claim(job, options)
        checksum = Checksum(job.slide_path)  # streams in the background
        identity = input_identity(job.slide_path)
        link = stages.connect(job, options, scheduler)
        focus = stages.focus(job, options)
        plan = stages.plan(job, link, options, skip=skip, focus=focus)
        scratch = stages.open_run_scratch(job, plan, link, options, identity=identity)
        timer.since_start("prepare")
        hooks.reached("prepared")
        with timer.stage("refocus"):
            stages.infer(plan, scratch, link, hooks, workers=job.workers)
        hooks.reached("stored")
        with timer.stage("transfer"):
            native = stages.transfer(job, plan, scratch, options, hooks)
        with timer.stage("pyramid"):
            levels = stages.pyramid(scratch, hooks, base=native)
        provenance = stages.record(job, plan, link, options, identity=identity, checksum=checksum,
                                   scratch=scratch, started=started, timer=timer, native=native is not None)
        with timer.stage("write"):
            stages.write(job, levels, provenance, options, hooks)
        hooks.reached("written")
        if options.qc and focus is not None:
            stages.write_qc(job, focus)
        sidecar = stages.finish(job, provenance, scratch, timer)
    log.info("wrote %s in %.1f s", job.output, timer.seconds["total"])
    nby, nbx = plan.block_grid
    return RefocusResult(
        output=job.output, model=job.model.name, model_sha256=job.model.sha256, provider=link.provider,
        windows=plan.grid.n_windows, blocks=nby * nbx, stats=plan.stats, seconds=timer.seconds,
        parameters=provenance["parameters"], resumed_blocks=len(scratch.done), sidecar=sidecar,
        provenance=provenance, focus=None if focus is None else _focus_summary(focus),
    )


def _focus_summary(focus: stages.Focus) -> dict:
    """The QC summary of the run's defocus map (for batch reports)."""
    from wsi_deepr.focus.report import summary

    return summary(focus.dmap)
