"""The model contract: an ONNX file, its model card, and whether it fits a slide.

A model is an ONNX file whose graph maps ``float32 [N, C, H, W]`` to the same
shape (dynamic N, H, W) and whose ``metadata_props`` hold a model card with the
keys in :data:`CARD_KEYS`.  A card with ``status = preview`` (an optional key)
marks a model that has not passed its quality gates.  Where installed models
are found: :mod:`wsi_deepr.inference.registry`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from wsi_deepr.errors import ModelError, ModelMismatchError, ModelNotFoundError
from wsi_deepr.inference.normalization import parse_spec
from wsi_deepr.inference.session import create_session
from wsi_deepr.readers.slide import Modality

__all__ = [
    "CARD_KEYS",
    "ModelCard",
    "ModelInfo",
    "check_compatible",
    "load_model_info",
]

log = logging.getLogger(__name__)

CARD_KEYS = (
    "modality",
    "channels",
    "mpp",
    "defocus_range_um",
    "normalization",
    "halo",
    "version",
    "description",
)


@dataclass(frozen=True)
class ModelCard:
    """The model card stored in an ONNX model's ``metadata_props``."""

    modality: Modality
    channels: int
    mpp: float | None
    defocus_range_um: tuple[float, float] | None
    normalization: str
    halo: int
    version: str
    description: str
    default: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_metadata(cls, meta: dict[str, str], *, path: Path) -> ModelCard:
        """Parse and validate a card from ONNX ``metadata_props``."""
        missing = [k for k in CARD_KEYS if k not in meta]
        if missing:
            raise ModelError(
                f"{path}: model card incomplete, missing metadata key(s) "
                f"{', '.join(missing)}; export the model with the wsi-deepr exporter "
                f"(export/) or add them to metadata_props"
            )
        try:
            modality = Modality.parse(meta["modality"])
            channels = int(meta["channels"])
            halo = int(meta["halo"])
            mpp = _optional_float(meta["mpp"])
            defocus = _range(meta["defocus_range_um"])
            parse_spec(meta["normalization"])
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{path}: invalid model card: {exc}") from None
        if channels < 1 or halo < 0:
            raise ModelError(f"{path}: invalid model card: channels={channels}, halo={halo}")
        extra = tuple(sorted((k, v) for k, v in meta.items() if k not in CARD_KEYS and k != "default"))
        return cls(
            modality=modality,
            channels=channels,
            mpp=mpp,
            defocus_range_um=defocus,
            normalization=meta["normalization"],
            halo=halo,
            version=meta["version"],
            description=meta["description"],
            default=meta.get("default", "").strip().lower() in ("1", "true", "yes"),
            extra=extra,
        )

    @property
    def mpp_range(self) -> tuple[float, float] | None:
        """Training µm/px range (optional card key ``mpp_range``, JSON ``[low, high]``)."""
        text = dict(self.extra).get("mpp_range")
        if text is None:
            return None
        try:
            lo, hi = (float(v) for v in json.loads(text))
        except (ValueError, TypeError):
            log.warning("ignoring the model card's mpp_range %r: expected JSON [low, high]", text)
            return None
        if not 0 < lo <= hi:
            log.warning("ignoring the model card's mpp_range %r: need 0 < low <= high", text)
            return None
        return lo, hi

    @property
    def min_defocus_um(self) -> float | None:
        """Defocus (µm) below which the model's output was measured no better than its input.

        Optional card key ``min_defocus_um``; ``refocus --where auto`` passes
        windows below it through (:mod:`wsi_deepr.focus.select`).  ``None``
        when the card does not say: the model then runs on every window.
        """
        return self._number("min_defocus_um", "a number of µm", lambda v: v >= 0)

    @property
    def min_confidence(self) -> float:
        """Defocus-map confidence below which a region does not send a window to the model.

        Optional card key ``min_confidence`` (0-1, default 0), chosen with
        ``benchmarks/unseen_eval.py`` (:func:`wsi_deepr.focus.select.select_windows`).
        """
        value = self._number("min_confidence", "a number in [0, 1]", lambda v: 0 <= v <= 1)
        return 0.0 if value is None else value

    @property
    def deconvolve_beyond_um(self) -> float | None:
        """Estimated defocus (µm) past which windows go to deconvolution instead of the model.

        Optional card key ``deconvolve_beyond_um`` (:class:`wsi_deepr.restore.Handoff`):
        beyond its training range a network stops helping.  ``None``: the
        model runs on every window the defocus map sends on.
        """
        return self._number("deconvolve_beyond_um", "a number of µm", lambda v: v > 0)

    @property
    def consistency_max_step(self) -> float | None:
        """Largest step of the data-consistency fit of the model's correction (``None``: no fit).

        Optional card key ``consistency_max_step``
        (:mod:`wsi_deepr.restore.consistency`): each window's correction is
        scaled so that, re-blurred with the PSF of its estimated defocus, the
        output matches the capture best, at most by this factor.
        """
        return self._number("consistency_max_step", "a step in (0, 2]", lambda v: 0 < v <= 2)

    def _number(self, key: str, expected: str, valid) -> float | None:
        """The optional numeric card key ``key``; ``None`` when absent, unreadable or not ``valid``."""
        text = dict(self.extra).get(key)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            log.warning("ignoring the model card's %s %r: expected %s", key, text, expected)
            return None
        return value if valid(value) else None

    @property
    def preview(self) -> bool:
        """``True`` when the card says ``status = preview``: used only when asked for by name."""
        return dict(self.extra).get("status", "").strip().lower() == "preview"

    def as_dict(self) -> dict:
        """JSON-friendly dict (for ``wsi-deepr models`` and output metadata)."""
        d = asdict(self)
        d["modality"] = self.modality.value
        d["extra"] = dict(self.extra)
        return d


@dataclass(frozen=True)
class ModelInfo:
    """An ONNX model file with its validated card."""

    path: Path
    name: str
    card: ModelCard
    sha256: str
    input_name: str
    output_name: str

    def as_dict(self) -> dict:
        """JSON-friendly dict."""
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256, **self.card.as_dict()}


def _optional_float(text: str) -> float | None:
    text = str(text).strip().lower()
    if text in ("", "none", "null", "unknown"):
        return None
    value = float(text)
    if not value > 0:
        raise ValueError(f"mpp must be > 0, got {text!r}")
    return value


def _range(text: str) -> tuple[float, float] | None:
    text = str(text).strip()
    if text.lower() in ("", "none", "null", "unknown"):
        return None
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        values = [float(v) for v in text.replace(",", " ").split()]
    low, high = (float(v) for v in values)
    return low, high


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model_info(path: str | os.PathLike) -> ModelInfo:
    """Open an ONNX model, check the model contract and return its card.

    Raises
    ------
    ModelNotFoundError
        The file does not exist.
    ModelError
        The file is not an ONNX model, its graph does not follow the contract
        or its card is incomplete.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}")
    stat = path.stat()
    return _load_model_info(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _load_model_info(path_str: str, size: int, mtime_ns: int) -> ModelInfo:
    path = Path(path_str)
    try:
        session = create_session(path_str, device="cpu", optimize=False)
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path}: not a valid ONNX model ({first[:200]}); pass a .onnx file exported "
            f"by the wsi-deepr exporter"
        ) from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelError(f"{path}: model must have one input and one output, has "
                         f"{len(inputs)} inputs and {len(outputs)} outputs")
    inp, out = inputs[0], outputs[0]
    if inp.type != "tensor(float)" or len(inp.shape) != 4:
        raise ModelError(f"{path}: model input must be float32 [N, C, H, W], got {inp.type} {inp.shape}")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    card = ModelCard.from_metadata(meta, path=path)
    if isinstance(inp.shape[1], int) and inp.shape[1] != card.channels:
        raise ModelError(f"{path}: model input has {inp.shape[1]} channels but its card says {card.channels}")
    name = meta.get("name") or path.name.removesuffix(".onnx")
    return ModelInfo(path, name, card, _sha256(path), inp.name, out.name)


def check_compatible(info: ModelInfo, *, n_channels: int, modality: Modality) -> None:
    """Raise :class:`ModelMismatchError` unless ``info`` can run on such a slide.

    A one-channel model runs on every channel of a multi-channel slide; any
    other model needs exactly the slide's channel count.
    """
    if info.card.modality is not modality:
        raise ModelMismatchError(
            f"model {info.name} ({info.path}) is a {info.card.modality.value} model but the slide "
            f"is {modality.value}; pick a {modality.value} model or override --modality"
        )
    if info.card.channels not in (1, n_channels):
        raise ModelMismatchError(
            f"model {info.name} ({info.path}) takes {info.card.channels} channels but the slide "
            f"has {n_channels}; use a {n_channels}-channel or a 1-channel model"
        )
