"""``wsi-deepr simulate INPUT -o OUTPUT``: defocus an in-focus slide or image."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from wsi_deepr.cli.common import configure_logging, handle_errors, verbosity_options

_IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg")


def _open_input(spec: str, modality: str):
    """``(read_region, (Y, X), channel names, dtype, mpp or None, modality)`` of INPUT."""
    import numpy as np

    from wsi_deepr.errors import SlideNotFoundError

    path, _, plane = spec.partition("#")
    p = Path(path)
    if not p.exists():
        raise SlideNotFoundError(f"{p}: no such file; check the input path")
    if plane:
        from wsi_deepr.data.stacks import read_stack

        if not plane.isdigit():
            raise click.BadParameter(f"{spec!r}: write a stack plane as PATH#K (0-based position)")
        st = read_stack(p, planes=[int(plane)], modality=None if modality == "auto" else modality)
        arr = st.planes[0]
        return (lambda y0, x0, y1, x1: arr[y0:y1, x0:x1]), arr.shape[:2], st.channel_names, arr.dtype, \
            st.pixel_size_um, st.modality
    if p.suffix.lower() in _IMAGE_SUFFIXES:
        import skimage.io

        arr = np.asarray(skimage.io.imread(p))
        arr = arr[:, :, None] if arr.ndim == 2 else arr[:, :, :3]
        names = ("R", "G", "B") if arr.shape[2] == 3 else tuple(f"C{i}" for i in range(arr.shape[2]))
        mod = modality if modality != "auto" else ("brightfield" if arr.shape[2] == 3 else "fluorescence")
        return (lambda y0, x0, y1, x1: arr[y0:y1, x0:x1]), arr.shape[:2], names, arr.dtype, None, mod
    from wsi_deepr.readers import open_slide

    slide = open_slide(p, modality=modality)
    mpp = slide.mpp[1] if slide.mpp else None
    return (lambda y0, x0, y1, x1: slide.read_region(0, y0, x0, y1, x1)), slide.shape[:2], \
        slide.channel_names, slide.dtype, mpp, slide.modality.value


def _require_defocus(func):
    """Usage error (exit 2, with the usage line) when neither --z nor --tilt is given."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if kwargs.get("z_um") is None and kwargs.get("tilt") is None:
            raise click.UsageError("give --z (uniform defocus, µm) and/or --tilt DZ_DY DZ_DX")
        return func(*args, **kwargs)

    return wrapper


@click.command()
@click.argument("input_spec", metavar="INPUT")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output OME-TIFF; the settings go to OUTPUT.json beside it.")
@click.option("--z", "z_um", type=float, default=None, help="Uniform defocus in µm.")
@click.option("--tilt", type=(float, float), default=None, metavar="DZ_DY DZ_DX",
              help="Tilted plane: defocus slopes in µm per µm along Y and X (z = --z at the centre).")
@click.option("--na", type=click.FloatRange(min=0, min_open=True), default=0.75, show_default=True,
              help="Numerical aperture.")
@click.option("--n", "refractive_index", type=click.FloatRange(min=1.0), default=1.0, show_default=True,
              help="Immersion refractive index.")
@click.option("--spherical", type=float, default=0.0, show_default=True,
              help="Primary spherical aberration (Noll-11 Zernike, waves RMS).")
@click.option("--wavelength", "wavelengths", type=click.FloatRange(min=0.1, max=5.0), multiple=True,
              help="µm, once per channel (or once for all) [default: R/G/B centres for brightfield, "
                   "emission guessed from the channel names for fluorescence].")
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), default=None,
              help="µm/px [default: from the file, else 0.5].")
@click.option("--modality", type=click.Choice(["auto", "brightfield", "fluorescence"]), default="auto",
              show_default=True, help="Override the detected modality.")
@click.option("--photons", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Add shot noise with this many photons at full scale [default: no noise].")
@click.option("--read-noise", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Gaussian noise sigma, fraction of full scale (with --photons).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@verbosity_options
@_require_defocus
@handle_errors
def simulate(input_spec: str, output: Path, z_um: float | None, tilt: tuple[float, float] | None, na: float,
             refractive_index: float, spherical: float, wavelengths: tuple[float, ...],
             pixel_size: float | None, modality: str, photons: float | None, read_noise: float, seed: int,
             overwrite: bool, verbose: int, quiet: bool) -> None:
    """Defocus INPUT (slide, image, or STACK.tif#K) as seen through the given optics.

    Give --z for a uniform defocus, --tilt (with an optional --z at the
    centre) for a tilted sample.  The output is a tiled OME-TIFF of the input's
    size and type, processed strip by strip (any slide size).
    """
    configure_logging(verbose, quiet)
    import numpy as np
    import tifffile

    from wsi_deepr.data.build import emission_wavelength
    from wsi_deepr.errors import OutputExistsError
    from wsi_deepr.optics import OpticalSetting, TiltedPlane, iter_defocused_strips
    from wsi_deepr.optics.randomize import BRIGHTFIELD_WAVELENGTHS_UM, add_poisson_gaussian_noise

    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists: pass --overwrite to replace it")
    read, shape, names, dtype, mpp, mod = _open_input(input_spec, modality)
    px = pixel_size or mpp or 0.5
    if not wavelengths:
        wavelengths = BRIGHTFIELD_WAVELENGTHS_UM if mod == "brightfield" and len(names) == 3 else \
            tuple(emission_wavelength(n) for n in names)
    if len(wavelengths) not in (1, len(names)):
        raise click.BadParameter(f"{len(wavelengths)} wavelengths for {len(names)} channels: give one per "
                                 "channel or one for all", param_hint="--wavelength")
    setting = OpticalSetting(na=na, wavelengths_um=tuple(wavelengths), pixel_size_um=px,
                             refractive_index=refractive_index, spherical_waves=spherical)
    plane = None if tilt is None else TiltedPlane(z0_um=z_um or 0.0, slope_y=tilt[0], slope_x=tilt[1])
    dt = np.dtype(dtype)
    top = float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0
    rng = np.random.default_rng(seed)
    tile = 256
    c = len(names)

    def tiles():
        for _, strip in iter_defocused_strips(lambda *r: np.asarray(read(*r), np.float32) / top, shape, setting,
                                              z_um=z_um or 0.0, plane=plane, strip=tile):
            if photons is not None:
                strip = add_poisson_gaussian_noise(strip, rng, photons=photons, read_noise=read_noise)
            q = np.clip(np.rint(strip * top), 0, top).astype(dt) if dt.kind in "ui" else strip.astype(dt)
            for x0 in range(0, shape[1], tile):
                t = np.zeros((tile, tile, c), dt)
                part = q[:, x0 : x0 + tile]
                t[: part.shape[0], : part.shape[1]] = part
                yield t

    output.parent.mkdir(parents=True, exist_ok=True)
    photometric = "rgb" if c == 3 and mod == "brightfield" else "minisblack"
    metadata = {"axes": "YXS" if photometric == "rgb" else "YXC", "PhysicalSizeX": px, "PhysicalSizeY": px,
                "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    if photometric != "rgb":
        metadata["Channel"] = {"Name": list(names)}
    data_shape = (shape[0], shape[1], c)
    with tifffile.TiffWriter(output, bigtiff=shape[0] * shape[1] * c * dt.itemsize > 2**31, ome=True) as tw:
        tw.write(tiles(), shape=data_shape, dtype=dt, tile=(tile, tile), photometric=photometric,
                 planarconfig="contig", compression="zlib", metadata=metadata,
                 resolution=(1e4 / px, 1e4 / px), resolutionunit="CENTIMETER")
    record = {"input": input_spec, "output": str(output), "modality": mod, "channels": list(names),
              "setting": setting.to_dict(), "z_um": z_um,
              "tilt": None if tilt is None else {"dz_dy": tilt[0], "dz_dx": tilt[1]},
              "photons": photons, "read_noise": read_noise, "seed": seed,
              "pixel_size_source": "option" if pixel_size else ("file" if mpp else "assumed 0.5")}
    Path(str(output) + ".json").write_text(json.dumps(record, indent=2))
    if not quiet:
        click.echo(f"{output}  ({shape[1]}x{shape[0]}, {c} channel(s), NA {na}, "
                   f"{'tilt ' + str(tilt) if tilt else 'z ' + str(z_um)} µm, {px:.4g} µm/px)")
