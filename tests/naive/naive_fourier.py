"""Slow, obvious numpy references for the numba kernels of the Fourier core.

Each one is written to be read, not to be fast: trilinear interpolation by explicit gathers
from a zero-padded array, insertion with ``np.add.at`` over a full (not half) deposit list.
"""

from __future__ import annotations

import numpy as np


def trilinear_zero(vol: np.ndarray, pz, py, px) -> np.ndarray:
    """Trilinear samples of ``vol[z, y, x]`` at float index coordinates; zero outside the array."""
    pad = np.pad(vol, 1)  # index i of vol is i + 1 of pad; everything outside is 0
    pz, py, px = (np.asarray(a, dtype=np.float64) + 1 for a in (pz, py, px))
    out = np.zeros(np.broadcast(pz, py, px).shape, dtype=np.result_type(vol.dtype, np.float64))
    z0, y0, x0 = np.floor(pz).astype(int), np.floor(py).astype(int), np.floor(px).astype(int)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                zz, yy, xx = z0 + dz, y0 + dy, x0 + dx
                w = (1 - np.abs(pz - zz)) * (1 - np.abs(py - yy)) * (1 - np.abs(px - xx))
                ok = (zz >= 0) & (zz < pad.shape[0]) & (yy >= 0) & (yy < pad.shape[1]) & \
                     (xx >= 0) & (xx < pad.shape[2])
                out[ok] += w[ok] * pad[zz[ok], yy[ok], xx[ok]]
    return out


def project_real(vol: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Ray sum ``P(x, y) = Σ_k vol(Rᵀ (x, y, k))`` over every depth that can touch the box."""
    n = vol.shape[0]
    c = n // 2
    y, x = np.mgrid[:n, :n] - c
    k = np.arange(-2 * n, 2 * n + 1)
    x, y, k = np.broadcast_arrays(x[None], y[None], k[:, None, None])
    r = np.stack([x, y, k]).reshape(3, -1).astype(np.float64)
    p = R.T @ r + c  # (x, y, z) indices
    vals = trilinear_zero(vol, p[2], p[1], p[0]).reshape(x.shape)
    return vals.sum(0)


def trilinear_periodic(vol: np.ndarray, pz, py, px) -> np.ndarray:
    """Trilinear samples with periodic wrap of the indices (a DFT grid)."""
    pz, py, px = (np.asarray(a, dtype=np.float64) for a in (pz, py, px))
    out = np.zeros(np.broadcast(pz, py, px).shape, dtype=np.result_type(vol.dtype, np.float64))
    z0, y0, x0 = np.floor(pz).astype(int), np.floor(py).astype(int), np.floor(px).astype(int)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                zz, yy, xx = z0 + dz, y0 + dy, x0 + dx
                w = (1 - np.abs(pz - zz)) * (1 - np.abs(py - yy)) * (1 - np.abs(px - xx))
                out += w * vol[zz % vol.shape[0], yy % vol.shape[1], xx % vol.shape[2]]
    return out


def central_slice(vft_full: np.ndarray, R: np.ndarray, s: int) -> np.ndarray:
    """Central slice of a *full* centred 3D FT (all kx, fftshifted on every axis).

    Samples ``F(Rᵀ (kx, ky, 0))`` by trilinear interpolation (no Friedel folding needed on the
    full grid; indices wrap periodically) for ``|k| <= s/2``, in rfft2 layout ``(s, s//2+1)``; ``N/s`` sets the step.
    """
    N = vft_full.shape[0]
    c = N // 2
    ky = np.rint(np.fft.fftfreq(s) * s)
    kx = np.arange(s // 2 + 1)
    KY, KX = np.meshgrid(ky, kx, indexing="ij")
    k = np.stack([KX, KY, np.zeros_like(KX)]).reshape(3, -1)
    p = (R.T @ k) * (N / s) + c
    re = trilinear_periodic(vft_full.real, p[2], p[1], p[0])
    im = trilinear_periodic(vft_full.imag, p[2], p[1], p[0])
    out = (re + 1j * im).reshape(KX.shape)
    out[KX**2 + KY**2 > (s / 2) ** 2] = 0
    return out


def insert_full(S_half: np.ndarray, R: np.ndarray, N: int, kernel: str = "trilinear",
                weight: float = 1.0):
    """Insert one slice into a *full* complex grid (N, N, N) (fftshifted, no Friedel folding).

    The whole 2D plane is rebuilt from the half slice (``S(-k) = conj S(k)``); every pixel with
    ``|k| <= N/2 - 1`` is deposited at ``Rᵀ (kx, ky, 0)`` with the kernel. Returns (F, W).
    """
    c = N // 2
    F = np.zeros((N, N, N), dtype=np.complex128)
    W = np.zeros((N, N, N))
    ky = np.rint(np.fft.fftfreq(N) * N)
    kx = np.arange(N // 2 + 1)
    KY, KX = np.meshgrid(ky, kx, indexing="ij")
    keep = (KX**2 + KY**2 <= (N / 2 - 1) ** 2) & ~((KX == 0) & (KY < 0))
    vals = S_half[keep]
    kk = np.stack([KX[keep], KY[keep]])
    # add the mirror half: (-kx, -ky) with conj values, except the kx=0 pixels already paired
    mirror = ~((kk[0] == 0) & (kk[1] == 0))
    kk = np.concatenate([kk, -kk[:, mirror]], axis=1)
    vals = np.concatenate([vals, np.conj(vals[mirror])])
    p = R.T @ np.stack([kk[0], kk[1], np.zeros(kk.shape[1])])
    if kernel == "nearest":
        idx = np.floor(p + 0.5).astype(int) + c
        ok = np.all((idx >= 0) & (idx < N), axis=0)
        np.add.at(F, (idx[2, ok], idx[1, ok], idx[0, ok]), weight * vals[ok])
        np.add.at(W, (idx[2, ok], idx[1, ok], idx[0, ok]), weight)
        return F, W
    p0 = np.floor(p).astype(int)
    for d in np.ndindex(3, 3, 3):
        q = p0 + np.array(d)[:, None] - 1
        e = p - q
        if kernel == "trilinear":
            k = np.prod(np.clip(1 - np.abs(e), 0, None), axis=0)
        else:  # Gaussian on |e| <= 1 per axis, half weight exactly at |e| == 1
            half = np.prod(np.where(np.abs(e) == 1, 0.5, 1.0), axis=0)
            k = np.where(np.all(np.abs(e) <= 1, axis=0), half * np.exp(-np.sum(e * e, axis=0) * np.pi**2 / 4), 0)
        idx = q + c
        ok = np.all((idx >= 0) & (idx < N), axis=0)
        np.add.at(F, (idx[2, ok], idx[1, ok], idx[0, ok]), weight * k[ok] * vals[ok])
        np.add.at(W, (idx[2, ok], idx[1, ok], idx[0, ok]), weight * k[ok])
    return F, W
