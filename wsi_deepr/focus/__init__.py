"""Defocus estimation: how far out of focus each region of a slide is, in µm.

* :func:`estimate_defocus` — blind ``|z|`` (µm) and a confidence for image
  windows at a known pixel size (:mod:`wsi_deepr.focus.estimate`);
* :func:`defocus_map` — the estimate over a grid of regions of a whole slide,
  NaN off tissue (:mod:`wsi_deepr.focus.map`);
* :func:`resample_to_grid` — the map's value over another window grid;
* :func:`lacks_signature` — fluorescence windows whose spectrum shows no
  defocus, whatever the estimate (:mod:`wsi_deepr.focus.spectral`);
* :mod:`wsi_deepr.focus.select` — which refocus windows the network runs on
  (``refocus --where auto``);
* :mod:`wsi_deepr.focus.report`, :mod:`~wsi_deepr.focus.render`,
  :mod:`~wsi_deepr.focus.qc` — the focus QC reports of ``wsi-deepr qc``.

Method, calibration and measured accuracy: ``wsi_deepr/models/defocus-estimator.CARD.md``.
Pure numpy/scipy at run time; nothing is loaded at import.
"""

from __future__ import annotations

from wsi_deepr.focus.estimate import IN_FOCUS_UM, DefocusEstimate, estimate_defocus, lacks_signature, na_prior
from wsi_deepr.focus.map import DEFAULT_WINDOW_UM, DefocusMap, defocus_map, resample_to_grid

__all__ = [
    "DEFAULT_WINDOW_UM",
    "IN_FOCUS_UM",
    "DefocusEstimate",
    "DefocusMap",
    "defocus_map",
    "estimate_defocus",
    "lacks_signature",
    "na_prior",
    "resample_to_grid",
]
