"""Deep-R losses: BerHu, (MS-)SSIM and the least-squares GAN terms.

* :func:`berhu` — the reverse Huber loss: ``|e|`` up to the threshold ``c``,
  ``(e**2 + c**2) / (2 c)`` beyond it (continuous, with continuous slope at ``c``).
* :func:`ssim` / :func:`ms_ssim` — Wang et al.'s SSIM with an 11-tap Gaussian
  window (sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, valid region only, population
  covariance), i.e. scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)``; MS-SSIM (Wang, Simoncelli & Bovik
  2003) with the standard five weights, renormalised when the image is too small
  for five scales.  Contrast-structure terms are clamped at zero before the
  fractional powers (negative values would give NaN).
* :func:`generator_terms` / :func:`discriminator_loss` — the paper's
  ``L_G = lambda (1 - D(G(x)))**2 + nu (1 - MS-SSIM(y, G(x))) + xi BerHu(y, G(x))``
  and ``L_D = D(G(x))**2 + (1 - D(y))**2``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["MS_SSIM_WEIGHTS", "berhu", "discriminator_loss", "gaussian_window", "ms_ssim", "ssim"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_K1, _K2 = 0.01, 0.03


def berhu(pred: torch.Tensor, target: torch.Tensor, *, c: float) -> torch.Tensor:
    """Mean reverse-Huber (BerHu) error.

    Parameters
    ----------
    pred, target : torch.Tensor
        Tensors of the same shape.
    c : float
        Threshold (> 0) between the L1 and the scaled L2 branch.
    """
    if not c > 0:
        raise ValueError(f"c={c!r}: the BerHu threshold must be > 0")
    e = (pred - target).abs()
    return torch.where(e <= c, e, (e * e + c * c) / (2.0 * c)).mean()


@functools.lru_cache(maxsize=8)
def _window_1d(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return (g / g.sum()).float()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian window (``float32``)."""
    return _window_1d(int(size), float(sigma))


def _blur(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable valid-mode Gaussian filter of every channel of ``(N, C, H, W)``."""
    c = x.shape[1]
    k = win.to(dtype=x.dtype, device=x.device)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, *, data_range: float, win: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean SSIM and contrast-structure term, ``(N, C)`` each."""
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mu_x, mu_y = _blur(x, win), _blur(y, win)
    sxx = _blur(x * x, win) - mu_x * mu_x
    syy = _blur(y * y, win) - mu_y * mu_y
    sxy = _blur(x * y, win) - mu_x * mu_y
    cs = (2.0 * sxy + c2) / (sxx + syy + c2)
    lum = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return (lum * cs).mean(dim=(2, 3)), cs.mean(dim=(2, 3))


def _check(x: torch.Tensor, y: torch.Tensor, win_size: int) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"shapes {tuple(x.shape)} and {tuple(y.shape)}: need two (N, C, H, W) tensors alike")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images of {tuple(x.shape[-2:])} px are smaller than the {win_size}-px SSIM window")


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM over images and channels (one scale).

    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=data_range)`` averaged over
    channels.
    """
    _check(x, y, win_size)
    s, _ = _ssim_cs(x, y, data_range=data_range, win=gaussian_window(win_size, sigma))
    return s.mean()


def ms_ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, win_size: int = 11,
            sigma: float = 1.5, weights: tuple[float, ...] = MS_SSIM_WEIGHTS) -> torch.Tensor:
    """Mean multi-scale SSIM over images and channels.

    Uses as many of the five scales as fit the window (at least one); the
    weights of the scales used are renormalised to sum to one.
    """
    _check(x, y, win_size)
    side = min(x.shape[-2:])
    scales = 1
    while scales < len(weights) and side // 2**scales >= win_size:
        scales += 1
    w = torch.tensor(weights[:scales], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    win = gaussian_window(win_size, sigma)
    values = []
    for k in range(scales):
        s, cs = _ssim_cs(x, y, data_range=data_range, win=win)
        values.append(torch.relu(s if k == scales - 1 else cs))
        if k < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(values, dim=0)  # (scales, N, C)
    # clamp away from 0 so the gradient of v**w stays finite
    return torch.prod(stacked.clamp_min(1e-6) ** w.view(-1, 1, 1), dim=0).mean()


def generator_terms(d_fake: torch.Tensor | None, pred: torch.Tensor, target: torch.Tensor, *,
                    pred_range: torch.Tensor, target_range: torch.Tensor, c: float) -> dict[str, torch.Tensor]:
    """The three unweighted terms of ``L_G``.

    Parameters
    ----------
    d_fake : torch.Tensor or None
        ``D(G(x))``; ``None`` leaves out the adversarial term (warm start).
    pred, target : torch.Tensor
        Output and ground truth in the standardised space (BerHu).
    pred_range, target_range : torch.Tensor
        The same in model space, ``[0, 1]``-ranged (MS-SSIM, ``data_range=1``).
    c : float
        BerHu threshold.
    """
    terms = {"msssim": 1.0 - ms_ssim(pred_range, target_range, data_range=1.0),
             "berhu": berhu(pred, target, c=c)}
    terms["adv"] = ((1.0 - d_fake) ** 2).mean() if d_fake is not None else pred.new_zeros(())
    return terms


def discriminator_loss(d_fake: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """``L_D = D(G(x))**2 + (1 - D(y))**2`` (batch mean)."""
    return (d_fake**2).mean() + ((1.0 - d_real) ** 2).mean()
