"""Slow, obvious references for emflow.fsc and emflow.filters.radial_profile (tests only)."""

from __future__ import annotations

import itertools

import numpy as np


def naive_fsc(a: np.ndarray, b: np.ndarray):
    """FSC/FRC by explicit loops over the full FFT, visiting each Friedel pair once.

    Returns (fsc, nvox) for shells r = 1 .. nx//2 (rounded radius in Fourier px of x).
    """
    fa = np.fft.fftn(a.astype(np.float64))
    fb = np.fft.fftn(b.astype(np.float64))
    shape = a.shape
    nx = shape[-1]
    nsh = nx // 2 + 1
    cross = np.zeros(nsh)
    pa = np.zeros(nsh)
    pb = np.zeros(nsh)
    cnt = np.zeros(nsh, dtype=np.int64)
    seen = set()
    for idx in itertools.product(*(range(n) for n in shape)):
        if idx in seen:
            continue
        partner = tuple((-i) % n for i, n in zip(idx, shape))
        seen.add(idx)
        seen.add(partner)
        k = [(i if i <= n // 2 else i - n) * nx / n for i, n in zip(idx, shape)]
        r = int(np.rint(np.sqrt(sum(c * c for c in k))))
        if r >= nsh:
            continue
        F, G = fa[idx], fb[idx]
        cross[r] += (F * np.conj(G)).real
        pa[r] += abs(F) ** 2
        pb[r] += abs(G) ** 2
        cnt[r] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(pa * pb > 0, cross / np.sqrt(pa * pb), 0.0)
    return f[1:], cnt[1:]


def naive_radial_power(x: np.ndarray) -> np.ndarray:
    """Mean |F|² per rounded shell (r = 0 .. nx//2) over the full FFT (both Friedel members)."""
    f = np.fft.fftn(x.astype(np.float64))
    nx = x.shape[-1]
    grids = np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) * nx / n for n in x.shape], indexing="ij")
    r = np.rint(np.sqrt(sum(g * g for g in grids))).astype(int)
    out = np.zeros(nx // 2 + 1)
    for s in range(nx // 2 + 1):
        sel = r == s
        out[s] = np.mean(np.abs(f[sel]) ** 2)
    return out
