"""Patch ground truth, input/target pairing, field-of-view split, normalisation, flips.

* :func:`patch_grid` tiles a field into non-overlapping patches (each one field
  of view for the split);
* :func:`select_ground_truth` picks, per patch, the plane most similar (SSIM) to
  the EDOF patch: the paper's ground-truth rule;
* :func:`stack_pairs` pairs every plane within ``±max_offset`` planes of the
  ground truth with it;
* :func:`split_by_fov` assigns whole fields of view to train or validation;
* :class:`RunningStats` accumulates per-channel mean/std (recorded, never baked
  into the stored pixels);
* :func:`dihedral` applies one of the 8 flips/rotations (training-time only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_deepr.errors import TilingError

__all__ = [
    "PatchChoice",
    "RunningStats",
    "dihedral",
    "patch_grid",
    "select_ground_truth",
    "split_by_fov",
    "stack_pairs",
]


@dataclass(frozen=True)
class PatchChoice:
    """The ground-truth plane of one patch.

    Attributes
    ----------
    y, x : int
        Top-left corner of the patch in the registered frame.
    plane : int
        Position (in the stack) of the plane most similar to the EDOF patch.
    ssim : tuple of float
        SSIM of every plane's patch to the EDOF patch.
    """

    y: int
    x: int
    plane: int
    ssim: tuple[float, ...]


def patch_grid(shape: tuple[int, int], patch: int, *, stride: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners of ``patch`` x ``patch`` tiles covering ``shape``, centred.

    Raises
    ------
    TilingError
        When the field is smaller than one patch.
    """
    stride = patch if stride is None else stride
    h, w = shape
    if patch < 8 or stride < 1:
        raise TilingError(f"patch={patch!r}, stride={stride!r}: need patch >= 8 and stride >= 1")
    if h < patch or w < patch:
        raise TilingError(
            f"field of {h}x{w} px is smaller than patch={patch}: lower patch_size "
            f"(at most {min(h, w)} here)"
        )
    ny, nx = (h - patch) // stride + 1, (w - patch) // stride + 1
    oy = (h - ((ny - 1) * stride + patch)) // 2
    ox = (w - ((nx - 1) * stride + patch)) // 2
    return [(oy + i * stride, ox + j * stride) for i in range(ny) for j in range(nx)]


def select_ground_truth(
    planes: np.ndarray,
    edof: np.ndarray,
    *,
    patch: int,
    stride: int | None = None,
    data_range: float | None = None,
    sigma: float = 0.0,
    corners: list[tuple[int, int]] | None = None,
) -> list[PatchChoice]:
    """For every patch, the plane with the highest SSIM to the EDOF patch.

    Parameters
    ----------
    planes : numpy.ndarray
        ``(Z, Y, X, C)`` registered planes.
    edof : numpy.ndarray
        ``(Y, X, C)`` extended-depth-of-field image of the same frame.
    patch : int
        Patch side (512 in the paper; smaller for small stacks).
    stride : int, optional
        Default ``patch`` (non-overlapping patches).
    data_range : float, optional
        SSIM data range; default the EDOF's peak-to-peak.
    sigma : float
        Gaussian smoothing (px) of planes and EDOF before comparing, so that
        noise texture (which resampling during registration changes from plane
        to plane) does not decide.  ``0`` compares as is.
    corners : list of (int, int), optional
        Patch corners to evaluate; default :func:`patch_grid`.

    Returns
    -------
    list of PatchChoice
    """
    from skimage.metrics import structural_similarity

    planes = np.asarray(planes, dtype=np.float32)
    edof = np.asarray(edof, dtype=np.float32)
    if planes.shape[1:] != edof.shape:
        raise ValueError(f"planes {planes.shape[1:]} and edof {edof.shape} differ in frame shape")
    rng = float(np.ptp(edof)) if data_range is None else float(data_range)
    if sigma > 0:
        from scipy import ndimage

        planes = ndimage.gaussian_filter(planes, (0, sigma, sigma, 0))
        edof = ndimage.gaussian_filter(edof, (sigma, sigma, 0))
    out = []
    for y, x in (patch_grid(edof.shape[:2], patch, stride=stride) if corners is None else corners):
        ref = edof[y : y + patch, x : x + patch]
        scores = tuple(
            float(structural_similarity(p[y : y + patch, x : x + patch], ref, channel_axis=-1,
                                        data_range=rng, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False))
            for p in planes
        )
        out.append(PatchChoice(y=y, x=x, plane=int(np.argmax(scores)), ssim=scores))
    return out


def stack_pairs(
    choices: list[PatchChoice], z_index: np.ndarray, *, max_offset: int
) -> list[tuple[int, int, int]]:
    """``(patch, input_plane, target_plane)`` for every plane within ``±max_offset`` planes.

    The ground-truth plane itself is included (an in-focus input must stay as it is).
    """
    z_index = np.asarray(z_index)
    pairs = []
    for i, ch in enumerate(choices):
        zt = z_index[ch.plane]
        for k, zk in enumerate(z_index):
            if abs(int(zk) - int(zt)) <= max_offset:
                pairs.append((i, k, ch.plane))
    return pairs


def split_by_fov(
    fov: np.ndarray, *, val_fraction: float = 0.15, seed: int = 0
) -> np.ndarray:
    """``True`` for samples whose field of view goes to validation.

    Whole fields of view are assigned, so no field appears in both subsets.
    At least one field goes to each side when there are two or more.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r}: a fraction in [0, 1)")
    fov = np.asarray(fov)
    ids = np.unique(fov)
    n_val = round(val_fraction * ids.size)
    if val_fraction > 0 and ids.size >= 2:
        n_val = min(max(n_val, 1), ids.size - 1)
    perm = np.random.default_rng(seed).permutation(ids)
    return np.isin(fov, perm[:n_val])


class RunningStats:
    """Per-channel mean and standard deviation accumulated over ``(..., C)`` batches."""

    def __init__(self, channels: int) -> None:
        self.n = 0
        self.sum = np.zeros(channels, dtype=np.float64)
        self.sumsq = np.zeros(channels, dtype=np.float64)

    def update(self, batch: np.ndarray) -> None:
        """Add every pixel of ``batch`` (channels last)."""
        b = np.asarray(batch, dtype=np.float32).reshape(-1, self.sum.size)
        self.n += b.shape[0]
        self.sum += b.sum(axis=0, dtype=np.float64)
        self.sumsq += np.einsum("ij,ij->j", b, b, dtype=np.float64)

    def result(self) -> dict:
        """``{"mean": [...], "std": [...], "pixels": n}``."""
        if self.n == 0:
            return {"mean": [float("nan")] * self.sum.size, "std": [float("nan")] * self.sum.size,
                    "pixels": 0}
        mean = self.sum / self.n
        var = np.maximum(self.sumsq / self.n - mean**2, 0.0)
        return {"mean": mean.tolist(), "std": np.sqrt(var).tolist(), "pixels": int(self.n)}


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of the square group on the first two axes.

    ``k`` in ``0..7``: rotate by ``(k % 4) * 90`` degrees, then flip
    left-right when ``k >= 4``.
    """
    if not 0 <= k < 8:
        raise ValueError(f"k={k!r}: one of the 8 dihedral transforms 0..7")
    out = np.rot90(image, k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return out
