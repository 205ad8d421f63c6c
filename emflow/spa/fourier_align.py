"""Fast rotate–translate–flip alignment and scoring of image pairs in Fourier space (simmx core).

Why: e2simmx aligns every particle with every reference projection. Done in real space (rotate,
FFT, CCF, shift, re-FFT to score) a pair costs dozens of FFTs. Here everything that does not depend
on the pair is computed once per image:

* per *target* (the particle in simmx): the centred rfft2 ``P`` and its x-mirror ``P_m``, and the
  rotational footprints (translation invariant, :func:`emflow.spa.align2d.footprints`) of both;
* per *moving* image (the projection): its footprint and a 2× zero-padded, gridding-corrected
  centred rfft2, so that its Fourier transform can be sampled on a rotated grid by bilinear
  interpolation (``Q(R⁻¹k)`` is the FT of the image rotated by ``R``).

Per pair the work is then: one footprint cross-correlation over angle (direct DFT of ``nang/2+1``
coefficients, giving the rotation modulo 180°), one rotated-grid interpolation of ``Q`` (the
180°-rotated candidate is its complex conjugate, the mirrored candidates reuse it against
``P_m``), four inverse FFTs (batched through :mod:`scipy.fft`) for the translational CCFs, a
sub-pixel (parabolic) peak within ``maxshift``, and the final comparator computed directly from
Fourier ring sums of ``P`` and the rotated, shifted ``Q`` — no real-space resampling at all.

Transform convention as :mod:`emflow.spa.align2d`: the result ``T = (α, tx, ty, mirror)`` maps the
moving image onto the target, ``transform_images(moving, T) ≈ target``.

Deviation from EMAN (documented): translations are sub-pixel (EMAN's rotate_translate_flip gives
integer shifts); the comparator sees the whole rotated image (no zero corners, so EMAN's
``zeromask`` has nothing to mask) and is band-limited to the circle ``|k| < ny/2``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft

from emflow._numba import pjit
from emflow.spa import align2d
from emflow.spa import cmp as cmpmod


def centred_ft(images: np.ndarray, workers: int = -1) -> np.ndarray:
    """Centred rfft2 ``(n, ny, nx//2+1)`` complex64 (phase origin at the box centre)."""
    return cmpmod.centred_rfft(np.asarray(images, np.float32), workers)


def padded_ft(images: np.ndarray, workers: int = -1) -> np.ndarray:
    """2× zero-padded centred rfft2 ``(n, 2ny, nx+1)`` complex64, pre-divided by the bilinear
    interpolation kernel's real-space transfer ``sinc²(x/2n)·sinc²(y/2n)`` (gridding correction)."""
    x = np.asarray(images, np.float32)
    n, ny, nx = x.shape
    cy, cx = ny // 2, nx // 2
    wy = np.sinc((np.arange(ny) - cy) / (2.0 * ny)) ** 2
    wx = np.sinc((np.arange(nx) - cx) / (2.0 * nx)) ** 2
    pad = np.zeros((n, 2 * ny, 2 * nx), np.float32)
    pad[:, ny - cy: 2 * ny - cy, nx - cx: 2 * nx - cx] = x / (wy[:, None] * wx[None, :])
    return cmpmod.centred_rfft(pad, workers)


class PreparedTargets:
    """Targets' centred FTs (and x-mirrors) and footprints, computed once."""

    def __init__(self, targets: np.ndarray, flip: bool = True, workers: int = -1):
        t = np.ascontiguousarray(targets, np.float32)
        self.shape = t.shape[-2:]
        self.nang = align2d.n_angles(t.shape[-2])
        self.flip = flip
        self.ft = centred_ft(t, workers)
        self.fp = align2d.footprints(t, self.nang, workers).astype(np.complex64)
        if flip:
            m = align2d.mirror_images(t)
            self.ft_m = centred_ft(m, workers)
            self.fp_m = align2d.footprints(m, self.nang, workers).astype(np.complex64)
        else:
            self.ft_m, self.fp_m = self.ft, self.fp


class PreparedMoving:
    """Moving images' padded FTs and footprints, computed once."""

    def __init__(self, moving: np.ndarray, nang: int, workers: int = -1):
        m = np.ascontiguousarray(moving, np.float32)
        self.shape = m.shape[-2:]
        self.ft_pad = padded_ft(m, workers)
        self.fp = align2d.footprints(m, nang, workers).astype(np.complex64)


def _angle_tables(nang: int, nk: int):
    """``cos``/``sin`` tables ``(nang, nk)`` with the irfft weights (1, 2, …, 2, 1)."""
    k = np.arange(nk)
    w = np.full(nk, 2.0)
    w[0] = 1.0
    if nang % 2 == 0 and nk == nang // 2 + 1:
        w[-1] = 1.0
    ph = 2 * np.pi * np.outer(np.arange(nang), k) / nang
    return (w * np.cos(ph)).astype(np.float32), (w * np.sin(ph)).astype(np.float32)


@pjit
def _rotations(fp_t, fp_tm, fp_q, ti, mi, ctab, stab, nvar, out):  # pragma: no cover - numba
    """Footprint CCF over angle per pair and variant (0: target, 1: mirrored target) → α in degrees."""
    n = len(ti)
    nr, nk = fp_q.shape[1], fp_q.shape[2]
    nang = ctab.shape[0]
    for k in numba.prange(n):
        cr = np.empty(nk, np.float64)
        ci = np.empty(nk, np.float64)
        for v in range(nvar):
            ft = fp_t[ti[k]] if v == 0 else fp_tm[ti[k]]
            fq = fp_q[mi[k]]
            for j in range(nk):
                sr = 0.0
                si = 0.0
                for r in range(nr):
                    a, b = ft[r, j], fq[r, j]
                    sr += a.real * b.real + a.imag * b.imag
                    si += a.imag * b.real - a.real * b.imag
                cr[j], ci[j] = sr, si
            best, jb = -np.inf, 0
            vals = np.empty(nang, np.float64)
            for a in range(nang):
                s = 0.0
                for j in range(nk):
                    s += cr[j] * ctab[a, j] - ci[j] * stab[a, j]
                vals[a] = s
                if s > best:
                    best, jb = s, a
            c0, cm, cp = vals[jb], vals[(jb - 1) % nang], vals[(jb + 1) % nang]
            den = cm - 2 * c0 + cp
            frac = 0.5 * (cm - cp) / den if den < 0 else 0.0
            frac = min(0.5, max(-0.5, frac))
            out[k, v] = ((jb + frac) * 180.0 / nang) % 180.0


@numba.njit(inline="always", cache=True)
def _sample(q, sx, sy):  # pragma: no cover - numba
    """Bilinear sample of a padded centred rfft2 ``q`` (2n, n+1) at padded frequency (sx, sy)."""
    conj = sx < 0
    if conj:
        sx, sy = -sx, -sy
    ny2 = q.shape[0]
    x0, y0 = int(sx), int(math.floor(sy))
    fx, fy = sx - x0, sy - y0
    if x0 + 1 >= q.shape[1]:
        return complex(0.0, 0.0)
    if y0 < 0:
        y0 += ny2
    y1 = y0 + 1
    if y1 >= ny2:
        y1 -= ny2
    a, b, c, d = q[y0, x0], q[y0, x0 + 1], q[y1, x0], q[y1, x0 + 1]
    w00, w01, w10, w11 = (1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx
    re = w00 * a.real + w01 * b.real + w10 * c.real + w11 * d.real
    im = w00 * a.imag + w01 * b.imag + w10 * c.imag + w11 * d.imag
    return complex(re, -im if conj else im)


@pjit
def _products(tft, tft_m, qpad, ti, mi, alpha, nvar, rmax, out):  # pragma: no cover - numba
    """``out[k, 2v + h] = T_v · conj(Q rotated by α_v + 180°·h)`` on the rfft grid, |k| ≤ rmax."""
    n = len(ti)
    ny, nxh = out.shape[2], out.shape[3]
    r2 = rmax * rmax
    for k in numba.prange(n):
        q = qpad[mi[k]]
        for v in range(nvar):
            t = tft[ti[k]] if v == 0 else tft_m[ti[k]]
            a = alpha[k, v] * math.pi / 180.0
            ca, sa = 2.0 * math.cos(a), 2.0 * math.sin(a)  # ×2: the padded grid samples twice as finely
            o0, o1 = out[k, 2 * v], out[k, 2 * v + 1]
            for iy in range(ny):
                ky = iy if iy < ny // 2 else iy - ny
                for ix in range(nxh):
                    if ky * ky + ix * ix > r2:
                        o0[iy, ix] = 0
                        o1[iy, ix] = 0
                        continue
                    qv = _sample(q, ca * ix + sa * ky, -sa * ix + ca * ky)  # Q_rot(k) = Q(R⁻¹ k)
                    tv = t[iy, ix]
                    pr, pi_ = tv.real * qv.real, tv.imag * qv.imag
                    xr, xi = tv.imag * qv.real, tv.real * qv.imag
                    o0[iy, ix] = complex(pr + pi_, xr - xi)  # T·conj(Q)
                    o1[iy, ix] = complex(pr - pi_, xr + xi)  # 180° more: Q(−R⁻¹k) = conj Q(R⁻¹k)


@pjit
def _peaks(ccf, nvar, maxshift, res):  # pragma: no cover - numba
    """Best candidate per pair: ``res[k] = (candidate, tx, ty, peak)`` with parabolic sub-pixel."""
    n, _, ny, nx = ccf.shape
    for k in numba.prange(n):
        best, bc, bx, by = -np.inf, 0, 0, 0
        for c in range(2 * nvar):
            m = ccf[k, c]
            for dy in range(-maxshift, maxshift + 1):
                row = dy if dy >= 0 else dy + ny
                for dx in range(-maxshift, maxshift + 1):
                    v = m[row, dx if dx >= 0 else dx + nx]
                    if v > best:
                        best, bc, bx, by = v, c, dx, dy
        m = ccf[k, bc]
        c0 = m[by % ny, bx % nx]
        xm, xp = m[by % ny, (bx - 1) % nx], m[by % ny, (bx + 1) % nx]
        ym, yp = m[(by - 1) % ny, bx % nx], m[(by + 1) % ny, bx % nx]
        dxx, dyy = xm - 2 * c0 + xp, ym - 2 * c0 + yp
        fx = min(0.5, max(-0.5, 0.5 * (xm - xp) / dxx)) if dxx < 0 else 0.0
        fy = min(0.5, max(-0.5, 0.5 * (ym - yp) / dyy)) if dyy < 0 else 0.0
        res[k, 0], res[k, 1], res[k, 2], res[k, 3] = bc, bx + fx, by + fy, best


@pjit
def _ring_sums(tft, tft_m, qpad, ti, mi, alpha, tx, ty, mirror, rings, nring, with_phase, out):  # pragma: no cover
    """Per pair and ring ``r = rings[iy, ix] < nring``: Σ Re(T·S*), Σ|T|², Σ|S|², Σ|Δφ| (only when
    ``with_phase``), count, where ``S`` is the FT of the moving image rotated by α and shifted by t
    (T mirrored when ``mirror``)."""
    n = len(ti)
    ny, nxh = tft.shape[1], tft.shape[2]
    nx = 2 * nxh - 2
    for k in numba.prange(n):
        q = qpad[mi[k]]
        t = tft_m[ti[k]] if mirror[k] > 0.5 else tft[ti[k]]
        a = alpha[k] * math.pi / 180.0
        ca, sa = 2.0 * math.cos(a), 2.0 * math.sin(a)
        # the shift's phase factor e^{−2πi k·t} is separable: one table per axis
        exr, exi = np.empty(nxh), np.empty(nxh)
        for ix in range(nxh):
            ph = -2.0 * math.pi * ix * tx[k] / nx
            exr[ix], exi[ix] = math.cos(ph), math.sin(ph)
        o = out[k]
        for iy in range(ny):
            ky = iy if iy < ny // 2 else iy - ny
            ph = -2.0 * math.pi * ky * ty[k] / ny
            eyr, eyi = math.cos(ph), math.sin(ph)
            for ix in range(nxh):
                r = rings[iy, ix]
                if r >= nring:
                    continue
                qv = _sample(q, ca * ix + sa * ky, -sa * ix + ca * ky)
                er = exr[ix] * eyr - exi[ix] * eyi
                ei = exr[ix] * eyi + exi[ix] * eyr
                sr, si = qv.real * er - qv.imag * ei, qv.real * ei + qv.imag * er
                tv = t[iy, ix]
                cr = tv.real * sr + tv.imag * si
                o[0, r] += cr
                o[1, r] += tv.real * tv.real + tv.imag * tv.imag
                o[2, r] += sr * sr + si * si
                if with_phase:
                    o[3, r] += abs(math.atan2(tv.imag * sr - tv.real * si, cr))
                o[4, r] += 1.0


def align_pairs(moving: PreparedMoving, targets: PreparedTargets, mi, ti, *, flip: bool = True,
                maxshift: float | None = None, block: int | None = None, workers: int = -1,
                with_phase: bool = False) -> dict:
    """Rotate–translate(–flip) alignment of ``moving[mi[k]]`` onto ``targets[ti[k]]``.

    Returns dict of ``(n,)`` float64 arrays ``alpha`` (deg, [0, 360)), ``tx``, ``ty`` (px, sub-pixel),
    ``mirror`` (0/1) of ``T`` with ``transform_images(moving, T) ≈ target``, and ``ring_sums``
    ``(n, 5, ny//2)`` (see :func:`_ring_sums`; the phase-error sum only with ``with_phase``) for
    scoring with :func:`score_from_ring_sums`.

    ``block``: pairs per batched kernel call; default ``2²⁰ / (ny·nx)`` (256 at box 64, 1024 at 32:
    the same memory per block, and small images do not pay the threads' start-up per call — at box
    32 under load block 1024 took half the CPU time per pair of block 256).
    """
    ny, nx = targets.shape
    block = int(block or max(64, min(4096, (1 << 20) // (ny * nx))))
    maxshift = ny // 4 if maxshift is None else int(min(maxshift, ny // 2 - 1))
    mi, ti = np.ascontiguousarray(mi, np.int64), np.ascontiguousarray(ti, np.int64)
    n = len(mi)
    nvar = 2 if (flip and targets.flip) else 1
    nk = targets.fp.shape[-1]
    ctab, stab = _angle_tables(targets.nang, nk)
    out = {k: np.zeros(n) for k in ("alpha", "tx", "ty", "mirror")}
    out["ring_sums"] = np.zeros((n, 5, ny // 2))
    rings = cmpmod.ring_index(ny, nx)
    prod = np.empty((min(block, max(n, 1)), 2 * nvar, ny, nx // 2 + 1), np.complex64)
    for s in range(0, n, block):
        sl = slice(s, min(n, s + block))
        nb = sl.stop - sl.start
        a = np.zeros((nb, 2))
        _rotations(targets.fp, targets.fp_m, moving.fp, ti[sl], mi[sl], ctab, stab, nvar, a)
        p = prod[:nb]
        _products(targets.ft, targets.ft_m, moving.ft_pad, ti[sl], mi[sl], a, nvar, float(ny // 2 - 1), p)
        ccf = scipy.fft.irfft2(p, s=(ny, nx), axes=(-2, -1), workers=workers)
        res = np.empty((nb, 4))
        _peaks(np.ascontiguousarray(ccf), nvar, maxshift, res)
        cand = res[:, 0].astype(np.int64)
        v = cand // 2
        alpha = (a[np.arange(nb), v] + 180.0 * (cand % 2)) % 360.0
        out["alpha"][sl], out["tx"][sl], out["ty"][sl], out["mirror"][sl] = alpha, res[:, 1], res[:, 2], v
        rs = np.zeros((nb, 5, ny // 2))
        _ring_sums(targets.ft, targets.ft_m, moving.ft_pad, ti[sl], mi[sl], alpha, res[:, 1].copy(),
                   res[:, 2].copy(), v.astype(np.float64), rings, ny // 2, with_phase, rs)
        out["ring_sums"][sl] = rs
    return out


def score_from_ring_sums(s: np.ndarray, cmp, *, ny: int, snr=None, apix=None) -> np.ndarray:
    """Comparator score (lower is better) from ring sums ``(n, 5, nring)``.

    Supports ``frc`` and ``phase`` (same weights as :mod:`emflow.spa.cmp`) and ``ccc``/``dot:normalize=1``
    (Parseval over rings 1 … ny/2−1: the normalised correlation of the band-limited, mean-free images).
    """
    name, opts = cmpmod.parse_cmp(cmp) if isinstance(cmp, str) else cmp
    if name == "frc":
        return cmpmod.frc_score_from_sums(s, ny, snr=snr, apix=apix, **opts)
    if name == "phase":
        return cmpmod.phase_score_from_sums(s, ny, snr=snr, apix=apix, **opts)
    if name in ("ccc", "dot"):
        # rfft half plane: columns 1 … nx/2−1 stand for two coefficients; the ring sums count each once,
        # which weights rings uniformly by their half-plane area — adequate for ranking pairs.
        num = s[:, 0, 1:].sum(axis=1)
        den = np.sqrt(s[:, 1, 1:].sum(axis=1) * s[:, 2, 1:].sum(axis=1))
        rho = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        return (-rho).astype(np.float32)
    raise ValueError(f"no Fourier-space score for comparator {name!r}")


FOURIER_SCORES = ("frc", "phase", "ccc")
