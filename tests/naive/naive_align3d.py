"""Slow references and data simulation for tests of emflow.sta.align3d / emflow.sta.initial_model."""

from __future__ import annotations

import numpy as np

from emflow.geometry import random_rotations, tilt_matrix
from emflow.projection import project_real


def blob_phantom(box: int = 32, seed: int = 7, nblob: int = 12) -> np.ndarray:
    """An asymmetric, chiral cluster of Gaussian blobs of different sizes/heights, centred."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:box, :box, :box].astype(np.float32) - box // 2
    vol = np.zeros((box, box, box), np.float32)
    centres = rng.uniform(-0.22 * box, 0.22 * box, size=(nblob, 3))
    centres -= centres.mean(axis=0)
    for (cx, cy, cz), s, a in zip(centres, rng.uniform(0.05, 0.09, nblob) * box, rng.uniform(0.5, 1.5, nblob)):
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return vol


def simulate_particles(vol, n, tilts_deg, snr, rng, max_shift_px=0.0):
    """Subtilts of ``n`` randomly oriented, shifted copies of ``vol`` (real-space ray sums).

    Particle ``i`` = ``vol`` transformed by ``(R_i, t_i)``; subtilt ``k`` = projection with
    ``P_k·T_i`` (``P_k = tilt_matrix(tilt_k)``) + white Gaussian noise of variance
    ``var(signal)/snr`` (signal variance over the whole box, per image).

    Returns images (n, K, b, b), P (K, 3, 3), R (n, 3, 3), t (n, 3).
    """
    P = tilt_matrix(np.asarray(tilts_deg, float))
    R = random_rotations(n, rng)
    t = rng.uniform(-max_shift_px, max_shift_px, size=(n, 3))
    b = vol.shape[0]
    rots = np.einsum("kij,njl->nkil", P, R).reshape(-1, 3, 3)
    sh = np.einsum("kij,nj->nki", P[:, :2, :], t).reshape(-1, 2)
    imgs = project_real(vol, rots, sh).reshape(n, len(P), b, b)
    sig = imgs.std(axis=(2, 3), keepdims=True)
    imgs = imgs + rng.standard_normal(imgs.shape).astype(np.float32) * sig / np.sqrt(snr)
    return imgs.astype(np.float32), P, R, t


def naive_tilt_frc(projector, particle, R, t, minp, maxp):
    """Per-tilt shell-mean FRC via full slices (projector.slices_ft) and numpy sums."""
    b = particle.box
    rots = particle.proj @ R
    shifts = particle.proj[:, :2, :] @ t + particle.proj_shifts
    S = projector.slices_ft(rots, shifts, size=b)
    if particle.model_weights is not None:
        S = S * particle.model_weights
    D = particle.ft
    ky, kx = np.meshgrid(np.fft.fftfreq(b, 1.0 / b), np.arange(b // 2 + 1), indexing="ij")
    r = np.rint(np.hypot(kx, ky)).astype(int)
    uniq = ~((kx == 0) & (ky < 0))
    out = np.zeros(len(rots))
    for k in range(len(rots)):
        vals = []
        for s in range(minp, maxp):
            m = (r == s) & uniq
            num = np.sum((S[k][m] * np.conj(D[k][m])).real)
            den = np.sqrt(np.sum(np.abs(S[k][m]) ** 2) * np.sum(np.abs(D[k][m]) ** 2))
            if den > 0:
                vals.append(num / den)
        out[k] = np.mean(vals)
    return out
