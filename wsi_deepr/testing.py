"""Small ONNX models that follow the model contract, for tests and benchmarks.

Built with ``onnx.helper`` (install the ``test`` extra); nothing in the
inference path imports this module.  The weights are fixed pseudo-random
numbers, so every model is deterministic and its receptive field is known:

* :func:`conv_model` — ``depth`` 3×3 convolutions with leaky ReLU: receptive
  field radius = ``depth`` pixels (the oracle for tiled == untiled tests).
* :func:`unet_model` — a residual U-Net shaped like the Deep-R generator
  (``levels`` down/up levels, skip concatenations), for realistic timings.

And slides with a known defocus layout, made from an in-focus image through
the project's optics (:mod:`wsi_deepr.optics`): :func:`write_layout_slide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DefocusRegion", "conv_model", "default_card", "save_model", "unet_model", "write_layout_slide"]


def default_card(*, modality: str = "brightfield", channels: int = 3, halo: int = 8,
                 normalization: str = "zscore", **extra: str) -> dict[str, str]:
    """A complete model card (all keys of the model contract) as strings."""
    card = {
        "modality": modality,
        "channels": str(channels),
        "mpp": "0.5",
        "defocus_range_um": "[-10, 10]",
        "normalization": normalization,
        "halo": str(halo),
        "version": "0.0.1-test",
        "description": "synthetic test model (fixed random weights), not a trained refocuser",
    }
    card.update({k: str(v) for k, v in extra.items()})
    return card


def _helpers():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("wsi_deepr.testing needs the 'onnx' package: pip install 'wsi-deepr[test]'") from exc
    return onnx, TensorProto, helper, numpy_helper


def _finish(nodes, inits, channels: int, card: Mapping[str, str] | None, name: str):
    onnx, TensorProto, helper, _ = _helpers()
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", channels, "H", "W"])
    graph = helper.make_graph(nodes, name, [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="wsi-deepr-testing")
    model.ir_version = 8
    if card is not None:
        helper.set_model_props(model, dict(card))
    onnx.checker.check_model(model)
    return model


def conv_model(*, channels: int = 3, depth: int = 3, hidden: int = 8, seed: int = 0,
               card: Mapping[str, str] | None = None):
    """A fully convolutional model with receptive-field radius ``depth``.

    Returns an ``onnx.ModelProto``; see :func:`save_model`.
    """
    _, _, helper, numpy_helper = _helpers()
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, c_in = "input", channels
    for i in range(depth):
        c_out = channels if i == depth - 1 else hidden
        w = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
        b = (0.01 * rng.standard_normal(c_out)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "conv_out" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}" if i < depth - 1 else out],
                                      pads=[1, 1, 1, 1]))
        if i < depth - 1:
            nodes.append(helper.make_node("LeakyRelu", [f"c{i}"], [out], alpha=0.1))
        prev, c_in = out, c_out
    nodes.append(helper.make_node("Add", ["input", "conv_out"], ["output"]))
    return _finish(nodes, inits, channels, card, "conv_oracle")


def unet_model(*, channels: int = 3, width: int = 16, levels: int = 4, seed: int = 0,
               card: Mapping[str, str] | None = None):
    """A residual U-Net with ``levels`` down/up levels (H, W multiples of 2**levels).

    Two 3×3 conv + leaky-ReLU per level, max-pool down, nearest up-sampling,
    skip concatenation, residual from input to output: the cost profile of
    the Deep-R generator.  Returns an ``onnx.ModelProto``.
    """
    _, TensorProto, helper, numpy_helper = _helpers()
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = iter(range(10_000))

    def conv(x: str, c_in: int, c_out: int, act: bool = True) -> str:
        i = next(counter)
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(1.0 / (9 * c_in))).astype(np.float32)
        b = np.zeros(c_out, np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")])
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        if not act:
            return f"c{i}"
        nodes.append(helper.make_node("LeakyRelu", [f"c{i}"], [f"a{i}"], alpha=0.1))
        return f"a{i}"

    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    skips = []
    x, c = "input", channels
    for lvl in range(levels):
        cw = width * 2**lvl
        x = conv(conv(x, c, cw), cw, cw)
        skips.append((x, cw))
        pooled = f"pool{lvl}"
        nodes.append(helper.make_node("MaxPool", [x], [pooled], kernel_shape=[2, 2], strides=[2, 2]))
        x, c = pooled, cw
    cw = width * 2**levels
    x = conv(conv(x, c, cw), cw, cw)
    c = cw
    for lvl in reversed(range(levels)):
        up = f"up{lvl}"
        nodes.append(helper.make_node("Resize", [x, "", "scales"], [up], mode="nearest"))
        skip, sc = skips[lvl]
        cat = f"cat{lvl}"
        nodes.append(helper.make_node("Concat", [up, skip], [cat], axis=1))
        x = conv(conv(cat, c + sc, sc), sc, sc)
        c = sc
    last = conv(x, c, channels, act=False)
    nodes.append(helper.make_node("Add", ["input", last], ["output"]))
    del TensorProto
    return _finish(nodes, inits, channels, card, "unet_residual")


def save_model(model, path: str | Path) -> Path:
    """Write an ``onnx.ModelProto`` to ``path`` and return the path."""
    onnx, *_ = _helpers()
    path = Path(path)
    onnx.save(model, str(path))
    return path


@dataclass(frozen=True)
class DefocusRegion:
    """A box ``[y0:y1, x0:x1]`` (px) of a layout slide defocused by ``z_um``."""

    y0: int
    x0: int
    y1: int
    x1: int
    z_um: float


def write_layout_slide(image: np.ndarray, path: str | Path, *, regions: Sequence[DefocusRegion] = (),
                       tilt: tuple[float, float] | None = None, mpp: float = 0.5, na: float = 0.75,
                       spherical_waves: float = 0.0, tile: int = 256) -> Path:
    """Write an RGB slide whose defocus is known: ``image`` with ``regions`` (or a tilt) defocused.

    Each region is blurred with its surroundings as context (the optics'
    incoherent defocus of the whole padded neighbourhood, then the box cut
    back in), so its edges are what a microscope would see; with ``tilt``
    ``(dz/dy, dz/dx)`` in µm per µm the whole image is defocused by a tilted
    plane through 0 at its centre.  Written as a tiled, zlib-compressed TIFF
    with its µm/px in the resolution tags, which ``open_slide`` reads.

    Parameters
    ----------
    image : numpy.ndarray
        ``(Y, X, 3)`` uint8 in-focus brightfield pixels.
    path : path
        The TIFF to write.
    regions : sequence of DefocusRegion
        Boxes and their defocus.
    tilt : (float, float), optional
        Slopes of a tilted focal plane instead of (or before) the regions.
    mpp, na, spherical_waves : float
        Pixel size (µm) and the objective.
    tile : int
        TIFF tile size.
    """
    import tifffile

    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, OpticalSetting, TiltedPlane, defocus, defocus_tilted
    from wsi_deepr.optics.psf import psf_radius_px

    setting = OpticalSetting(na=na, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=mpp,
                             spherical_waves=spherical_waves)
    obj = np.asarray(image, dtype=np.float32) / 255.0
    out = obj.copy()
    if tilt is not None:
        out, _ = defocus_tilted(obj, setting, TiltedPlane(z0_um=0.0, slope_y=tilt[0], slope_x=tilt[1]))
    for r in regions:
        m = psf_radius_px(setting, r.z_um) + 2
        a0, b0 = max(0, r.y0 - m), max(0, r.x0 - m)
        a1, b1 = min(obj.shape[0], r.y1 + m), min(obj.shape[1], r.x1 + m)
        blurred = defocus(obj[a0:a1, b0:b1], setting, r.z_um)
        out[r.y0:r.y1, r.x0:r.x1] = blurred[r.y0 - a0:r.y1 - a0, r.x0 - b0:r.x1 - b0]
    pixels = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    path = Path(path)
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(tile, tile), compression="zlib",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return path
