"""Slow numpy references for the emflow.spa numba kernels."""

from __future__ import annotations

import numpy as np


def transform_image(img, alpha_deg, tx, ty, mirror):
    """out(x) = in(T⁻¹ x), T(x) = M(R(α)x + t), bilinear, zero outside (pixel by pixel)."""
    n = img.shape[0]
    c = n // 2
    a = np.deg2rad(alpha_deg)
    out = np.zeros_like(img, dtype=np.float64)
    for row in range(n):
        for col in range(n):
            x, y = col - c, row - c
            if mirror:
                x = -x
            x, y = x - tx, y - ty
            sx = np.cos(a) * x + np.sin(a) * y + c
            sy = -np.sin(a) * x + np.cos(a) * y + c
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - x0, sy - y0
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    yy, xx = y0 + dy, x0 + dx
                    if 0 <= yy < n and 0 <= xx < n:
                        out[row, col] += wy * wx * img[yy, xx]
    return out


def frc_score(a, b):
    """Unweighted-band frc score −Σ n_r FRC_r / Σ n_r over rings 1..n/2−1 (no apix)."""
    n = a.shape[0]
    fa = np.fft.rfft2(np.fft.ifftshift(a))
    fb = np.fft.rfft2(np.fft.ifftshift(b))
    ky = np.fft.fftfreq(n, 1 / n)[:, None]
    kx = np.arange(n // 2 + 1)[None, :]
    r = np.rint(np.hypot(ky, kx)).astype(int)
    num = den = 0.0
    for ring in range(1, n // 2):
        sel = r == ring
        c = np.sum((fa[sel] * fb[sel].conj()).real) / np.sqrt(np.sum(abs(fa[sel]) ** 2) * np.sum(abs(fb[sel]) ** 2))
        num += sel.sum() * c
        den += sel.sum()
    return -num / den
