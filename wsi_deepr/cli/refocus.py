"""``wsi-deepr refocus SLIDE``."""

from __future__ import annotations

from pathlib import Path

import click

from .common import configure_logging, handle_errors, limit_malloc_arenas, verbosity_options


@click.command()
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output OME-TIFF [default: <stem>.refocused.ome.tif beside SLIDE].")
@click.option("--model", default=None, metavar="NAME|PATH",
              help="Installed model name or .onnx path [default: the default model for the modality].")
@click.option("--modality", type=click.Choice(["auto", "brightfield", "fluorescence"]), default="auto",
              show_default=True, help="Override the detected modality.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="ONNX Runtime execution provider; 'cuda' fails if CUDA is not usable.")
@click.option("--tile", type=click.IntRange(min=16), default=512, show_default=True,
              help="Model window size in pixels.")
@click.option("--halo", type=click.IntRange(min=0), default=None,
              help="Context pixels cropped from each window side [default: from the model card].")
@click.option("--overlap", type=click.IntRange(min=0), default=None,
              help="Feathered overlap between windows [default: the halo].")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Windows per ONNX Runtime call [default: 2 on CPU, 8 on CUDA].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Parallel inference tasks on this machine [default: CPU count].")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Address of a running Dask scheduler (tcp://host:8786) to run on.")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="JPEG quality of brightfield RGB output.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@verbosity_options
@handle_errors
def refocus(slide: Path, output: Path | None, model: str | None, modality: str, device: str, tile: int,
            halo: int | None, overlap: int | None, batch: int | None, workers: int | None, scheduler: str | None,
            jpeg_quality: int, overwrite: bool, verbose: int, quiet: bool) -> None:
    """Refocus SLIDE into a pyramidal OME-TIFF."""
    configure_logging(verbose, quiet)
    limit_malloc_arenas()
    from ..api import refocus as run_refocus

    client = None
    if scheduler:
        from distributed import Client

        client = Client(scheduler)
        click.echo(f"Dask dashboard: {client.dashboard_link}", err=True)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="tile", desc="refocus", dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        result = run_refocus(
            slide, output, model=model, modality=modality, device=device, tile=tile, halo=halo,
            overlap=overlap, batch=batch, workers=workers, scheduler=client or "threads",
            overwrite=overwrite, jpeg_quality=jpeg_quality, progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
    if not quiet:
        secs = result.seconds
        click.echo(
            f"{result.output}  ({result.windows} windows, model {result.model} on {result.provider}, "
            f"{secs['total']:.1f} s: refocus {secs.get('refocus', 0):.1f} s, pyramid "
            f"{secs.get('pyramid', 0):.1f} s, write {secs.get('write', 0):.1f} s)"
        )
