"""``wsi-deepr refocus SLIDE``."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_deepr.cli.common import (
    ProgressBar,
    cluster_options,
    configure_logging,
    handle_errors,
    limit_malloc_arenas,
    make_scheduler,
    options_from,
    refocus_options,
    verbosity_options,
)


@click.command()
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file: .ome.tif (OME-TIFF), .tif (OpenSlide-readable TIFF) or .ome.zarr (OME-Zarr) "
                   "[default: <stem>.refocused.ome.tif beside SLIDE].")
@refocus_options
@cluster_options
@verbosity_options
@handle_errors
def refocus(slide: Path, output: Path | None, scheduler: str, workers: int | None, threads_per_worker: int | None,
            dashboard_address: str, verbose: int, quiet: bool, **params) -> None:
    """Refocus SLIDE into a pyramidal OME-TIFF (or a TIFF, or OME-Zarr: see -o and --format).

    Runs on a Dask LocalCluster by default (its dashboard link is printed).
    An interrupted run resumes where it stopped when run again; a lock file
    keeps two jobs from writing the same output.
    """
    configure_logging(verbose, quiet)
    limit_malloc_arenas()
    from wsi_deepr.api import refocus_with

    options = options_from(params)
    target, cluster = make_scheduler(scheduler, workers=workers, threads_per_worker=threads_per_worker,
                                     dashboard_address=dashboard_address, device=options.device, verbose=verbose,
                                     quiet=quiet)
    options = options.replace(workers=workers if cluster is None else None)
    bar = ProgressBar(quiet=quiet)
    try:
        result = refocus_with(slide, output, options, scheduler=target, progress=bar)
    finally:
        bar.close()
        if cluster is not None:
            cluster.close()
    if not quiet:
        secs = result.seconds
        resumed = f", {result.resumed_blocks} of {result.blocks} blocks resumed" if result.resumed_blocks else ""
        click.echo(
            f"{result.output}  ({result.windows} windows, model {result.model} on {result.provider}, "
            f"{secs['total']:.1f} s: refocus {secs.get('refocus', 0):.1f} s, pyramid "
            f"{secs.get('pyramid', 0):.1f} s, write {secs.get('write', 0):.1f} s{resumed})"
        )
