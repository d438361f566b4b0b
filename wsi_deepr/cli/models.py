"""``wsi-deepr models``."""

from __future__ import annotations

import json

import click

from wsi_deepr.cli.common import configure_logging, handle_errors, verbosity_options


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@verbosity_options
@handle_errors
def models(as_json: bool, verbose: int, quiet: bool) -> None:
    """List the installed Deep-R models and their model cards, and what --method auto runs."""
    configure_logging(verbose, quiet)
    from wsi_deepr.inference.registry import ENV_MODEL_PATH, list_models, model_dirs

    found = list_models()
    if as_json:
        click.echo(json.dumps([m.as_dict() for m in found], indent=2))
        return
    if not found:
        dirs = ", ".join(str(d) for d in model_dirs())
        click.echo(f"No models installed (searched: {dirs}). Put .onnx models in a folder listed in "
                   f"${ENV_MODEL_PATH}, or pass --model PATH to 'wsi-deepr refocus'.")
        return
    for m in found:
        c = m.card
        flag = " (default network)" if c.default else " (preview: only with --model)" if c.preview else ""
        rng = f"{c.defocus_range_um[0]:g}..{c.defocus_range_um[1]:g} um" if c.defocus_range_um else "unknown"
        click.echo(f"{m.name}{flag}")
        px = (f"{c.mpp_range[0]:g}-{c.mpp_range[1]:g} (median {c.mpp:g})" if c.mpp_range and c.mpp
              else (c.mpp or "unknown"))
        click.echo(f"  {c.modality.value}, {c.channels} channel(s), trained at {px} um/px, "
                   f"defocus {rng}, halo {c.halo} px, normalization {c.normalization}, version {c.version}")
        click.echo(f"  {c.description}")
        click.echo(f"  {m.path}  sha256 {m.sha256[:16]}...")
    from wsi_deepr.restore import METHOD_NAME
    from wsi_deepr.stages import AUTO_METHOD

    auto = ", ".join(f"{mod.value}: {'the default network' if how == 'deepr' else METHOD_NAME}"
                     for mod, how in AUTO_METHOD.items())
    click.echo(f"{METHOD_NAME} (built in: --method deconvolve)\n  Richardson-Lucy with the defocus PSF the defocus map "
               f"estimates per region; card: wsi_deepr/models/{METHOD_NAME}.CARD.md\n--method auto runs {auto}")
