"""``wsi-deepr batch INPUTS... | --manifest FILE.csv --output-dir DIR``."""

from __future__ import annotations

import sys
import time
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

#: exit status when at least one slide failed
EXIT_FAILED = 1


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="CSV with a column 'input' (optional: output, model, modality, scale, background), "
                   "one slide a row.")
@click.option("--output-dir", type=click.Path(path_type=Path), required=True,
              help="Folder of the outputs (created if missing) and of the report.")
@click.option("--recursive", is_flag=True, help="Look for slides in the subfolders of folder INPUTS too.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Report path without suffix; .csv and .json are written "
                   "[default: OUTPUT_DIR/wsi-deepr-batch-<date>-<time>].")
@refocus_options
@cluster_options
@verbosity_options
@handle_errors
def batch(inputs: tuple[Path, ...], manifest: Path | None, output_dir: Path, recursive: bool, report: Path | None,
          scheduler: str, workers: int | None, threads_per_worker: int | None, dashboard_address: str, verbose: int,
          quiet: bool, **params) -> None:
    """Refocus many slides: files, folders of slides, or a CSV manifest.

    Every slide is attempted; a failing slide never stops the others.
    Slides whose output exists are skipped (--overwrite redoes them); an
    interrupted slide resumes where it stopped.  A report (CSV and JSON)
    lists every slide with its status, output, time, tiles and error.
    Exit status: 0 when no slide failed, 1 when any did, 2 for bad usage.
    """
    configure_logging(verbose, quiet)
    limit_malloc_arenas()
    from wsi_deepr.batch import plan_batch, run_batch
    from wsi_deepr.errors import OutputError

    options = options_from(params)

    if not inputs and manifest is None:
        raise click.UsageError("give slides or folders as INPUTS, or --manifest FILE.csv")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output_dir}: {exc}") from exc
    items = plan_batch(inputs, output_dir, manifest=manifest, recursive=recursive,
                       output_format=options.output_format)
    if not items:
        raise OutputError(f"no slides found in {', '.join(map(str, inputs)) or manifest}; slide files end in "
                          f".svs, .ndpi, .mrxs, .tif, ...")
    report = report or output_dir / time.strftime("wsi-deepr-batch-%Y%m%d-%H%M%S")
    target, cluster = make_scheduler(scheduler, workers=workers, threads_per_worker=threads_per_worker,
                                     dashboard_address=dashboard_address, device=options.device, verbose=verbose,
                                     quiet=quiet)
    options = options.replace(workers=workers if cluster is None else None)
    bar = ProgressBar(quiet=quiet)
    width = len(str(len(items)))

    def on_start(index: int, item) -> None:
        bar.desc = f"[{index + 1:>{width}}/{len(items)}] {item.input.name}"

    def on_done(index: int, entry) -> None:
        bar.close()
        head = f"[{index + 1:>{width}}/{len(items)}] {entry.status:7} {entry.input}"
        if entry.status == "failed":
            click.echo(f"{head}: {entry.error}", err=True)
        elif not quiet:
            tail = f" -> {entry.output}"
            if entry.status == "done":
                tail += f" ({entry.seconds:.1f} s, {entry.tiles} tiles"
                tail += f", {entry.resumed_blocks} blocks resumed)" if entry.resumed_blocks else ")"
            click.echo(head + tail)

    try:
        reports = run_batch(items, options=options, scheduler=target, report=report, on_start=on_start,
                            on_done=on_done, progress=bar)
    finally:
        bar.close()
        if cluster is not None:
            cluster.close()
    counts = {s: sum(r.status == s for r in reports) for s in ("done", "skipped", "failed")}
    report_base = report.with_suffix("") if report.suffix.lower() in (".csv", ".json") else report
    summary = (f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
               f"report {report_base}.csv / .json")
    if counts["failed"]:
        click.echo(summary, err=True)
        sys.exit(EXIT_FAILED)
    if not quiet:
        click.echo(summary)
