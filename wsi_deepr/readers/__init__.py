"""Slide readers: :func:`open_slide` picks the OpenSlide or tifffile backend."""

from __future__ import annotations

from wsi_deepr.readers.open import open_slide
from wsi_deepr.readers.slide import Modality, RegionReader, Slide, level_array

__all__ = ["Modality", "RegionReader", "Slide", "level_array", "open_slide"]
