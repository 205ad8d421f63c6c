"""Slow, obvious numpy references for the numba kernels of emflow.sta.tempmatch / emflow.sta.picks."""

from __future__ import annotations

import numpy as np


def tilt_weight(box: int, rotations: np.ndarray, radial: np.ndarray) -> np.ndarray:
    """Σ_t s_t w_t / max(1, Σ_t s_t) on the rfft grid, s_t = max(0, 1 − |k·n_t|)."""
    kz = np.fft.fftfreq(box, 1.0 / box)[:, None, None]
    ky = np.fft.fftfreq(box, 1.0 / box)[None, :, None]
    kx = np.arange(box // 2 + 1, dtype=float)[None, None, :]
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    num = np.zeros(r.shape)
    den = np.zeros(r.shape)
    for R, w in zip(rotations, radial):
        n = R[2]  # plane normal Rᵀ ẑ
        s = np.maximum(0.0, 1.0 - np.abs(kx * n[0] + ky * n[1] + kz * n[2]))
        num += s * np.interp(r, np.arange(len(w)), w)
        den += s
    return num / np.maximum(1.0, den)


def masked_pearson_map(tomo: np.ndarray, template: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation (weights = mask) of ``template`` with every circularly
    wrapped neighbourhood of ``tomo``: score(x) = corr_M(T(r), V(x + r)), r from the box centre."""
    b = template.shape[0]
    c = b // 2
    w = mask.astype(np.float64)
    wsum = w.sum()
    t = template.astype(np.float64)
    tc = t - (w * t).sum() / wsum
    tnorm = np.sqrt((w * tc * tc).sum())
    out = np.zeros(tomo.shape)
    nz, ny, nx = tomo.shape
    zz, yy, xx = np.meshgrid(np.arange(b) - c, np.arange(b) - c, np.arange(b) - c, indexing="ij")
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                v = tomo[(zz + z) % nz, (yy + y) % ny, (xx + x) % nx].astype(np.float64)
                vc = v - (w * v).sum() / wsum
                out[z, y, x] = (w * tc * vc).sum() / (tnorm * np.sqrt((w * vc * vc).sum()))
    return out


def greedy_nms(xyz: np.ndarray, score: np.ndarray, min_dist: float) -> list[int]:
    """Indices kept by greedy suppression, best first."""
    kept: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        if all(np.linalg.norm(xyz[i] - xyz[k]) >= min_dist for k in kept):
            kept.append(int(i))
    return kept
