"""The options of a refocusing run: one validated, frozen definition.

:class:`RefocusOptions` is what :func:`wsi_deepr.api.refocus`, the CLI
(``refocus`` and ``batch``, whose click options are generated from the
fields' metadata by :func:`wsi_deepr.cli.common.refocus_options`) and
:func:`wsi_deepr.batch.run_batch` share.  Every value is checked when the
object is made, so a bad option fails at once, before any slide is read, any
model session opened, lock taken or scratch written.  Checks that need the
slide or the model (channels, the halo against the window size, JPEG for a
non-RGB slide) run in :func:`wsi_deepr.stages.prepare`, still before any of
those.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wsi_deepr.errors import OptionError

__all__ = ["BACKGROUND_MODES", "COMPRESSIONS", "DEVICES", "FORMATS", "METHODS", "MODALITIES", "OUTPUT_SCALES",
           "SCALE_MODES", "WHERE_MODES", "RefocusOptions"]

MODALITIES = ("auto", "brightfield", "fluorescence")
#: how windows are refocused: the Deep-R network (blind), Richardson-Lucy with the estimated PSF
#: (non-blind), or ``auto``: the one measured best for the modality (:data:`wsi_deepr.stages.AUTO_METHOD`)
METHODS = ("auto", "deepr", "deconvolve")
DEVICES = ("auto", "cpu", "cuda")
SCALE_MODES = ("auto", "native")
BACKGROUND_MODES = ("auto", "skip", "process")
COMPRESSIONS = ("auto", "jpeg", "zlib", "zstd")
#: where the network runs: ``auto`` only where the defocus map says it helps, ``all`` every window
WHERE_MODES = ("auto", "all")
#: the pixel size of the output: the scan's own (``native``) or the one the model ran at (``processing``)
OUTPUT_SCALES = ("native", "processing")
#: output formats (``auto``: by the output's suffix, an OME-TIFF by default)
FORMATS = ("auto", "ome-tiff", "tiff", "ome-zarr")
#: smallest model window accepted, px (the U-Net downsamples by 16)
MIN_TILE = 16


def _option(default: Any, help: str, **cli: Any) -> Any:  # noqa: A002 - click's word
    """A dataclass field whose metadata carries the CLI option's help and settings."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class RefocusOptions:
    """Everything a user chooses about one refocusing run, validated.

    The defaults are the documented defaults of ``wsi-deepr refocus``.
    Runtime objects (the scheduler or client, a progress callback, an
    explicit skip mask) are not options; :func:`wsi_deepr.api.refocus` takes
    them beside these.

    Raises
    ------
    OptionError
        On construction (a ``ValueError``), naming the option, the value and
        what is allowed.
    """

    model: str | None = _option(None, "Installed model name or .onnx path [default: the default model for "
                                      "the modality].", metavar="NAME|PATH")
    method: str = _option("auto", "'deepr': the Deep-R network (blind; --model or the modality's default). "
                                  "'deconvolve': Richardson-Lucy with the defocus PSF the defocus map estimates for "
                                  "each window (non-blind physics, at the scan's pixel size). 'auto': the one that "
                                  "measured best on unseen sources: the network for brightfield, deconvolution for "
                                  "fluorescence. --model NAME|PATH runs that network.",
                          choices=METHODS)
    modality: str = _option("auto", "Override the detected modality.", choices=MODALITIES)
    device: str = _option("auto", "ONNX Runtime execution provider; 'cuda' fails if CUDA is not usable.",
                          choices=DEVICES)
    tile: int | str = _option(512, "Model window size in pixels, or 'auto': the size from 512 to 1536 that runs "
                                   "the model on the fewest pixels for the slide (faster with a wide halo on "
                                   "large slides, more memory: see the README's Tiling section).", kind="tile")
    halo: int | None = _option(None, "Context pixels cropped from each window side [default: from the model "
                                     "card].", kind="count")
    overlap: int | None = _option(None, "Feathered overlap between windows [default: 16, or the halo if "
                                        "smaller].", kind="count")
    batch: int | None = _option(None, "Windows per inference task [default: 2 on CPU, 8 on CUDA, for 512-px "
                                      "windows; as many pixels per task for larger ones].", kind="positive")
    scale: str = _option("auto", "'auto': refocus at the model's training pixel size (a finer slide's matching "
                                 "pyramid level, or an area-mean reduction; the output is written at that "
                                 "size). 'native': always full resolution.", choices=SCALE_MODES)
    output_scale: str = _option("native", "When the model runs at a coarser pixel size than the scan (--scale auto on "
                                          "a 40x slide): 'native' returns the scan at its own pixel size, the "
                                          "model's correction upsampled onto its pixels; 'processing' returns the "
                                          "coarser image the model made.", choices=OUTPUT_SCALES)
    background: str = _option("auto", "'skip': pass windows of blank glass through unchanged (tissue found by "
                                      "optical density on a thumbnail); 'process': refocus every window; 'auto': "
                                      "skip on brightfield slides, process fluorescence.", choices=BACKGROUND_MODES)
    where: str = _option("auto", "'auto': estimate the defocus map first and run the network only on windows "
                                 "defocused beyond the model card's min_defocus_um (the rest passed through bit "
                                 "for bit; everywhere when the card has no threshold); 'all': every window.",
                         choices=WHERE_MODES)
    qc: bool = _option(False, "Also write the focus QC report (<stem>.focus.json/.png/.html) beside the output, "
                              "with before/after crops (the defocus map is estimated with --where all too).", kind="flag")
    output_format: str = _option("auto", "Output format: 'ome-tiff' (pyramidal OME-TIFF: QuPath, napari, OMERO), "
                                         "'tiff' (tiled pyramidal TIFF that OpenSlide reads, brightfield RGB only) or "
                                         "'ome-zarr' (NGFF 0.4); 'auto': by the output's suffix (.ome.tif, .tif, "
                                         ".ome.zarr), an OME-TIFF by default.", choices=FORMATS, flag="--format")
    jpeg_quality: int = _option(90, "JPEG quality of brightfield RGB output.", kind="quality")
    compression: str = _option("auto", "Output compression: 'auto' (JPEG for RGB, zlib otherwise), 'jpeg', "
                                       "'zlib' or 'zstd'.", choices=COMPRESSIONS, cli=False)
    overwrite: bool = _option(False, "Replace outputs that exist.", kind="flag")
    resume: bool = _option(True, "Discard the scratch of an interrupted run instead of resuming from it.",
                           kind="flag", flag="--no-resume", invert=True)
    workers: int | None = _option(None, "Parallel inference tasks on the local threaded scheduler "
                                        "[default: CPU count].", cli=False)

    def __post_init__(self) -> None:
        if self.model is not None:
            object.__setattr__(self, "model", os.fspath(self.model))
        for name, allowed in (("modality", MODALITIES), ("device", DEVICES), ("scale", SCALE_MODES),
                              ("background", BACKGROUND_MODES), ("compression", COMPRESSIONS),
                              ("output_format", FORMATS), ("where", WHERE_MODES),
                              ("output_scale", OUTPUT_SCALES), ("method", METHODS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value.lower() not in allowed:
                raise OptionError(f"{name}={value!r}: use one of {', '.join(allowed)}")
            object.__setattr__(self, name, value.lower())
        if self.method == "deconvolve" and self.model is not None:  # --model with auto runs the network
            raise OptionError(f"model={self.model!r} names a network but method='deconvolve' uses none: drop "
                              "--model, or pass --method deepr to run that network")
        object.__setattr__(self, "tile", _tile(self.tile))
        for name, least in (("halo", 0), ("overlap", 0), ("batch", 1), ("workers", 1)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _integer(name, value, least))
        object.__setattr__(self, "jpeg_quality", _integer("jpeg_quality", self.jpeg_quality, 1))
        if self.jpeg_quality > 100:
            raise OptionError(f"jpeg_quality={self.jpeg_quality!r}: use an integer from 1 to 100")
        for name in ("overwrite", "resume", "qc"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name}={getattr(self, name)!r}: use True or False")

    def replace(self, **changes: Any) -> RefocusOptions:
        """A copy with ``changes`` applied (and validated); unknown names raise ``TypeError``."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: Mapping[str, str]) -> RefocusOptions:
        """A copy with the text values of a manifest row (empty cells ignored)."""
        return self.replace(**{k: v for k, v in overrides.items() if v not in (None, "")})

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict."""
        return dataclasses.asdict(self)


def _integer(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str)
                                                                         and not value.strip().isdigit()):
        raise OptionError(f"{name}={value!r}: give a whole number >= {least}")
    number = int(value)
    if number < least:
        raise OptionError(f"{name}={value!r}: give a whole number >= {least}")
    return number


def _tile(value: Any) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str)
                                                                         and not value.strip().isdigit()):
        raise OptionError(f"tile={value!r}: give a window size in pixels or 'auto'")
    if int(value) < MIN_TILE:
        raise OptionError(f"tile={value!r}: a window must be at least {MIN_TILE} px")
    return int(value)
