"""Installed models: where they are looked up, listing, and choosing the model for a slide.

Models are found in the folders listed in ``$WSI_DEEPR_MODEL_PATH``
(``os.pathsep`` separated) and in the package's ``models/`` folder.  The
default model of a modality is the one whose card has ``default = true`` for
that modality; a card with ``status = preview`` is never picked implicitly,
only when named (``--model NAME``).
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

from wsi_deepr.errors import ModelError, ModelNotFoundError
from wsi_deepr.inference.card import ModelInfo, load_model_info
from wsi_deepr.readers.slide import Modality

__all__ = ["ENV_MODEL_PATH", "list_models", "model_dirs", "resolve_model"]

log = logging.getLogger(__name__)

ENV_MODEL_PATH = "WSI_DEEPR_MODEL_PATH"


def model_dirs() -> list[Path]:
    """Folders searched for installed models, in priority order."""
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_MODEL_PATH, "").split(os.pathsep) if p]
    dirs.append(Path(str(resources.files("wsi_deepr") / "models")))
    return dirs


def list_models() -> list[ModelInfo]:
    """All installed models with valid cards (invalid files are logged and skipped)."""
    found: list[ModelInfo] = []
    seen: set[str] = set()
    for folder in model_dirs():
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.onnx")):
            try:
                info = load_model_info(file)
            except ModelError as exc:
                log.warning("skipping installed model %s: %s", file, exc)
                continue
            if info.name not in seen:
                seen.add(info.name)
                found.append(info)
    return found


def resolve_model(model: str | os.PathLike | None, *, modality: Modality) -> ModelInfo:
    """Find the model to use: a path, an installed model's name, or the default.

    Parameters
    ----------
    model : str, path or None
        A ``.onnx`` path, the name of an installed model, or ``None`` for the
        default model of ``modality``.
    modality : Modality
        The slide's modality (picks the default).
    """
    if model is not None:
        text = os.fspath(model)
        candidate = Path(text).expanduser()
        if candidate.exists() or text.endswith(".onnx") or os.sep in text:
            if candidate.is_dir():
                raise ModelError(f"model path {candidate} is a directory; pass a .onnx file")
            return load_model_info(candidate)
        for info in list_models():
            if info.name == text:
                return info
        names = ", ".join(i.name for i in list_models()) or "none installed"
        raise ModelNotFoundError(
            f"no model named {text!r} (installed: {names}); pass a .onnx path or see 'wsi-deepr models'"
        )
    of_modality = [i for i in list_models() if i.card.modality is modality]
    candidates = [i for i in of_modality if not i.card.preview]
    defaults = [i for i in candidates if i.card.default] or candidates
    if not defaults:
        previews = ", ".join(i.name for i in of_modality if i.card.preview)
        hint = (f"; preview models (not yet passing their quality gates, see their MODEL_CARD): {previews}, "
                f"used only when named, e.g. --model {previews.split(', ')[0]}" if previews else "")
        raise ModelNotFoundError(
            f"no default {modality.value} model is installed{hint}; pass --model NAME or a .onnx PATH "
            f"(see 'wsi-deepr models'), or set ${ENV_MODEL_PATH} to a folder of models"
        )
    return defaults[0]
