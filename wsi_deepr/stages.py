"""The stages of one refocusing run, in the order :func:`wsi_deepr.api.refocus` runs them.

1. :func:`prepare` — open the slide, check the output path, resolve the
   model or the non-blind method (:func:`choose_method`), and check every
   option against them (channels, the halo against the window size, JPEG for
   a non-RGB slide, the scheduler's name).  Cheap: no
   model session, no lock, no scratch.  Gives a :class:`Job`.
2. the output lock is taken, and :func:`claim` tidies what a killed run of the
   same output left;
3. :func:`connect` — where the model runs: the scheduler or cluster client,
   the ONNX Runtime session (checked here: ``--device cuda`` fails at once),
   the execution provider and the worker resources.  Gives a :class:`Link`;
4. :func:`focus` — the defocus map (:mod:`wsi_deepr.focus`), and with
   ``where="auto"`` the windows it sends to the network: only those defocused
   beyond the model card's ``min_defocus_um`` (a non-blind method also takes
   each window's ``|z|`` from it);
   :func:`plan` — the slide statistics and the windows to pass through, into
   the :class:`~wsi_deepr.tiling.plan.RefocusPlan`;
5. :func:`open_run_scratch` — the resumable scratch store, keyed by its
   fingerprint (:mod:`wsi_deepr.runsafe.resume`);
6. :func:`infer` — the Dask graph computes the refocused level into the scratch
   (:mod:`wsi_deepr.parallel.graph`);
7. :func:`transfer` — when the model ran coarser than the scan, its
   correction upsampled onto the scan's own pixels
   (:mod:`wsi_deepr.imaging.transfer`); :func:`pyramid` — the reduced levels
   (:mod:`wsi_deepr.imaging.pyramid`);
8. :func:`record` — the provenance (:mod:`wsi_deepr.runsafe.provenance`);
9. :func:`write` — the output file (:mod:`wsi_deepr.writers`), then
   :func:`finish`: the sidecar, and the scratch removed; :func:`write_qc`
   (``qc=True``) adds the focus QC report beside the output.

:class:`StageTimer` times the stages; :class:`RunHooks` reports progress and
holds the crash points the kill-9 tests use (``WSI_DEEPR_CRASH_AT``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_deepr.errors import DiskFullError, ModelNotFoundError, OptionError, OutputExistsError
from wsi_deepr.inference.card import ModelInfo
from wsi_deepr.inference.registry import resolve_model
from wsi_deepr.inference.session import SessionSpec, active_provider, get_session, providers_for
from wsi_deepr.options import RefocusOptions
from wsi_deepr.readers import open_slide
from wsi_deepr.readers.slide import Modality, Slide
from wsi_deepr.restore import Deconvolution, Handoff, deconvolution, physics_model
from wsi_deepr.runsafe.provenance import Checksum, provenance_record, sidecar_path, to_annotations, write_sidecar
from wsi_deepr.runsafe.resume import (
    Scratch,
    crash_point,
    open_scratch,
    scratch_arrays,
    scratch_fingerprint,
    scratch_path,
)
from wsi_deepr.tiling.plan import Geometry, RefocusPlan, build_plan, choose_geometry, detects_background, output_mpp
from wsi_deepr.writers.atomic import remove_temporaries
from wsi_deepr.writers.ometiff import check_compression
from wsi_deepr.writers.paths import check_output, check_output_format, default_output_path

__all__ = [
    "LOCAL_SCHEDULERS", "Focus", "Job", "Link", "RunHooks", "StageTimer", "check_scheduler", "claim", "connect",
    "disk_full_is_resumable", "transfer",
    "finish", "focus", "infer", "open_run_scratch", "plan", "prepare", "pyramid", "record", "write", "write_qc",
]

log = logging.getLogger(__name__)

#: what the provenance records as the "provider" of the non-blind method
METHOD_PROVIDER = "numpy (scikit-image)"
#: ``method="auto"``: what refocuses each modality, by ``benchmarks/unseen_eval.py --unseen`` (README,
#: *Refocusing methods*): the brightfield network gains more than deconvolution there; on fluorescence
#: deconvolution with the estimated PSF beats the fluorescence network at every defocus
AUTO_METHOD = {Modality.BRIGHTFIELD: "deepr", Modality.FLUORESCENCE: "deconvolve"}

#: names of Dask's local schedulers accepted for ``scheduler``
LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", "single-threaded")


class StageTimer:
    """Seconds spent in each named stage, counted from the run's start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name``."""
        t = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t

    def since_start(self, name: str) -> None:
        """Record the time from the run's start as ``name`` (``prepare``, ``total``)."""
        self.seconds[name] = time.perf_counter() - self.start


@dataclass
class RunHooks:
    """Progress reports and crash points of one run.

    ``progress(done, total)`` is called in model windows as their output is
    stored (a resumed run starts at the windows already done).  The other
    methods are called by the stages as they advance; each is a crash point
    of :func:`wsi_deepr.runsafe.resume.crash_point`.
    """

    progress: Callable[[int, int], None] | None = None
    total: int = 0
    done: int = 0
    blocks: int = 0
    bands: int = 0
    tiles: int = 0

    def begin(self, *, total: int, done: int, blocks: int) -> None:
        """The run's size and what an earlier run finished."""
        self.total, self.done, self.blocks = total, done, blocks
        if self.progress is not None and done:
            self.progress(done, total)

    def block_stored(self, windows: int) -> None:
        """A block of ``windows`` windows is in the scratch."""
        self.done += windows
        self.blocks += 1
        if self.progress is not None:
            self.progress(self.done, self.total)
        crash_point("blocks", self.blocks)

    def band_reduced(self, level: int, rows: int) -> None:
        """A band of a reduced pyramid level is written."""
        self.bands += 1
        crash_point("pyramid", self.bands)

    def band_transferred(self) -> None:
        """A band of the scan-resolution output is in the scratch."""
        self.bands += 1
        crash_point("transfer", self.bands)

    def tiles_written(self, count: int) -> None:
        """``count`` level-0 tiles of the output file are written."""
        self.tiles += count
        crash_point("write", self.tiles)

    @staticmethod
    def reached(stage: str) -> None:
        """The run reached ``stage`` (``prepared``, ``stored``, ``written``)."""
        crash_point(stage)


@dataclass(frozen=True)
class Job:
    """What :func:`prepare` found: the slide, the output, the model and the geometry."""

    slide_path: Path
    slide: Slide
    output: Path
    model: ModelInfo
    geometry: Geometry
    workers: int
    output_format: str = "ome-tiff"
    #: the non-blind method when it runs instead of a network (``model`` then describes it)
    method: Deconvolution | None = None

    @property
    def rgb(self) -> bool:
        """Whether the output is brightfield RGB (JPEG by default)."""
        return _is_rgb(self.slide)


def _is_rgb(slide: Slide) -> bool:
    """Brightfield, three channels of uint8: written as RGB (JPEG by default; the OpenSlide TIFF needs it)."""
    return slide.modality is Modality.BRIGHTFIELD and slide.n_channels == 3 and np.dtype(slide.dtype) == np.uint8


@dataclass(frozen=True)
class Link:
    """What :func:`connect` set up: where the model runs."""

    client: object | None
    scheduler: str
    session: SessionSpec | Deconvolution  # plan() may wrap a SessionSpec in a Handoff
    provider: str
    resources: dict[str, float] | None
    info: dict = field(default_factory=dict)


def _is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it, also when raised on a Dask worker) is ENOSPC or EDQUOT."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def disk_full_is_resumable(job: Job) -> Iterator[None]:
    """Turn a full disk into one :class:`DiskFullError` naming the folder and the space needed.

    Whatever stage ran out of space (the scratch, the pyramid, the output
    file), the finished blocks stay in the scratch and the atomic writers
    leave nothing at the output path, so the same command resumes once
    space is freed.
    """
    try:
        yield
    except Exception as exc:
        if not _is_disk_full(exc):
            raise
        folder = job.output.parent
        free = shutil.disk_usage(folder).free
        need = _bytes_needed(job)
        raise DiskFullError(
            f"no space left in {folder} ({free / 2**20:.0f} MiB free; this slide needs up to "
            f"{need / 2**20:.0f} MiB there for its scratch and output): free space or choose another -o, then "
            f"run the same command again to resume from the blocks already done") from exc


def _bytes_needed(job: Job) -> int:
    """Upper bound of what a run writes beside the output: scratch pyramid plus output, uncompressed."""
    h, w = job.geometry.grid.shape
    level = h * w * job.slide.n_channels * np.dtype(job.slide.dtype).itemsize
    return int(2 * level * 4 / 3)


def check_scheduler(scheduler: object) -> None:
    """Raise :class:`OptionError` unless ``scheduler`` is a local scheduler name, a client or a client factory."""
    if isinstance(scheduler, str):
        if scheduler not in LOCAL_SCHEDULERS:
            raise OptionError(f"scheduler must be 'threads', 'sync', a distributed.Client or a callable "
                              f"returning one, got {scheduler!r}")
    elif not (callable(scheduler) or (hasattr(scheduler, "get") and hasattr(scheduler, "dashboard_link"))):
        raise OptionError(f"scheduler must be 'threads', 'sync', a distributed.Client or a callable, "
                          f"got {scheduler!r}")


def prepare(slide_path: str | os.PathLike, output: str | os.PathLike | None, options: RefocusOptions, *,
            scheduler: object = "threads") -> Job:
    """Open the slide, check the output and every option against the slide and the model.

    Raises
    ------
    WsiDeeprError
        Bad input, output or model (the subclass says which), or an option
        the slide or model rules out.
    OptionError
        A bad scheduler.
    """
    slide_path = Path(slide_path)
    slide = open_slide(slide_path, modality=options.modality)
    out = Path(output) if output is not None else default_output_path(slide_path, options.output_format)
    check_output(out, overwrite=options.overwrite, source=slide_path)
    model, method = choose_method(options, slide)
    check_scheduler(scheduler)
    providers_for(options.device)  # no CUDA provider at all: fails here, before any lock
    detects_background(options.background, slide)
    workers = max(1, int(options.workers or os.cpu_count() or 1))
    geometry = choose_geometry(slide, model, device=options.device, tile=options.tile, halo=options.halo,
                               overlap=options.overlap, batch=options.batch, parallel=workers, scale=options.scale)
    rgb = _is_rgb(slide)
    fmt = check_output_format(out, options.output_format, rgb=rgb)
    if fmt != "ome-zarr":
        check_compression(options.compression, rgb=rgb, quality=options.jpeg_quality)
    return Job(slide_path, slide, out, model, geometry, workers, fmt, method)


def choose_method(options: RefocusOptions, slide: Slide) -> tuple[ModelInfo, Deconvolution | None]:
    """The network (``method=None``) or the non-blind method that refocuses ``slide``, with its card.

    ``auto`` takes :data:`AUTO_METHOD` of the slide's modality, the method
    that measured best on unseen sources (README, *Refocusing methods*); the
    network falls back to deconvolution when no default network of the
    modality is installed.  ``--model`` always runs that network.
    """
    if options.model is not None:
        return resolve_model(options.model, modality=slide.modality), None
    method = AUTO_METHOD[slide.modality] if options.method == "auto" else options.method
    if method == "deepr":
        try:
            return resolve_model(None, modality=slide.modality), None
        except ModelNotFoundError as exc:
            if options.method == "deepr":
                raise
            log.info("no default %s network (%s): refocusing by deconvolution with the estimated PSF",
                     slide.modality.value, str(exc).split(";")[0])
    mpp = None if slide.mpp is None else float(np.mean(slide.mpp))
    return physics_model(slide.modality, n_channels=slide.n_channels, mpp=mpp)


def claim(job: Job, options: RefocusOptions) -> None:
    """Under the output's lock: stop if another job finished it meanwhile; drop a killed run's temporaries."""
    if job.output.exists() and not options.overwrite:
        raise OutputExistsError(f"output {job.output} exists; pass --overwrite to replace it")
    for tmp in remove_temporaries(job.output) + remove_temporaries(sidecar_path(job.output)):
        log.info("removed %s left by an interrupted run", tmp)


def connect(job: Job, options: RefocusOptions, scheduler: object) -> Link:
    """Start (or attach to) the scheduler and the model session; find the provider and resources."""
    from wsi_deepr.parallel import cluster as clusters

    model_path = str(job.model.path)
    if job.method is not None:  # numpy and scikit-image: no session, no provider, no GPU
        if isinstance(scheduler, str):
            return Link(None, scheduler, job.method, METHOD_PROVIDER, None, {"kind": scheduler, "workers": job.workers})
        client = scheduler if hasattr(scheduler, "dashboard_link") else scheduler()
        return Link(client, "distributed", job.method, METHOD_PROVIDER, None,
                    {"kind": "distributed", **clusters.describe(client)})
    if isinstance(scheduler, str):
        session = SessionSpec(model_path, options.device, max(1, (os.cpu_count() or 1) // job.workers))
        get_session(session)  # fail fast: the provider starts, the model loads
        return Link(None, scheduler, session, active_provider(session), None,
                    {"kind": scheduler, "workers": job.workers})
    client = scheduler if hasattr(scheduler, "dashboard_link") else scheduler()  # a lazy client factory
    info = {"kind": "distributed", **clusters.describe(client)}
    session = SessionSpec(model_path, options.device, clusters.threads_per_task(client))
    resources = {"GPU": 1} if options.device != "cpu" and clusters.gpu_resources(client) else None
    clusters.register_session(client, session)  # one session per worker, checked there
    provider = client.submit(active_provider, session, pure=False, resources=resources).result()
    if provider != "CUDAExecutionProvider":
        resources = None
    return Link(client, "distributed", session, provider, resources, info)


@dataclass(frozen=True)
class Focus:
    """The defocus map of the slide and, when it decides, the windows it sends to the network."""

    dmap: object
    selection: object | None


def focus(job: Job, options: RefocusOptions) -> Focus | None:
    """Estimate the defocus map when it is used, and with it the windows to refocus.

    It is used with ``where="auto"`` and a card threshold, with ``qc``, and
    always by a non-blind method, which needs every window's ``|z|`` (with
    ``where="all"`` it deconvolves every window that has an estimate).
    """
    threshold = job.model.card.min_defocus_um
    if job.method is not None:
        threshold = threshold if options.where == "auto" else 0.0
    selects = (options.where == "auto" or job.method is not None) and threshold is not None
    if options.where == "auto" and threshold is None:
        log.info("model %s has no min_defocus_um in its card: the network runs on every window", job.model.name)
    if not (selects or options.qc):
        return None
    from wsi_deepr.focus.map import defocus_map
    from wsi_deepr.focus.select import select_windows

    dmap = defocus_map(job.slide)
    log.info("defocus map of %s: %d regions in %.1f s (%s)", job.slide_path, dmap.defocus_um.size, dmap.seconds,
             dmap.method)
    selection = (select_windows(dmap, job.geometry.grid, level0_shape=job.slide.level_shapes[0][:2],
                                threshold_um=threshold,
                                min_confidence=job.model.card.min_confidence if options.where == "auto" else 0.0)
                 if selects else None)
    return Focus(dmap, selection)


def plan(job: Job, link: Link, options: RefocusOptions, *, skip: np.ndarray | None = None,
         focus: Focus | None = None) -> RefocusPlan:
    """The slide statistics and the windows passed through, with the session: the run's plan."""
    selection = None if focus is None else focus.selection
    session, defocus = link.session, None
    if selection is not None and job.method is not None:
        defocus = selection.window_median_um
    elif selection is not None and (handoff := _handoff(job, link.session)) is not None:
        session, defocus = handoff, selection.window_median_um
    return build_plan(job.slide, job.model, job.geometry, session=session, skip=skip,
                      background=options.background,
                      refocus=None if selection is None else selection.refocus,
                      focus=None if selection is None else selection.to_dict(), defocus=defocus)


def _handoff(job: Job, session: SessionSpec) -> Handoff | None:
    """The network with its card's physics: deconvolution past ``deconvolve_beyond_um`` (``range`` cards
    only: Richardson-Lucy needs intensities), the data-consistency fit up to ``consistency_max_step`` (any
    affine normalisation: blur commutes with it)."""
    beyond, step = job.model.card.deconvolve_beyond_um, job.model.card.consistency_max_step
    if beyond is not None and job.model.card.normalization != "range":
        log.warning("model %s: deconvolve_beyond_um needs a 'range' normalisation (intensities); its card has %r, "
                    "so the network runs on every window the map sends on", job.model.name,
                    job.model.card.normalization)
        beyond = None
    if beyond is None and step is None:
        return None
    level0 = None if job.slide.mpp is None else float(np.mean(job.slide.mpp))
    processing = output_mpp(job.slide, job.geometry.scale)
    iterations, rate, shrink = deconvolution.HANDOFF_RL_SETTING
    _, physics = physics_model(job.slide.modality, n_channels=job.slide.n_channels, mpp=level0,
                               pixel_size_um=None if processing is None else float(np.mean(processing)),
                               iterations=iterations, iterations_per_um=rate, shrink=shrink)
    return Handoff(session, physics, math.inf if beyond is None else beyond, step)


def open_run_scratch(job: Job, plan: RefocusPlan, link: Link, options: RefocusOptions, *,
                     identity: dict) -> Scratch:
    """The scratch store of this output, resumed when its fingerprint matches (and ``options.resume``)."""
    arrays = scratch_arrays(plan, job.slide.dtype)
    fingerprint = scratch_fingerprint(plan, identity=identity, model_sha256=job.model.sha256,
                                      provider=link.provider, dtype=job.slide.dtype, arrays=arrays)
    scratch = open_scratch(scratch_path(job.output), fingerprint, arrays, resume=options.resume)
    nby, nbx = plan.block_grid
    log.info("%s: %d windows of %d px (halo %d, overlap %d) with %s on %s%s", job.slide_path,
             plan.grid.n_windows, plan.grid.tile, plan.grid.halo, plan.grid.overlap, job.model.name,
             link.provider, f"; resuming, {len(scratch.done)} of {nby * nbx} blocks done" if scratch.done else "")
    return scratch


def infer(plan: RefocusPlan, scratch: Scratch, link: Link, hooks: RunHooks, *, workers: int) -> None:
    """Compute every block not done yet into the scratch; mark the reduced levels complete."""
    from wsi_deepr.parallel.graph import store_to_zarr

    done = sum(plan.windows_in_block(by, bx) for by, bx in scratch.done)
    hooks.begin(total=plan.grid.n_windows, done=done, blocks=len(scratch.done))
    store_to_zarr(plan, scratch.base, reduced=scratch.reduced, done=scratch.is_done, mark=scratch.markers,
                  scheduler=link.client or link.scheduler, num_workers=workers, progress=hooks.block_stored,
                  infer_resources=link.resources)
    for array in scratch.reduced:  # build_pyramid reuses complete levels
        array.attrs["complete"] = True


def transfer(job: Job, plan: RefocusPlan, scratch: Scratch, options: RefocusOptions, hooks: RunHooks,
             *, tile: int = 512, width: int = 4096):
    """The scan-resolution output, when the model ran at a coarser pixel size (else ``None``).

    Streams ``tile``-row by ``width``-column pieces of the slide's level 0
    through :func:`wsi_deepr.imaging.transfer.transfer_band` into the
    scratch array ``native`` (reused when a killed run completed it).
    """
    if options.output_scale != "native" or plan.scale.action == "native":
        return None
    import zarr

    from wsi_deepr.imaging.transfer import native_coordinates, transfer_band

    h0, w0, c = job.slide.level_shapes[0]
    hp, wp = plan.shape[:2]
    done = scratch.group.get("native")
    if isinstance(done, zarr.Array) and done.attrs.get("complete") is True and tuple(done.shape) == (h0, w0, c):
        return done
    dst = scratch.group.create_array("native", shape=(h0, w0, c), chunks=(tile, tile, c), dtype=job.slide.dtype,
                                     compressors=zarr.codecs.ZstdCodec(level=1), overwrite=True)
    rows_all, cols_all = native_coordinates(h0, hp), native_coordinates(w0, wp)
    for y0 in range(0, h0, tile):
        rows = rows_all[y0:y0 + tile]
        p0, p1 = int(rows[0]), min(hp - 1, int(rows[-1]) + 1)
        for x0 in range(0, w0, width):
            cols = cols_all[x0:x0 + width]
            q0, q1 = int(cols[0]), min(wp - 1, int(cols[-1]) + 1)
            dst[y0:y0 + len(rows), x0:x0 + len(cols)] = transfer_band(
                job.slide.read_region(0, y0, x0, y0 + len(rows), x0 + len(cols)),
                plan.reader.read(plan.level, p0, q0, p1 + 1, q1 + 1), scratch.base[p0:p1 + 1, q0:q1 + 1],
                rows, cols - q0, first_row=p0, last_row=hp - 1)
        hooks.band_transferred()
    dst.attrs["complete"] = True
    log.info("output at the scan's own pixel size: the correction made at %s µm/px upsampled onto %s",
             plan.scale.processing_mpp, job.slide_path)
    return dst


def pyramid(scratch: Scratch, hooks: RunHooks, *, base=None) -> list:
    """All pyramid levels, the deeper ones built from the scratch in bands.

    ``base``: the scan-resolution level 0 from :func:`transfer` (its levels
    are named ``n1``, ``n2``, ... in the scratch), else the refocused level.
    """
    from wsi_deepr.imaging.pyramid import build_pyramid

    if base is not None:
        return build_pyramid(base, scratch.group, prefix="n", progress=hooks.band_reduced)
    return build_pyramid(scratch.base, scratch.group, progress=hooks.band_reduced)


def parameters(job: Job, plan: RefocusPlan, link: Link, options: RefocusOptions) -> dict:
    """The run's parameters as recorded in the provenance and the result."""
    return {
        "tile": plan.grid.tile, "halo": plan.grid.halo, "overlap": plan.grid.overlap, "batch": plan.batch,
        "device": options.device, "modality": job.slide.modality.value, "level": plan.scale.level,
        "jpeg_quality": options.jpeg_quality, "compression": options.compression,
        "skipped_windows": int(np.count_nonzero(plan.skip)) if plan.skip is not None else 0,
        "workers": job.workers if link.client is None else link.info.get("threads"),
        "intra_op_threads": getattr(plan.session, "intra_op_threads", None), "resume": options.resume,
        "scale": options.scale, "background": options.background,
        "method": "deepr" if job.method is None else "deconvolve",
        **({} if job.method is None else {"deconvolution": job.method.to_dict()}),
        **({"handoff": plan.session.to_dict()} if isinstance(plan.session, Handoff) else {}),
    }


def record(job: Job, plan: RefocusPlan, link: Link, options: RefocusOptions, *, identity: dict,
           checksum: Checksum, scratch: Scratch, started: str, timer: StageTimer, native: bool = False) -> dict:
    """The provenance record (the input's SHA-256 is awaited here).

    ``native``: the output is at the scan's own pixel size (:func:`transfer`),
    recorded under ``output_scale``.
    """
    sha256, timer.seconds["checksum"] = checksum.result()
    provenance = provenance_record(
        slide=job.slide, slide_path=job.slide_path, identity=identity, sha256=sha256, model=job.model,
        provider=link.provider, parameters=parameters(job, plan, link, options), plan=plan,
        output_mpp=output_mpp(job.slide, None if native else plan.scale), scheduler=link.info,
        resumed_blocks=len(scratch.done), started=started, timings=timer.seconds,
    )
    if native:
        provenance["output_shape"] = list(job.slide.shape)
        provenance["output_scale"] = {
            "scale": "native", "processing_mpp": plan.scale.processing_mpp, "processing_shape": list(plan.shape),
            "method": "residual (refocused - model input) at the processing pixel size, bilinearly upsampled "
                      "and added to the scan's own pixels"}
    return provenance


def write(job: Job, levels: list, provenance: dict, options: RefocusOptions, hooks: RunHooks) -> None:
    """The output file in its format, with the associated images and the provenance inside it.

    OME-TIFF (:mod:`wsi_deepr.writers.ometiff`), OpenSlide-readable TIFF
    (:mod:`wsi_deepr.writers.generic_tiff`) or OME-Zarr
    (:mod:`wsi_deepr.writers.omezarr`, which keeps no associated images).
    """
    mpp = provenance["output_mpp"]
    common = {"mpp": tuple(mpp) if mpp else None, "channel_names": job.slide.channel_names, "rgb": job.rgb,
              "annotations": to_annotations(_without_map(provenance)), "overwrite": options.overwrite,
              "progress": hooks.tiles_written}
    if job.output_format == "ome-zarr":
        from wsi_deepr.writers.omezarr import write_ome_zarr

        write_ome_zarr(job.output, levels, **common)
        return
    pixels = {"compression": options.compression, "jpeg_quality": options.jpeg_quality,
              "associated": _associated(job)}
    if job.output_format == "tiff":
        from wsi_deepr.writers.generic_tiff import write_tiled_tiff

        write_tiled_tiff(job.output, levels, **common, **pixels)
    else:
        from wsi_deepr.writers.ometiff import write_ome_tiff

        write_ome_tiff(job.output, levels, name=job.slide_path.name, **common, **pixels)


def _without_map(provenance: dict) -> dict:
    """The record for the file's own metadata: the per-region defocus map stays in the sidecar only."""
    if not provenance.get("focus"):
        return provenance
    short = {k: v for k, v in provenance["focus"]["map"].items() if k != "regions"}
    return {**provenance, "focus": {**provenance["focus"], "map": short}}


def write_qc(job: Job, focus: Focus) -> None:
    """The focus QC report of the input beside the output, with before/after crops of the worst regions."""
    from wsi_deepr.focus.report import write_qc as write_report
    from wsi_deepr.writers.paths import image_stem

    refocused = open_slide(job.output) if job.output_format != "ome-zarr" else None
    paths = write_report(job.slide, focus.dmap, job.output.parent, stem=image_stem(job.output),
                         refocused=refocused)
    log.info("focus QC report: %s", paths.html)


def _associated(job: Job) -> dict[str, np.ndarray]:
    """The slide's label, macro and thumbnail images that can be read."""
    associated = {}
    for name, load in job.slide.associated.items():
        try:
            associated[name] = load()
        except Exception as exc:  # an unreadable label must not sink the slide
            log.warning("%s: associated image %r not carried over: %s", job.slide_path, name, exc)
    return associated


def finish(job: Job, provenance: dict, scratch: Scratch, timer: StageTimer) -> Path:
    """Complete the record (timings, finish time, output), write the sidecar, remove the scratch."""
    from wsi_deepr.runsafe.provenance import stamp

    timer.since_start("total")
    provenance["timings"] = {k: round(v, 3) for k, v in timer.seconds.items()}
    provenance["finished"] = stamp()
    provenance["output"] = str(job.output.resolve())
    sidecar = write_sidecar(job.output, provenance)
    scratch.remove()  # only now: the output is in place
    return sidecar
