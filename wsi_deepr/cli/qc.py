"""``wsi-deepr qc SLIDE... [--output-dir DIR]``: focus QC, no refocusing."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from wsi_deepr.cli.common import configure_logging, handle_errors, verbosity_options

#: exit status when at least one of several slides failed
EXIT_FAILED = 1


@click.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of the reports (created if missing) [default: beside each slide].")
@click.option("--modality", type=click.Choice(["auto", "brightfield", "fluorescence"]), default="auto",
              show_default=True, help="Override the detected modality.")
@click.option("--summary", "summary_csv", type=click.Path(path_type=Path), default=None,
              help="Summary CSV, one row per slide [default with several slides: "
                   "OUTPUT_DIR (or the current folder)/wsi-deepr-qc-<date>-<time>.csv].")
@click.option("--window-um", type=click.FloatRange(min=1.0), default=None,
              help="Side of the map's windows in µm [default: the map's own].")
@click.option("--top-k", type=click.IntRange(min=0), default=None,
              help="Worst regions listed in the report and shown at full resolution [default: 8].")
@verbosity_options
@handle_errors
def qc(slides: tuple[Path, ...], output_dir: Path | None, modality: str, summary_csv: Path | None,
       window_um: float | None, top_k: int | None, verbose: int, quiet: bool) -> None:
    """Focus QC: map how far out of focus each region of SLIDE is (µm), refocusing nothing.

    Writes <stem>.focus.json (summary and per-region defocus), <stem>.focus.png
    (thumbnail with the defocus heatmap) and <stem>.focus.html (one
    self-contained page: map, summary, worst regions at full resolution).
    Existing reports are replaced.  Every slide is attempted; with several
    slides a summary CSV lists each.  Exit status: 0 when no slide failed,
    1 when any of several did, 2 for bad usage or a single bad slide.
    """
    configure_logging(verbose, quiet)
    from wsi_deepr.focus.qc import TOP_K, run_qc

    if len(slides) > 1 and summary_csv is None:
        summary_csv = (output_dir or Path.cwd()) / time.strftime("wsi-deepr-qc-%Y%m%d-%H%M%S.csv")
    width = len(str(len(slides)))

    def on_done(index: int, result) -> None:
        head = f"[{index + 1:>{width}}/{len(slides)}] " if len(slides) > 1 else ""
        if result.status == "failed":
            if len(slides) > 1:
                what = result.error if str(result.slide) in result.error else f"{result.slide}: {result.error}"
                click.echo(f"{head}failed  {what}", err=True)
        elif not quiet:
            s = result.summary
            figures = ("no tissue with an estimate" if s["median_defocus_um"] is None else
                       f"median {s['median_defocus_um']:.2f} µm, p95 {s['p95_defocus_um']:.2f} µm, "
                       f"{100 * s['share_above_3um']:.1f} % of tissue above 3 µm")
            click.echo(f"{head}{result.outputs.html}  ({figures}; {result.seconds:.1f} s)")

    results = run_qc(slides, output_dir=output_dir, modality=modality, summary_csv=summary_csv,
                     window_um=window_um, top_k=TOP_K if top_k is None else top_k, on_done=on_done)
    failed = [r for r in results if r.status == "failed"]
    if len(results) == 1 and failed:
        raise failed[0].exception  # handle_errors: one line, exit 2 for bad input
    if len(results) > 1:
        line = f"{len(results) - len(failed)} done, {len(failed)} failed; summary {summary_csv}"
        if failed:
            click.echo(line, err=True)
            sys.exit(EXIT_FAILED)
        if not quiet:
            click.echo(line)
    elif summary_csv is not None and not quiet:
        click.echo(f"summary {summary_csv}")
