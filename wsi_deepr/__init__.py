"""wsi-deepr: offline single-shot autofocusing of whole-slide images (Deep-R).

The public API is loaded lazily so that ``import wsi_deepr`` is cheap and has no
side effects::

    from wsi_deepr import refocus, open_slide
    result = refocus("slide.svs")          # -> slide.refocused.ome.tif
"""

from __future__ import annotations

from wsi_deepr._version import __version__

__all__ = ["__version__", "RefocusOptions", "RefocusResult", "defocus_map", "list_models", "open_slide", "refocus",
           "refocus_array"]

_LAZY = {
    "open_slide": ("wsi_deepr.readers", "open_slide"),
    "refocus": ("wsi_deepr.api", "refocus"),
    "RefocusResult": ("wsi_deepr.api", "RefocusResult"),
    "list_models": ("wsi_deepr.inference.registry", "list_models"),
    "RefocusOptions": ("wsi_deepr.options", "RefocusOptions"),
    "refocus_array": ("wsi_deepr.inference.kernel", "refocus_array"),
    "defocus_map": ("wsi_deepr.focus.map", "defocus_map"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'wsi_deepr' has no attribute {name!r}")
