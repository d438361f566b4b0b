"""``wsi-deepr info SLIDE``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from wsi_deepr.cli.common import configure_logging, handle_errors, verbosity_options


@click.command()
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("--modality", type=click.Choice(["auto", "brightfield", "fluorescence"]), default="auto",
              show_default=True, help="Override the detected modality.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@verbosity_options
@handle_errors
def info(slide: Path, modality: str, as_json: bool, verbose: int, quiet: bool) -> None:
    """Show what wsi-deepr reads from SLIDE: backend, levels, µm/px, channels."""
    configure_logging(verbose, quiet)
    from wsi_deepr.readers import open_slide

    s = open_slide(slide, modality=modality)
    data = {
        "path": str(s.path),
        "format": s.format,
        "backend": s.backend,
        "modality": s.modality.value,
        "dtype": str(s.dtype),
        "channels": list(s.channel_names),
        "mpp": list(s.mpp) if s.mpp else None,
        "levels": [
            {"level": i, "width": x, "height": y, "downsample": round(d, 4)}
            for i, ((y, x, _), d) in enumerate(zip(s.level_shapes, s.level_downsamples, strict=True))
        ],
        "associated": sorted(s.associated),
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    mpp = f"{s.mpp[1]:.4g} x {s.mpp[0]:.4g} um/px" if s.mpp else "unknown"
    click.echo(f"{s.path}")
    click.echo(f"  format     {s.format} (backend: {s.backend})")
    click.echo(f"  modality   {s.modality.value}")
    click.echo(f"  pixels     {s.dtype}, {s.n_channels} channel(s): {', '.join(s.channel_names)}")
    click.echo(f"  resolution {mpp}")
    for lv in data["levels"]:
        click.echo(f"  level {lv['level']}    {lv['width']} x {lv['height']} (downsample {lv['downsample']:g})")
    click.echo(f"  associated {', '.join(data['associated']) or 'none'}")
