"""Scale-aware inference: at which pixel size a slide is refocused.

A Deep-R model learns defocus blur *in pixels*: a model trained at 0.5-1.0
µm/px sees a 0.25 µm/px (40×) slide's in-focus detail as blur twice as wide
and over-sharpens it.  So before refocusing, the slide's µm/px is compared
with the model card's training pixel size:

* inside the training range (with a tolerance): the slide is refocused as it
  is (``"native"``);
* finer than the range: it is refocused at the finest pixel size inside the
  range that is available, either a stored pyramid level (``"level"``) or a
  finer level reduced by the smallest integer factor ``f`` that reaches the
  range (area mean of ``f × f`` pixels: ``"downsample"``); a 0.25 µm/px slide
  with 4× levels and a 0.5-1.0 µm/px model is reduced 2× to 0.5 µm/px rather
  than refocused at its 1.0 µm/px level.  The output is written at that pixel
  size, and says so: upsampling it back would invent no detail;
* coarser than the range, or either pixel size unknown: refocused as it is,
  with the reason recorded (upsampling adds no information; an unknown pixel
  size cannot be compared).

``mode="native"`` forces full resolution.  The decision goes into the
output's provenance (:meth:`ScaleDecision.as_dict`).  Pure logic: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["SCALE_MODES", "ScaleDecision", "choose_scale", "training_range"]

SCALE_MODES = ("auto", "native")
#: Relative slack around the training range before a slide counts as outside it.
TOLERANCE = 0.15
#: Half-width (relative) of the range assumed when a card gives ``mpp`` but no range.
DEFAULT_SPREAD = 0.25


@dataclass(frozen=True)
class ScaleDecision:
    """Where the model runs.

    Attributes
    ----------
    action : {"native", "level", "downsample"}
        What is refocused: level 0 as it is, pyramid ``level``, or ``level``
        reduced by ``factor``.
    level : int
        Pyramid level read.
    factor : int
        Integer area-mean reduction applied to that level (1 = none).
    slide_mpp : float or None
        The slide's level-0 µm/px (mean of y and x).
    processing_mpp : float or None
        µm/px of the refocused (and written) image.
    model_mpp, model_mpp_range
        From the model card.
    reason : str
        One line for logs and provenance.
    """

    action: str
    level: int
    factor: int
    slide_mpp: float | None
    processing_mpp: float | None
    model_mpp: float | None
    model_mpp_range: tuple[float, float] | None
    reason: str

    @property
    def downsample(self) -> float:
        """Processing µm/px over the slide's (1.0 for ``native``)."""
        if self.slide_mpp and self.processing_mpp:
            return self.processing_mpp / self.slide_mpp
        return 1.0

    def as_dict(self) -> dict:
        """JSON-friendly dict (provenance)."""
        d = asdict(self)
        d["model_mpp_range"] = list(self.model_mpp_range) if self.model_mpp_range else None
        return d


def training_range(model_mpp: float | None, model_mpp_range: Sequence[float] | None) -> tuple[float, float] | None:
    """The card's training µm/px range, or ``mpp ± 25 %`` when it gives only ``mpp``."""
    if model_mpp_range is not None:
        lo, hi = (float(v) for v in model_mpp_range)
        if not (0 < lo <= hi):
            raise ValueError(f"model mpp range {model_mpp_range!r}: need 0 < low <= high")
        return lo, hi
    if model_mpp is None:
        return None
    return model_mpp * (1 - DEFAULT_SPREAD), model_mpp * (1 + DEFAULT_SPREAD)


def choose_scale(level_mpps: Sequence[float | None], *, model_mpp: float | None,
                 model_mpp_range: Sequence[float] | None = None, mode: str = "auto",
                 tolerance: float = TOLERANCE) -> ScaleDecision:
    """Decide where to refocus a slide whose levels have µm/px ``level_mpps``.

    Parameters
    ----------
    level_mpps : sequence of float or None
        µm/px of every pyramid level, level 0 first (``None`` if unknown).
    model_mpp : float or None
        The card's training µm/px (median).
    model_mpp_range : (float, float), optional
        The card's training range; default ``model_mpp ± 25 %``.
    mode : {"auto", "native"}
        ``"native"`` always refocuses level 0 (the decision still records the
        mismatch).
    tolerance : float
        Relative slack around the range.

    Returns
    -------
    ScaleDecision
    """
    if mode not in SCALE_MODES:
        raise ValueError(f"scale mode {mode!r}: use one of {', '.join(SCALE_MODES)}")
    if not level_mpps:
        raise ValueError("level_mpps is empty: a slide has at least one level")
    s0 = level_mpps[0]
    rng = training_range(model_mpp, model_mpp_range)
    rng_t = None if rng is None else (rng[0] * (1 - tolerance), rng[1] * (1 + tolerance))

    def native(reason: str) -> ScaleDecision:
        return ScaleDecision("native", 0, 1, s0, s0, model_mpp, rng, reason)

    if s0 is None:
        return native("the slide records no pixel size: refocused as it is")
    if rng_t is None:
        return native("the model card gives no training pixel size: refocused as it is")
    where = f"slide {s0:.3g} µm/px, model trained at {rng[0]:.3g}-{rng[1]:.3g} µm/px"
    if rng_t[0] <= s0 <= rng_t[1]:
        return native(f"{where}: inside the training range")
    if s0 > rng_t[1]:
        return native(f"{where}: the slide is coarser than the training range; refocused as it is "
                      "(upsampling would add no detail; expect weaker refocusing)")
    if mode == "native":
        return native(f"{where}: finer than the training range, but native scale was requested "
                      "(expect over-sharpening)")
    # Candidates: pyramid levels inside the range, and finer levels reduced by the smallest integer factor
    # that reaches it.  The finest processing pixel size wins (most detail kept); on a tie a stored level
    # (no reduction work), then the coarser source level (fewer pixels read).
    candidates = []
    for k, m in enumerate(level_mpps):
        if m is None:
            continue
        if rng_t[0] <= m <= rng_t[1]:
            candidates.append((m, 0, -m, k, 1))
        elif m < rng_t[0]:
            factor = max(2, math.ceil(rng[0] / m - 1e-9))
            if m * factor <= rng_t[1]:
                candidates.append((m * factor, 1, -m, k, factor))
    if not candidates:  # a range too narrow for any integer factor: the closest reduction from level 0
        factor = max(2, round(rng[0] / s0))
        candidates.append((s0 * factor, 1, -s0, 0, factor))
    best = min(candidates, key=lambda c: (round(c[0], 6), c[1], c[2]))
    m, _, _, k, factor = best
    if factor == 1:
        return ScaleDecision("level", k, 1, s0, m, model_mpp, rng,
                             f"{where}: refocusing pyramid level {k} ({m:.3g} µm/px)")
    return ScaleDecision("downsample", k, factor, s0, m, model_mpp, rng,
                         f"{where}: refocusing level {k} reduced {factor}× ({m:.3g} µm/px)")
