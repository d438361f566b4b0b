"""Register the planes of a focal series (translation, rotation and scale).

Like ImageJ's StackReg, every plane is registered to its neighbour towards the
reference plane (by default the sharpest one) and the transforms are chained, so each registration only has
to bridge one focal step.  Each step is a similarity transform (focus changes
magnification slightly) estimated by phase correlation for the translation and
refined by Gauss-Newton (Lucas-Kanade) on a three-level pyramid, with a gain
and an offset absorbing the contrast change between planes.  The planes are then
resampled into the reference plane's frame and cropped to the largest rectangle
that every plane covers.

Transforms are 3x3 homogeneous matrices acting on ``(y, x, 1)`` and map the
*reference frame* to the *plane's own pixel coordinates*.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsi_deepr.data.stacks import ZStack, to_gray
from wsi_deepr.imaging.reduce import area_mean

__all__ = [
    "RegistrationResult",
    "estimate_similarity",
    "largest_valid_rectangle",
    "register_stack",
    "registration_residuals",
    "sharpest_plane",
    "warp_to_frame",
]

log = logging.getLogger(__name__)


@dataclass
class RegistrationResult:
    """Registered, cropped focal series.

    Attributes
    ----------
    planes : numpy.ndarray
        ``(Z, Y, X, C)`` float32 planes in the reference frame, cropped to the
        common field (intensities unchanged: no gain correction is applied).
    transforms : list of numpy.ndarray
        Per plane, the 3x3 map from the reference frame to the plane's pixels.
    reference : int
        Position of the reference plane.
    crop : tuple of int
        ``(y0, x0, y1, x1)`` of the common field in the reference frame.
    """

    planes: np.ndarray
    transforms: list[np.ndarray]
    reference: int
    crop: tuple[int, int, int, int]

    def parameters(self) -> list[dict]:
        """Scale, rotation (degrees) and translation (px) of every plane's transform."""
        out = []
        for t in self.transforms:
            a = t[:2, :2]
            out.append({"scale": float(np.sqrt(abs(np.linalg.det(a)))),
                        "rotation_deg": float(np.degrees(np.arctan2(a[1, 0], a[0, 0]))),
                        "ty": float(t[0, 2]), "tx": float(t[1, 2])})
        return out


def _similarity_matrix(params: np.ndarray, c_fixed: np.ndarray, c_moving: np.ndarray) -> np.ndarray:
    """``q = A (p - c_fixed) + c_moving + t`` with ``A = [[1+a, -b], [b, 1+a]]``."""
    a, b, ty, tx = params
    A = np.array([[1 + a, -b], [b, 1 + a]])
    m = np.eye(3)
    m[:2, :2] = A
    m[:2, 2] = c_moving + np.array([ty, tx]) - A @ c_fixed
    return m


def _params_from_matrix(m: np.ndarray, c_fixed: np.ndarray, c_moving: np.ndarray) -> np.ndarray:
    A = m[:2, :2]
    a = 0.5 * (A[0, 0] + A[1, 1]) - 1.0
    b = 0.5 * (A[1, 0] - A[0, 1])
    t = m[:2, 2] + A @ c_fixed - c_moving
    return np.array([a, b, t[0], t[1]])


def _downscale(img: np.ndarray, f: int) -> np.ndarray:
    return area_mean(img, f, edge="crop", dtype=np.float64)


def _normalise(img: np.ndarray) -> np.ndarray:
    img = ndimage.gaussian_filter(img, 0.7)
    return (img - img.mean()) / (img.std() + 1e-12)


def _phase_translation(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Translation ``(ty, tx)`` of moving relative to fixed, centres aligned."""
    from skimage.registration import phase_cross_correlation

    h = min(fixed.shape[0], moving.shape[0])
    w = min(fixed.shape[1], moving.shape[1])

    def centre(img: np.ndarray) -> np.ndarray:
        y0 = (img.shape[0] - h) // 2
        x0 = (img.shape[1] - w) // 2
        return img[y0 : y0 + h, x0 : x0 + w]

    f, m = centre(fixed), centre(moving)
    win = np.outer(np.hanning(h), np.hanning(w))
    shift, _, _ = phase_cross_correlation(f * win, m * win, upsample_factor=10, normalization=None)
    # shift registers moving onto fixed: moving(p - shift) ~ fixed(p)
    off_f = np.array([(fixed.shape[0] - h) // 2, (fixed.shape[1] - w) // 2])
    off_m = np.array([(moving.shape[0] - h) // 2, (moving.shape[1] - w) // 2])
    c_f = (np.array(fixed.shape) - 1) / 2
    c_m = (np.array(moving.shape) - 1) / 2
    # fixed p  <->  crop p - off_f  <->  moving (p - off_f) - shift + off_m
    return (-shift - off_f + off_m) - (c_m - c_f)


def estimate_similarity(
    fixed: np.ndarray,
    moving: np.ndarray,
    *,
    init: np.ndarray | None = None,
    levels: int = 3,
    iterations: int = 60,
    border: int = 4,
) -> np.ndarray:
    """Similarity transform mapping ``fixed`` pixel coordinates onto ``moving``'s.

    Parameters
    ----------
    fixed, moving : numpy.ndarray
        2-D grey images; they may differ in size.
    init : numpy.ndarray, optional
        Initial 3x3 transform; default: phase correlation with centres aligned.
    levels : int
        Pyramid levels (factor 2 each).
    iterations : int
        Gauss-Newton iterations per level at most.
    border : int
        Pixels near the moving image's border excluded from the fit.

    Returns
    -------
    numpy.ndarray
        3x3 matrix ``M`` with ``moving(M @ p) ~ gain * fixed(p) + offset``.
    """
    fixed = _normalise(np.asarray(fixed, dtype=np.float64))
    moving = _normalise(np.asarray(moving, dtype=np.float64))
    c_f = (np.array(fixed.shape, dtype=float) - 1) / 2
    c_m = (np.array(moving.shape, dtype=float) - 1) / 2
    if init is None:
        params = np.array([0.0, 0.0, *_phase_translation(fixed, moving)])
    else:
        params = _params_from_matrix(init, c_f, c_m)
    for lev in range(levels - 1, -1, -1):
        f = 2**lev
        F, M = _downscale(fixed, f), _downscale(moving, f)
        cf_l, cm_l = (c_f - (f - 1) / 2) / f, (c_m - (f - 1) / 2) / f
        gy, gx = np.gradient(M)
        yy, xx = np.mgrid[0 : F.shape[0], 0 : F.shape[1]].astype(np.float64)
        dy, dx = yy - cf_l[0], xx - cf_l[1]
        p = params.copy()
        p[2:] /= f
        gain, offset = 1.0, 0.0
        bl = max(1.0, border / f)
        for _ in range(iterations):
            m = _similarity_matrix(p, cf_l, cm_l)
            qy = m[0, 0] * yy + m[0, 1] * xx + m[0, 2]
            qx = m[1, 0] * yy + m[1, 1] * xx + m[1, 2]
            valid = (qy >= bl) & (qy <= M.shape[0] - 1 - bl) & (qx >= bl) & (qx <= M.shape[1] - 1 - bl)
            if valid.sum() < 64:
                break
            coords = np.stack([qy[valid], qx[valid]])
            mw = ndimage.map_coordinates(M, coords, order=1)
            gyw = ndimage.map_coordinates(gy, coords, order=1)
            gxw = ndimage.map_coordinates(gx, coords, order=1)
            dyv, dxv = dy[valid], dx[valid]
            # model: gain * M(W(p)) + offset ~ F(p)
            J = np.stack([
                gain * (gyw * dyv + gxw * dxv),
                gain * (-gyw * dxv + gxw * dyv),
                gain * gyw,
                gain * gxw,
                mw,
                np.ones_like(mw),
            ], axis=1)
            r = F[valid] - (gain * mw + offset)
            delta, *_ = np.linalg.lstsq(J, r, rcond=None)
            p += delta[:4]
            gain += delta[4]
            offset += delta[5]
            shift = np.abs(delta[0:2]).max() * max(F.shape) + np.abs(delta[2:4]).max()
            if shift < 1e-2:
                break
        p[2:] *= f
        params = p
    return _similarity_matrix(params, c_f, c_m)


def warp_to_frame(
    plane: np.ndarray, transform: np.ndarray, shape: tuple[int, int], *, order: int = 1
) -> np.ndarray:
    """Resample ``(Y, X, C)`` ``plane`` into a frame of ``shape`` through ``transform``."""
    arr = np.asarray(plane, dtype=np.float32)
    out = np.empty((shape[0], shape[1], arr.shape[2]), dtype=np.float32)
    for c in range(arr.shape[2]):
        out[:, :, c] = ndimage.affine_transform(
            arr[:, :, c], transform[:2, :2], offset=transform[:2, 2], output_shape=shape,
            order=order, mode="nearest",
        )
    return out


def _valid_mask(transform: np.ndarray, plane_shape: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    qy = transform[0, 0] * yy + transform[0, 1] * xx + transform[0, 2]
    qx = transform[1, 0] * yy + transform[1, 1] * xx + transform[1, 2]
    return (qy >= 0) & (qy <= plane_shape[0] - 1) & (qx >= 0) & (qx <= plane_shape[1] - 1)


def largest_valid_rectangle(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Largest axis-aligned all-True rectangle ``(y0, x0, y1, x1)`` of a 2-D mask."""
    h, w = mask.shape
    heights = np.zeros(w, dtype=np.int64)
    best = (0, 0, 0, 0, 0)
    for y in range(h):
        heights = np.where(mask[y], heights + 1, 0)
        stack: list[int] = []
        for x in range(w + 1):
            cur = heights[x] if x < w else 0
            while stack and heights[stack[-1]] >= cur:
                top = stack.pop()
                left = stack[-1] + 1 if stack else 0
                area = int(heights[top]) * (x - left)
                if area > best[0]:
                    best = (area, y - int(heights[top]) + 1, left, y + 1, x)
            stack.append(x)
    return best[1], best[2], best[3], best[4]


def sharpest_plane(stack: ZStack) -> int:
    """Position of the plane with the highest normalised Brenner focus measure.

    ``mean((I[y+2] - I[y])^2 + (I[:, x+2] - I[:, x])^2) / mean(I)^2`` on the
    luminance after a 1-px Gaussian (so that noise does not win).
    """
    scores = []
    for p in stack.planes:
        g = ndimage.gaussian_filter(to_gray(p), 1.0)
        b = np.mean((g[2:] - g[:-2]) ** 2) + np.mean((g[:, 2:] - g[:, :-2]) ** 2)
        scores.append(b / max(float(g.mean()) ** 2, 1e-12))
    return int(np.argmax(scores))


def register_stack(stack: ZStack, *, reference: int | None = None, order: int = 1) -> RegistrationResult:
    """Register every plane of ``stack`` to its reference plane and crop to the common field.

    Parameters
    ----------
    stack : ZStack
        The focal series.
    reference : int, optional
        Position of the reference plane; default :func:`sharpest_plane`.
    order : int
        Spline order of the final resampling.

    Returns
    -------
    RegistrationResult
    """
    n = len(stack)
    if reference is None:
        reference = sharpest_plane(stack)
    if not 0 <= reference < n:
        raise ValueError(f"reference={reference!r}: must be a plane position in [0, {n - 1}]")
    gray = [to_gray(p) for p in stack.planes]
    transforms: list[np.ndarray | None] = [None] * n
    transforms[reference] = np.eye(3)
    for direction in (1, -1):
        k = reference + direction
        while 0 <= k < n:
            j = k - direction
            step = estimate_similarity(gray[j], gray[k])  # plane j pixels -> plane k pixels
            transforms[k] = step @ transforms[j]
            log.debug("plane %d -> %d: %s", k, j, np.round(step, 4).tolist())
            k += direction
    shape = gray[reference].shape
    mask = np.ones(shape, dtype=bool)
    for t, g in zip(transforms, gray):
        mask &= _valid_mask(t, g.shape, shape)
    y0, x0, y1, x1 = largest_valid_rectangle(mask)
    crop_shift = np.eye(3)
    crop_shift[:2, 2] = [y0, x0]
    final = [t @ crop_shift for t in transforms]
    planes = np.stack([warp_to_frame(p, t, (y1 - y0, x1 - x0), order=order)
                       for p, t in zip(stack.planes, final)])
    log.info("registered %d planes; common field %dx%d", n, y1 - y0, x1 - x0)
    return RegistrationResult(planes=planes, transforms=transforms, reference=reference,
                              crop=(y0, x0, y1, x1))


def _max_displacement(m: np.ndarray, shape: tuple[int, int]) -> float:
    h, w = shape
    corners = np.array([[0, 0, 1], [0, w - 1, 1], [h - 1, 0, 1], [h - 1, w - 1, 1]], dtype=float)
    moved = corners @ m.T
    return float(np.abs(moved[:, :2] - corners[:, :2]).max(axis=1).max())


def registration_residuals(registered: np.ndarray, reference: int, *, margin: int = 8) -> dict:
    """Re-measure the alignment of already registered planes.

    For every plane, a fresh similarity (identity start) is estimated against
    its neighbour towards the reference and against the reference itself, and
    an independent sub-pixel cross-correlation (Hann-windowed, 1/100 px) gives
    the translation left to the neighbour and to the reference.

    Parameters
    ----------
    registered : numpy.ndarray
        ``(Z, Y, X, C)`` planes in one frame (:attr:`RegistrationResult.planes`).
    reference : int
        Position of the reference plane.
    margin : int
        Pixels trimmed from each side before measuring.

    Returns
    -------
    dict
        ``neighbour_px``, ``reference_px`` (largest displacement of the field's
        corners under the residual transform), ``phase_px`` and
        ``phase_reference_px`` (cross-correlation shift magnitudes), each a list
        with ``nan`` at the reference, plus their maxima (``max_*``).
    """
    from skimage.registration import phase_cross_correlation

    n = registered.shape[0]
    gray = [to_gray(p)[margin:-margin, margin:-margin] for p in registered]
    shape = gray[0].shape
    eye = np.eye(3)
    win = np.outer(np.hanning(shape[0]), np.hanning(shape[1]))
    neigh, ref, phase, phase_ref = [], [], [], []
    for k in range(n):
        if k == reference:
            for lst in (neigh, ref, phase, phase_ref):
                lst.append(np.nan)
            continue
        j = k - 1 if k > reference else k + 1
        m_n = estimate_similarity(gray[j], gray[k], init=eye)
        m_r = estimate_similarity(gray[reference], gray[k], init=eye)
        neigh.append(_max_displacement(m_n, shape))
        ref.append(_max_displacement(m_r, shape))
        shift, _, _ = phase_cross_correlation(_normalise(gray[j]) * win, _normalise(gray[k]) * win,
                                              upsample_factor=100, normalization=None)
        phase.append(float(np.hypot(*shift)))
        shift, _, _ = phase_cross_correlation(_normalise(gray[reference]) * win, _normalise(gray[k]) * win,
                                              upsample_factor=100, normalization=None)
        phase_ref.append(float(np.hypot(*shift)))
    return {"neighbour_px": neigh, "reference_px": ref, "phase_px": phase, "phase_reference_px": phase_ref,
            "max_neighbour_px": float(np.nanmax(neigh)), "max_reference_px": float(np.nanmax(ref)),
            "max_phase_px": float(np.nanmax(phase)), "max_phase_reference_px": float(np.nanmax(phase_ref))}
