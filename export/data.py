"""Torch adapter over :class:`wsi_deepr.data.dataset.PairDataset`.

Model space and normalisation
-----------------------------
The exported model takes the slide normalised by its card's ``normalization``
(applied per slide by :mod:`wsi_deepr.inference.normalization`) and its output is mapped
back with the *same* statistics.  Training reproduces that:

``range`` (brightfield, 8-bit storage)
    model space = ``stored / intensity_scale`` = ``slide / 255``, exactly what
    ``range`` does to an 8-bit slide.  Input and target use the same mapping.
    The paper's zero-mean, unit-variance standardisation is done *inside* the
    generator with the training split's input statistics (fixed buffers), so
    it needs nothing from the slide.
``range`` (fluorescence, 16-bit storage)
    every source is stored divided by its 99.9th percentile, so model space is
    ``slide / p99.9``: the card says ``percentile:0:99.9`` (see
    :attr:`TorchPairs.card_normalization`).
``zscore``
    model space = ``(stored / intensity_scale - mean_in) / std_in`` for input
    and target alike, with the training split's input statistics standing in
    for the slide's own (approximate: a slide's statistics include background).

In both cases :attr:`TorchPairs.to_range` maps model space to ``[0, 1]``
(for MS-SSIM, SSIM, PSNR) and :attr:`TorchPairs.to_std` to the standardised
space (for BerHu and the discriminator).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from wsi_deepr.data.dataset import PairDataset
from wsi_deepr.data.pairs import dihedral

__all__ = ["NORMALIZATIONS", "TorchPairs"]

log = logging.getLogger(__name__)

NORMALIZATIONS = ("range", "zscore")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _read_rows(array, rows: np.ndarray, slab: int = 256) -> np.ndarray:
    """``array[rows]`` read in contiguous slabs (one request per slab, not per row)."""
    out = np.empty((rows.size,) + tuple(array.shape[1:]), dtype=array.dtype)
    rows = np.asarray(rows)
    for start in range(0, int(rows.max()) + 1 if rows.size else 0, slab):
        sel = np.nonzero((rows >= start) & (rows < start + slab))[0]
        if sel.size:
            lo, hi = int(rows[sel].min()), int(rows[sel].max()) + 1
            out[sel] = array[lo:hi][rows[sel] - lo]
    return out


class TorchPairs(torch.utils.data.Dataset):
    """One split of a pair dataset as model-space tensors.

    Parameters
    ----------
    path : str or Path
        The dataset (``.zarr``) built by ``wsi-deepr dataset``.
    split : {"train", "val", "all"}
        Which samples.
    normalization : {"range", "zscore"}
        Model-space mapping (see the module docstring).
    crop : int, optional
        Random square crop at training time (a multiple of 16); ``None`` keeps
        the whole patch.
    augment : bool
        Random dihedral transform (8 flips/rotations), training only.
    preload : bool
        Read the split's pixels into memory once (stored dtype).
    seed : int
        Seed of :meth:`__getitem__`'s random crops/flips.
    """

    def __init__(self, path: str | Path, *, split: str = "train", normalization: str = "range",
                 crop: int | None = None, augment: bool = False, preload: bool = True, seed: int = 0) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r}: use one of {NORMALIZATIONS}")
        self.pairs = PairDataset(path, split=split, augment=False, normalize=False, layout="HWC")
        self.path, self.split, self.normalization = Path(path), split, normalization
        self.crop, self.augment = crop, augment
        attrs = self.pairs.attrs
        self.patch_size = int(attrs["patch_size"])
        if crop is not None and not (16 <= crop <= self.patch_size and crop % 16 == 0):
            raise ValueError(f"crop={crop!r}: a multiple of 16 in [16, patch_size={self.patch_size}]")
        if len(self.pairs) == 0:
            raise ValueError(f"{path}: no {split!r} samples; rebuild the dataset with a val_fraction that "
                             "leaves some fields of view in each split")
        norm = attrs["normalization"]
        self.mean_in = np.asarray(norm["input"]["mean"], np.float32)
        self.std_in = np.asarray(norm["input"]["std"], np.float32)
        self.std_target = np.asarray(norm["target"]["std"], np.float32)
        if not (np.all(np.isfinite(self.std_in)) and np.all(self.std_in > 0)):
            raise ValueError(f"{path}: recorded input statistics {norm['input']} are unusable (empty train split?)")
        self.scale = np.float32(attrs["intensity_scale"])
        self._rng = np.random.default_rng(seed)
        self._inputs = self._targets = None
        import zarr

        group = zarr.open_group(str(self.path), mode="r")
        rows = self.pairs.indices
        self._z = np.asarray(group["z_um"][:], np.float32)[rows]
        self._px_all = np.asarray(group["pixel_size_um"][:], np.float64)
        if preload:
            self._inputs, self._targets = (_read_rows(group[name], rows) for name in ("inputs", "targets"))
            log.info("preloaded %d %s pairs (%.0f MB)", len(rows), split,
                     (self._inputs.nbytes + self._targets.nbytes) / 2**20)

    # ---------------------------------------------------------------- metadata
    @property
    def attrs(self) -> dict:
        """The dataset attributes."""
        return self.pairs.attrs

    @property
    def channels(self) -> int:
        """Image channels."""
        return len(self.attrs["channels"])

    @property
    def z_um(self) -> np.ndarray:
        """Defocus of every sample of the split."""
        return self._z

    def generator_stats(self) -> tuple[list[float], list[float]]:
        """Mean and std the generator standardises its model-space input with."""
        if self.normalization == "range":
            return self.mean_in.tolist(), self.std_in.tolist()
        c = self.channels
        return [0.0] * c, [1.0] * c

    def berhu_threshold(self, fraction: float = 0.1) -> float:
        """``fraction`` of the std of the standardised ground truth (mean over channels)."""
        return float(fraction * np.mean(self.std_target / self.std_in))

    def card_info(self) -> dict:
        """Model-card fields that come from the data: modality, channels, mpp, defocus range."""
        summary = self.attrs.get("summary", {})
        px = self._px_all
        known = px[np.isfinite(px)]
        z = summary.get("z_um", {})
        assumed = any(s.get("pixel_size_assumed") for s in self.attrs.get("sources", []))
        return {"modality": self.attrs["modality"], "channels": self.channels,
                "channel_names": list(self.attrs["channels"]),
                "mpp": round(float(np.median(known)), 4) if known.size else None,
                "mpp_range": [round(float(known.min()), 4), round(float(known.max()), 4)] if known.size else None,
                "mpp_assumed_for_some_sources": bool(assumed),
                "defocus_range_um": [round(float(z.get("min", math.nan)), 2), round(float(z.get("max", math.nan)), 2)],
                "normalization": self.card_normalization, "dataset": str(self.path.resolve()),
                "pairs_train_val": [summary.get("train"), summary.get("val")],
                "sources": [s.get("name", s.get("path")) for s in self.attrs.get("sources", [])]}

    @property
    def card_normalization(self) -> str:
        """The inference-side spec (:mod:`wsi_deepr.inference.normalization`) that gives this model space.

        ``range`` on a fluorescence dataset is the dataset's own scaling (every
        source divided by its 99.9th percentile, so 1.0 = that percentile): on a
        slide that is ``percentile:0:99.9``, computed once per slide and channel.
        """
        if self.normalization == "range" and self.attrs.get("modality") == "fluorescence":
            return "percentile:0:99.9"
        return self.normalization

    # ---------------------------------------------------------------- spaces
    def _vec(self, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    def to_range(self, t: torch.Tensor) -> torch.Tensor:
        """Model space -> ``[0, 1]`` intensities."""
        if self.normalization == "range":
            return t
        return t * self._vec(self.std_in, t) + self._vec(self.mean_in, t)

    def to_std(self, t: torch.Tensor) -> torch.Tensor:
        """Model space -> standardised (zero-mean, unit-variance inputs)."""
        if self.normalization == "zscore":
            return t
        return (t - self._vec(self.mean_in, t)) / self._vec(self.std_in, t)

    def _model_space(self, stored: np.ndarray) -> np.ndarray:
        img = stored.astype(np.float32) / self.scale
        if self.normalization == "zscore":
            img = (img - self.mean_in) / self.std_in
        return img

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.pairs)

    def _raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._inputs is not None:
            return self._inputs[i], self._targets[i]
        s = self.pairs[i]  # floats in [0, 1]; re-quantise-free path
        return s["input"] * self.scale, s["target"] * self.scale

    def sample(self, i: int, *, k: int = 0, offset: tuple[int, int] = (0, 0), gray: bool = False,
               contrast: float = 1.0, identity: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` (``CHW`` float32, model space), cropped at ``offset``, dihedral ``k``.

        ``gray`` replaces both images by their luminance (RGB only); ``contrast``
        scales both about the target's mean intensity (clipped to ``[0, 1]``);
        ``identity`` replaces the input by the target (an in-focus input, which
        the generator must leave as it is).
        """
        inp, tgt = self._raw(i)
        if identity:
            inp = tgt
        if self.crop is not None:
            y, x = offset
            inp, tgt = inp[y : y + self.crop, x : x + self.crop], tgt[y : y + self.crop, x : x + self.crop]
        if gray or contrast != 1.0:
            inp, tgt = inp.astype(np.float32), tgt.astype(np.float32)
            if gray and inp.shape[-1] == 3:
                inp, tgt = (np.repeat(a @ _LUMA, 3).reshape(a.shape) for a in (inp, tgt))
            if contrast != 1.0:
                m = tgt.mean()
                inp, tgt = (np.clip(m + contrast * (a - m), 0.0, self.scale) for a in (inp, tgt))
        out = []
        for a in (inp, tgt):
            a = self._model_space(a)
            if k:
                a = dihedral(a, k)
            out.append(np.ascontiguousarray(np.moveaxis(a, -1, 0)))
        return out[0], out[1]

    def draw(self, rng: np.random.Generator, size: int, *, focus_weight_um: float = 0.0) -> np.ndarray:
        """``size`` sample indices: uniform, or ``∝ 1 / (1 + |z| / focus_weight_um)`` when that is > 0."""
        if focus_weight_um > 0:
            w = 1.0 / (1.0 + np.abs(self._z.astype(np.float64)) / focus_weight_um)
            return rng.choice(len(self), size=size, p=w / w.sum())
        return rng.integers(0, len(self), size)

    def batch(self, rng: np.random.Generator, size: int, *, gray_prob: float = 0.0,
              contrast_jitter: float = 0.0, contrast_range: tuple[float, float] | None = None,
              identity_prob: float = 0.0, focus_weight_um: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """A random training batch (indices, crops, flips and photometric jitter drawn from ``rng``).

        ``gray_prob``: chance that a pair is turned to grey (both images);
        ``contrast_jitter``: both images' contrast scaled by ``U(1 - j, 1 + j)``;
        ``contrast_range`` ``(lo, hi)``: instead, scaled by a log-uniform factor
        in ``[lo, hi]`` (low-contrast, in-focus material must not be taken for
        defocus); ``identity_prob``: chance that the input is the target itself;
        ``focus_weight_um`` ``s`` > 0: pairs are drawn with probability
        ``∝ 1 / (1 + |z| / s)`` instead of uniformly (more of the mild defocus
        that real slides mostly have).
        """
        idx = self.draw(rng, size, focus_weight_um=focus_weight_um)
        span = self.patch_size - (self.crop or self.patch_size) + 1
        pairs = []
        for i in idx:
            k = int(rng.integers(0, 8)) if self.augment else 0
            off = (int(rng.integers(0, span)), int(rng.integers(0, span)))
            gray = bool(gray_prob and rng.random() < gray_prob)
            if contrast_range is not None:
                lo, hi = contrast_range
                contrast = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            else:
                contrast = float(rng.uniform(1 - contrast_jitter, 1 + contrast_jitter)) if contrast_jitter else 1.0
            identity = bool(identity_prob and rng.random() < identity_prob)
            pairs.append(self.sample(int(i), k=k, offset=off, gray=gray, contrast=contrast, identity=identity))
        return (torch.from_numpy(np.stack([p[0] for p in pairs])),
                torch.from_numpy(np.stack([p[1] for p in pairs])))

    def __getitem__(self, i: int) -> dict:
        """Sample ``i`` as tensors (random crop/flip when configured), for a ``DataLoader``."""
        span = self.patch_size - (self.crop or self.patch_size) + 1
        k = int(self._rng.integers(0, 8)) if self.augment else 0
        off = (int(self._rng.integers(0, span)), int(self._rng.integers(0, span)))
        inp, tgt = self.sample(i, k=k, offset=off)
        return {"input": torch.from_numpy(inp), "target": torch.from_numpy(tgt),
                "z_um": float(self._z[i]), "index": int(self.pairs.indices[i])}
