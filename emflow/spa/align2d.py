"""2D aligners of EMAN2's e2refine loop (spec §5.2): ``rotate_translate_flip`` (the ``refine``
aligner, which starts from its result, is :mod:`emflow.spa.refine2d`).

2D transform convention (spec §2.1, EMAN "2d" type): ``T(x) = M · (R(α)·x + t)`` with ``x = (x, y)``
in pixels from the box centre ``n//2``, ``R(α)`` the counter-clockwise rotation by ``α`` degrees
in the (x, y) plane (y = row index), ``t = (tx, ty)`` and ``M = diag(−1, 1)`` when ``mirror``
(the x-mirror acts *after* rotation and translation). Transforming an image by ``T`` samples
``out(x) = in(T⁻¹ x)`` (bilinear, zero outside). An aligner returns the ``T`` that maps the
*moving* image onto the *target*: ``transform(moving, T) ≈ target`` (EMAN's ``xform.align2d``).

Aligners work on lists of pairs ``(moving[mi[k]], target[ti[k]])`` so a simmx block (particles ×
projections) or a class (particles × one reference) is one batched call.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft

from emflow._interp import bilinear
from emflow._numba import pjit
from emflow.spa import cmp as cmpmod

# ----------------------------------------------------------------------------- transforms


def transform_matrix(alpha, tx, ty, mirror) -> np.ndarray:
    """Homogeneous ``(n, 3, 3)`` float64 matrices of 2D transforms (degrees, px, 0/1 flags)."""
    alpha, tx, ty, mirror = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (alpha, tx, ty, mirror)))
    a = np.deg2rad(alpha.ravel())
    m = np.zeros((a.size, 3, 3))
    sgn = np.where(mirror.ravel() > 0.5, -1.0, 1.0)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = sgn * np.cos(a), -sgn * np.sin(a), sgn * tx.ravel()
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = np.sin(a), np.cos(a), ty.ravel()
    m[:, 2, 2] = 1.0
    return m


def params_from_matrix(m: np.ndarray):
    """Inverse of :func:`transform_matrix`: ``(alpha_deg, tx, ty, mirror)`` arrays."""
    m = np.asarray(m, np.float64).reshape(-1, 3, 3)
    mirror = np.linalg.det(m[:, :2, :2]) < 0
    sgn = np.where(mirror, -1.0, 1.0)
    alpha = np.rad2deg(np.arctan2(m[:, 1, 0], m[:, 1, 1]))
    return alpha, sgn * m[:, 0, 2], m[:, 1, 2], mirror.astype(np.float64)


def invert_params(alpha, tx, ty, mirror):
    """Parameters of ``T⁻¹``."""
    return params_from_matrix(np.linalg.inv(transform_matrix(alpha, tx, ty, mirror)))


def compose_params(second, first):
    """Parameters of ``second ∘ first`` (apply ``first``, then ``second``); each a 4-tuple."""
    return params_from_matrix(transform_matrix(*second) @ transform_matrix(*first))


@pjit
def _transform_kernel(images, index, alpha, tx, ty, mirror, out):  # pragma: no cover - numba
    n, ny, nx = out.shape
    cy, cx = ny // 2, nx // 2
    for k in numba.prange(n):
        img = images[index[k]]
        ca, sa = math.cos(alpha[k]), math.sin(alpha[k])
        for row in range(ny):
            for col in range(nx):
                x = float(col - cx)
                if mirror[k] > 0.5:
                    x = -x
                x -= tx[k]
                y = float(row - cy) - ty[k]
                sx = ca * x + sa * y + cx  # R(−α) · (M x' − t)
                sy = -sa * x + ca * y + cy
                out[k, row, col] = bilinear(img, sx, sy)


def transform_images(images, alpha, tx, ty, mirror, index=None) -> np.ndarray:
    """Apply 2D transforms to images: ``out[k] = T_k(images[index[k]])`` (see module docstring).

    ``images`` ``(m, ny, nx)`` float32; parameter arrays ``(n,)`` (degrees, px, flags);
    ``index`` ``(n,)`` int (default ``arange(n)``). Returns ``(n, ny, nx)`` float32.
    """
    images = np.ascontiguousarray(images, np.float32)
    if images.ndim == 2:
        images = images[None]
    alpha, tx, ty, mirror = (np.atleast_1d(np.asarray(v, np.float64)) for v in (alpha, tx, ty, mirror))
    n = max(len(alpha), len(tx), len(ty), len(mirror)) if index is None else len(index)
    alpha, tx, ty, mirror = (np.ascontiguousarray(np.broadcast_to(v, (n,))) for v in (alpha, tx, ty, mirror))
    index = np.arange(n) if index is None else np.asarray(index, np.int64)
    out = np.empty((n,) + images.shape[1:], np.float32)
    _transform_kernel(images, index, np.deg2rad(alpha), tx, ty, mirror, out)
    return out


def mirror_images(images: np.ndarray) -> np.ndarray:
    """x-mirror about the centre column ``nx//2`` (``out(x, y) = in(−x, y)``; column 0 becomes 0)."""
    n = len(images)
    return transform_images(images, np.zeros(n), np.zeros(n), np.zeros(n), np.ones(n))


# ----------------------------------------------------------------------------- footprints


def n_angles(ny: int) -> int:
    """Angular samples of a footprint over 180° (``≈ π·ny/3``, FFT friendly)."""
    return scipy.fft.next_fast_len(max(16, int(round(math.pi * ny / 3))), real=True)


@pjit
def _polar_unwrap(images, rmin, rmax, nang, out):  # pragma: no cover - numba
    n, ny, nx = images.shape
    cy, cx = ny // 2, nx // 2
    for k in numba.prange(n):
        for ir in range(rmax - rmin + 1):
            r = float(rmin + ir)
            for ia in range(nang):
                th = math.pi * ia / nang
                sx = r * math.cos(th) + cx
                sy = r * math.sin(th) + cy
                x0, y0 = int(math.floor(sx)), int(math.floor(sy))
                fx, fy = sx - x0, sy - y0
                out[k, ir, ia] = ((1 - fy) * ((1 - fx) * images[k, y0, x0] + fx * images[k, y0, x0 + 1])
                                  + fy * ((1 - fx) * images[k, y0 + 1, x0] + fx * images[k, y0 + 1, x0 + 1]))


def footprints(images: np.ndarray, nang: int | None = None, workers: int = -1) -> np.ndarray:
    """Rotational footprints (spec §5.2, rfp_mode 2), FFT'd along angle.

    The footprint is the centred inverse FFT of the high-passed amplitude spectrum (translation
    invariant, centrosymmetric), edge-mean subtracted and unwrapped to polar radii ``4 … ny/2−2``
    over 180°. Returns complex128 ``(n, n_radii, nang//2+1)``: the rfft over angle, ready for
    circular cross-correlation by :func:`rotation_ccf`.
    """
    images = np.asarray(images, np.float32)
    n, ny, nx = images.shape
    nang = nang or n_angles(ny)
    amp = np.abs(scipy.fft.rfft2(images, axes=(-2, -1), workers=workers))
    fy = scipy.fft.fftfreq(ny)[:, None]
    fx = scipy.fft.rfftfreq(nx)[None, :]
    sigma = 1.5 / nx
    amp *= 1.0 - np.exp(-(fx**2 + fy**2) / (2 * sigma**2))
    fp = scipy.fft.fftshift(scipy.fft.irfft2(amp, s=(ny, nx), axes=(-2, -1), workers=workers), axes=(-2, -1))
    yy, xx = np.indices((ny, nx))
    edge = np.hypot(yy - ny // 2, xx - nx // 2) >= ny // 2 - 1
    fp = (fp - fp[:, edge].mean(axis=1)[:, None, None]).astype(np.float32)
    rmin, rmax = min(4, ny // 4), ny // 2 - 2
    polar = np.empty((n, rmax - rmin + 1, nang), np.float32)
    _polar_unwrap(np.ascontiguousarray(fp), rmin, rmax, nang, polar)
    return scipy.fft.rfft(polar, axis=-1, workers=workers)


def rotation_ccf(fp_target: np.ndarray, fp_moving: np.ndarray, nang: int) -> np.ndarray:
    """Best rotation ``α`` (degrees in [0, 180)) taking moving footprints onto target ones.

    ``fp_*``: paired footprint FTs ``(n, n_radii, nang//2+1)``; parabolic sub-sample peak.
    """
    ccf = scipy.fft.irfft(np.einsum("prk,prk->pk", fp_target, fp_moving.conj()), n=nang, axis=-1)
    k = np.argmax(ccf, axis=1)
    rows = np.arange(len(k))
    c0, cm, cp = ccf[rows, k], ccf[rows, (k - 1) % nang], ccf[rows, (k + 1) % nang]
    den = cm - 2 * c0 + cp
    frac = np.divide(0.5 * (cm - cp), den, out=np.zeros_like(den), where=den < 0)
    return ((k + np.clip(frac, -0.5, 0.5)) * 180.0 / nang) % 180.0


# ----------------------------------------------------------------------------- translation


@pjit
def _ccf_peak(ccf, maxshift, sx, sy):  # pragma: no cover - numba
    n, ny, nx = ccf.shape
    for k in numba.prange(n):
        best, bx, by = -np.inf, 0, 0
        for dy in range(-maxshift, maxshift + 1):
            for dx in range(-maxshift, maxshift + 1):
                v = ccf[k, dy % ny, dx % nx]
                if v > best:
                    best, bx, by = v, dx, dy
        sx[k], sy[k] = bx, by


def translational_peak(target_ft, moving_images, maxshift: int, workers: int = -1):
    """Integer shift ``t`` (px) maximising Σ target(x) moving(x − t), ``|t_i| ≤ maxshift``.

    ``target_ft`` ``(n, ny, nx//2+1)`` plain rfft2 of the targets; ``moving_images`` ``(n, ny, nx)``.
    """
    ny, nx = moving_images.shape[-2:]
    mft = scipy.fft.rfft2(moving_images, axes=(-2, -1), workers=workers)
    ccf = scipy.fft.irfft2(target_ft * mft.conj(), s=(ny, nx), axes=(-2, -1), workers=workers)
    sx, sy = np.zeros(len(ccf), np.int64), np.zeros(len(ccf), np.int64)
    _ccf_peak(np.ascontiguousarray(ccf, np.float32), int(maxshift), sx, sy)
    return sx, sy


@pjit
def _shift_int(images, sx, sy, out):  # pragma: no cover - numba
    n, ny, nx = images.shape
    for k in numba.prange(n):
        for row in range(ny):
            yy = row - sy[k]
            for col in range(nx):
                xx = col - sx[k]
                out[k, row, col] = images[k, yy, xx] if (0 <= yy < ny and 0 <= xx < nx) else 0.0


# ----------------------------------------------------------------------------- aligners


class PreparedTargets:
    """Targets (and their x-mirrors) with cached FFTs and footprints for repeated alignment."""

    def __init__(self, targets: np.ndarray, flip: bool = True, workers: int = -1):
        self.images = np.ascontiguousarray(targets, np.float32)
        self.nang = n_angles(self.images.shape[-2])
        self.workers = workers
        self.ft = scipy.fft.rfft2(self.images, axes=(-2, -1), workers=workers)
        self.fp = footprints(self.images, self.nang, workers)
        self.flip = flip
        if flip:
            self.mirrored = mirror_images(self.images)
            self.ft_m = scipy.fft.rfft2(self.mirrored, axes=(-2, -1), workers=workers)
            self.fp_m = footprints(self.mirrored, self.nang, workers)


def rotate_translate_flip(moving, targets, mi, ti, *, aligncmp="ccc", maxshift=None, flip=True,
                          moving_fp=None, block=256, apix=None, workers=-1):
    """EMAN ``rotate_translate_flip`` (``flip=False``: ``rotate_translate``) for pairs of images.

    For each pair the footprint rotation ``α`` and ``α+180°`` are each translationally aligned
    (integer CCF peak within ``maxshift``, default ``ny/4``) and scored with ``aligncmp``; with
    ``flip`` the same is done against the x-mirrored target. The best candidate wins.

    Parameters
    ----------
    moving : (m, ny, nx) float32
    targets : (t, ny, nx) float32 or PreparedTargets
    mi, ti : (n,) int
        Pair indices into ``moving`` and ``targets``.
    moving_fp : optional precomputed :func:`footprints` of ``moving``.

    Returns
    -------
    dict of (n,) arrays ``alpha`` (deg), ``tx``, ``ty`` (px), ``mirror`` (0/1), ``score`` (aligncmp,
    lower better) of ``T`` with ``transform(moving[mi], T) ≈ targets[ti]`` (mirror included).
    """
    tgt = targets if isinstance(targets, PreparedTargets) else PreparedTargets(targets, flip, workers)
    flip = flip and tgt.flip
    moving = np.ascontiguousarray(moving, np.float32)
    ny = moving.shape[-2]
    maxshift = ny // 4 if maxshift is None else int(min(maxshift, ny // 2 - 1))
    mfp = footprints(moving, tgt.nang, workers) if moving_fp is None else moving_fp
    mi, ti = np.asarray(mi, np.int64), np.asarray(ti, np.int64)
    npair = len(mi)
    out = {k: np.zeros(npair) for k in ("alpha", "tx", "ty", "mirror", "score")}
    variants = [(tgt.images, tgt.ft, tgt.fp, 0.0)] + ([(tgt.mirrored, tgt.ft_m, tgt.fp_m, 1.0)] if flip else [])
    for start in range(0, npair, block):
        sl = slice(start, min(start + block, npair))
        pm, pt = mi[sl], ti[sl]
        nb = len(pm)
        cands = []
        for timg, tft, tfp, mir in variants:
            a0 = rotation_ccf(tfp[pt], mfp[pm], tgt.nang)
            for extra in (0.0, 180.0):
                alpha = a0 + extra
                rot = transform_images(moving, alpha, np.zeros(nb), np.zeros(nb), np.zeros(nb), index=pm)
                sx, sy = translational_peak(tft[pt], rot, maxshift, workers)
                aligned = np.empty_like(rot)
                _shift_int(rot, sx, sy, aligned)
                score = cmpmod.compare(timg[pt], aligned, aligncmp, apix=apix)
                cands.append((score, alpha, sx, sy, mir))
        scores = np.stack([c[0] for c in cands])
        best = np.argmin(scores, axis=0)
        rows = np.arange(nb)
        out["score"][sl] = scores[best, rows]
        out["alpha"][sl] = np.stack([c[1] for c in cands])[best, rows] % 360.0
        out["tx"][sl] = np.stack([c[2] for c in cands])[best, rows]
        out["ty"][sl] = np.stack([c[3] for c in cands])[best, rows]
        out["mirror"][sl] = np.array([c[4] for c in cands])[best]
    return out
