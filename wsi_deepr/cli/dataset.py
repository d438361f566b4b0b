"""``wsi-deepr dataset simulate|stacks|info``: build and inspect training-pair datasets."""

from __future__ import annotations

import json
from pathlib import Path

import click

from wsi_deepr.cli.common import configure_logging, handle_errors, verbosity_options


@click.group()
def dataset() -> None:
    """Build (defocused, in-focus) training pairs in the wsi-deepr zarr format."""


def _print_summary(summary: dict, as_json: bool, extra: dict | None = None) -> None:
    if as_json:
        click.echo(json.dumps({"summary": summary, **(extra or {})}, indent=2))
        return
    s = summary
    click.echo(f"pairs {s['pairs']} (train {s['train']}, val {s['val']}; fields of view "
               f"{s['fov_train']} / {s['fov_val']}), tilted {s.get('tilted', 0)}")
    if "z_um" in s:
        z = s["z_um"]
        click.echo(f"z_um  min {z['min']:.2f}  max {z['max']:.2f}  mean|z| {z['mean_abs']:.2f}")
        edges, counts = z["hist"]["edges"], z["hist"]["counts"]
        click.echo("      " + "  ".join(f"[{a:.1f},{b:.1f}):{c}" for a, b, c in zip(edges, edges[1:], counts)))
        p = s["pixel_size_um"]
        if "min" in p:
            click.echo(f"pixel_size_um  min {p['min']:.3f}  max {p['max']:.3f}  q10/50/90 "
                       f"{p['quantiles_10_50_90']}  (unknown: {p['unknown']})")
        else:
            click.echo(f"pixel_size_um  unknown for all {p['unknown']} pairs (pass --pixel-size)")
        click.echo("per source  " + ", ".join(f"{k}: {v}" for k, v in s["per_source"].items()))


@dataset.command("simulate")
@click.argument("sources", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Dataset folder (.zarr).")
@click.option("--modality", type=click.Choice(["brightfield", "fluorescence"]), required=True,
              help="Modality of the sources (fluorescence channels become single-channel sources).")
@click.option("--pairs", type=click.IntRange(min=1), default=2000, show_default=True, help="Pairs to simulate.")
@click.option("--patch-size", type=click.IntRange(min=16), default=256, show_default=True)
@click.option("--z-range", type=(float, float), default=(-5.0, 5.0), show_default=True,
              help="Defocus range in µm.")
@click.option("--na-range", type=(float, float), default=(0.4, 0.95), show_default=True)
@click.option("--pixel-scale", type=(float, float), default=(1.0, 2.0), show_default=True,
              help="Target pixel size as a multiple of the source's (>= 1).")
@click.option("--spherical-range", type=(float, float), default=(-0.1, 0.1), show_default=True,
              help="Noll-11 spherical aberration, waves RMS.")
@click.option("--tilt-probability", type=click.FloatRange(0, 1), default=0.2, show_default=True)
@click.option("--stain-sigma", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Brightfield: per-stain multiplicative jitter of the optical density, 1 + N(0, sigma) "
                   "(0.2: strong stain and density variety).")
@click.option("--stain-bias", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="Brightfield: per-stain additive jitter of the optical density, N(0, bias).")
@click.option("--default-pixel-size", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
              help="µm/px assumed for sources that do not record it.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.99), default=0.15, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Processes.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@verbosity_options
@handle_errors
def simulate_cmd(sources: tuple[str, ...], output: Path, modality: str, pairs: int, patch_size: int,
                 z_range: tuple[float, float], na_range: tuple[float, float], pixel_scale: tuple[float, float],
                 spherical_range: tuple[float, float], tilt_probability: float, stain_sigma: float,
                 stain_bias: float, default_pixel_size: float,
                 val_fraction: float, seed: int, workers: int, overwrite: bool, as_json: bool, verbose: int,
                 quiet: bool) -> None:
    """Simulate pairs from in-focus SOURCES (slides, images, folders, STACK.tif#K-L planes)."""
    configure_logging(verbose, quiet)
    from wsi_deepr.data.build import build_simulated, open_sources
    from wsi_deepr.optics.randomize import RandomizationRanges

    ranges = RandomizationRanges.for_modality(
        modality, z_um=z_range, na=na_range, pixel_scale=pixel_scale, spherical_waves=spherical_range,
        tilt_probability=tilt_probability, stain_sigma=stain_sigma, stain_bias=stain_bias)
    srcs = open_sources(sources, modality=modality, default_pixel_size_um=default_pixel_size)
    summary = build_simulated(srcs, output, n_pairs=pairs, patch_size=patch_size, ranges=ranges,
                              val_fraction=val_fraction, seed=seed, workers=workers, overwrite=overwrite)
    if not quiet:
        click.echo(f"{output}  ({len(srcs)} sources)", err=as_json)
        _print_summary(summary, as_json)


@dataset.command("stacks")
@click.argument("stacks", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Dataset folder (.zarr).")
@click.option("--z-step", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Axial step in µm for stacks that do not record it (recorded as assumed).")
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), default=None,
              help="µm/px for stacks that do not record it.")
@click.option("--modality", type=click.Choice(["auto", "brightfield", "fluorescence"]), default="auto",
              show_default=True)
@click.option("--patch-size", type=click.IntRange(min=16), default=256, show_default=True,
              help="Ground-truth patch side (the paper: 512; use 64-128 for stacks of ~300 px).")
@click.option("--max-offset", type=click.IntRange(min=0), default=None,
              help="Pair planes within this many planes of the ground truth [default: all].")
@click.option("--val-fraction", type=click.FloatRange(0, 0.99), default=0.15, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--residuals/--no-residuals", default=True, show_default=True,
              help="Re-register the registered planes and report the residual.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and reports as JSON.")
@verbosity_options
@handle_errors
def stacks_cmd(stacks: tuple[Path, ...], output: Path, z_step: float | None, pixel_size: float | None,
               modality: str, patch_size: int, max_offset: int | None, val_fraction: float, seed: int,
               residuals: bool, overwrite: bool, as_json: bool, verbose: int, quiet: bool) -> None:
    """Build pairs from real z-stacks (multi-page/OME-TIFF or folders of planes)."""
    configure_logging(verbose, quiet)
    from collections import Counter

    from wsi_deepr.data.build import build_from_stacks
    from wsi_deepr.data.stacks import read_stack

    loaded = []
    for path in stacks:
        st = read_stack(path, pixel_size_um=None, modality=None if modality == "auto" else modality)
        if st.z_step_um is None and z_step is not None:
            st.z_step_um = z_step
            st.metadata["z_step_assumed"] = True
        if st.pixel_size_um is None and pixel_size is not None:
            st.pixel_size_um = pixel_size
            st.metadata["pixel_size_assumed"] = True
        loaded.append(st)
    summary, reports = build_from_stacks(loaded, output, patch_size=patch_size, max_offset=max_offset,
                                         val_fraction=val_fraction, seed=seed, measure_residuals=residuals,
                                         overwrite=overwrite)
    if quiet:
        return
    if as_json:
        _print_summary(summary, True, {"reports": reports})
        return
    click.echo(str(output))
    for rep in reports:
        click.echo(f"{rep['source']}: {rep['planes']} planes, common field {rep['frame'][0]}x{rep['frame'][1]}")
        if "residuals" in rep:
            r = rep["residuals"]
            click.echo(f"  residual (px, max over planes): similarity re-fit to neighbour "
                       f"{r['max_neighbour_px']:.3f}, to reference {r['max_reference_px']:.3f}; "
                       f"cross-correlation shift to neighbour {r['max_phase_px']:.3f}, to reference "
                       f"{r['max_phase_reference_px']:.3f}")
        counts = sorted(Counter(rep["chosen_planes"]).items())
        click.echo(f"  reference (sharpest) plane label {rep['reference_plane']}; {rep['patches_with_content']} of "
                   f"{rep['patches']} patches have content; chosen ground-truth plane labels: "
                   + ", ".join(f"{k:+d}: {v}" for k, v in counts))
    _print_summary(summary, False)


@dataset.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything stored as JSON.")
@verbosity_options
@handle_errors
def info_cmd(path: Path, as_json: bool, verbose: int, quiet: bool) -> None:
    """Show a dataset's summary, normalisation statistics and sources."""
    configure_logging(verbose, quiet)
    from wsi_deepr.data.dataset import summarize

    info = summarize(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{path}: {info['kind']} {info['modality']} {info['channels']}, "
               f"patch {info['patch_size']}, created {info['created']}")
    norm = info["normalization"]
    click.echo(f"normalisation (train, not applied): input mean {_r(norm['input']['mean'])} std "
               f"{_r(norm['input']['std'])}; target mean {_r(norm['target']['mean'])} std {_r(norm['target']['std'])}")
    for s in info["sources"]:
        click.echo(f"source {s.get('name')}: {s.get('path')}")
    _print_summary(info["summary"], False)


def _r(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
