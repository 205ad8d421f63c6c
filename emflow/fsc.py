"""Fourier shell / ring correlation (FSC / FRC) and resolution estimates.

Definitions follow EMAN2 (spec §2.5):

* Shells are indexed by the **rounded** radius ``r = round(|k|)`` in Fourier pixels, where
  ``k = (kx, ky, kz)`` are integer frequency indices and, for non-cubic boxes, each component is
  rescaled to the x axis (``k_i · nx / n_i``).
* Each Friedel pair ``(k, −k)`` is counted **once**: the sums run over the rfft half (last axis
  ``nx // 2 + 1``) and, on the planes ``kx = 0`` and ``kx = nx/2`` (which hold both members of a
  pair), only one member of each pair is kept (self-conjugate points count once).
* ``FSC(r) = Σ Re(F·G*) / √(Σ|F|² · Σ|G|²)`` over shell ``r``; frequency ``s = r / nx`` cycles/px,
  i.e. ``r / (nx·apix)`` 1/Å. Curves hold shells ``r = 1 … nx/2`` (the rows of EMAN's FSC text files).

Shell sums are one numba pass over the rfft half (``frc_from_ft`` uses a single ``np.bincount``
over all images), so a 256³ FSC costs two FFTs plus one linear pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.fft

from emflow._numba import jit
from emflow.fourier import radius_grid

__all__ = [
    "FSCCurve",
    "fsc",
    "frc_per_image",
    "frc_from_ft",
    "resolution",
    "resolution_at",
    "shell_index",
    "friedel_unique",
]


@dataclass(frozen=True)
class FSCCurve:
    """An FSC (3D) or FRC (2D) curve.

    Attributes
    ----------
    shell : ndarray of int, shape (nx//2,)
        Shell radius ``r = 1 … nx/2`` in Fourier pixels.
    freq : ndarray of float64, shape (nx//2,)
        Spatial frequency ``r / nx`` in cycles/px (Nyquist = 0.5).
    fsc : ndarray of float64, shape (nx//2,)
        Correlation per shell, in [−1, 1] (0 for an empty or all-zero shell).
    nvox : ndarray of int64, shape (nx//2,)
        Number of independent Fourier coefficients (Friedel pairs) in each shell.
    """

    shell: np.ndarray
    freq: np.ndarray
    fsc: np.ndarray
    nvox: np.ndarray

    def freq_inv_a(self, apix: float) -> np.ndarray:
        """Shell frequencies in 1/Å for pixel size ``apix`` (Å/px)."""
        return self.freq / float(apix)

    def crosses(self, threshold: float = 0.143) -> bool:
        """True if the curve drops below ``threshold`` at some shell."""
        return bool(np.any(self.fsc < threshold))


@functools.lru_cache(maxsize=16)
def _shell_grid(shape: tuple[int, ...]) -> np.ndarray:
    """Integer shell (``rint`` of |k| in Fourier pixels of the x axis) on the rfft half grid of ``shape``."""
    shells = np.rint(radius_grid(shape) * shape[-1]).astype(np.int64)
    shells.setflags(write=False)
    return shells


@functools.lru_cache(maxsize=16)
def friedel_unique(shape: tuple[int, ...]) -> np.ndarray:
    """Boolean rfft-half mask keeping exactly one member of every Friedel pair.

    Parameters
    ----------
    shape : tuple of int
        Real-space shape (2D or 3D); the mask has shape ``shape[:-1] + (shape[-1]//2 + 1,)``.

    Notes
    -----
    Columns ``0 < kx < nx/2`` are unique already. On the ``kx = 0`` column/plane (and ``kx = nx/2``
    for even ``nx``), the partner of the element at flat index ``i`` of the remaining axes is at
    ``(−k) mod n``; we keep the element whose flat index is ≤ its partner's (self-conjugate points
    are their own partner and are kept).
    """
    nx = shape[-1]
    nh = nx // 2 + 1
    keep = np.ones(tuple(shape[:-1]) + (nh,), dtype=bool)
    lead = tuple(shape[:-1])
    idx = np.indices(lead).reshape(len(lead), -1)
    flat = np.ravel_multi_index(tuple(idx), lead)
    partner = np.ravel_multi_index(tuple((-idx[i]) % lead[i] for i in range(len(lead))), lead)
    plane_keep = (flat <= partner).reshape(lead)
    keep[..., 0] = plane_keep
    if nx % 2 == 0:
        keep[..., nh - 1] = plane_keep
    keep.setflags(write=False)
    return keep


@functools.lru_cache(maxsize=16)
def shell_index(shape: tuple[int, ...]) -> np.ndarray:
    """Rounded shell radius per rfft-half element, ``-1`` for duplicate Friedel partners.

    Parameters
    ----------
    shape : tuple of int
        Real-space shape (2D or 3D).

    Returns
    -------
    ndarray of int64, shape ``shape[:-1] + (shape[-1]//2 + 1,)``
        ``round(|k|)`` (Fourier px of the x axis), or ``-1`` where the element duplicates its
        Friedel partner. Read-only and cached per shape.
    """
    shells = _shell_grid(tuple(shape)).copy()
    shells[~friedel_unique(tuple(shape))] = -1
    shells.setflags(write=False)
    return shells


def fsc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, workers: int = -1) -> FSCCurve:
    """Fourier shell correlation of two 3D maps, or ring correlation of two 2D images.

    Parameters
    ----------
    a, b : ndarray, shape (nz, ny, nx) or (ny, nx)
        Real-space maps of the same shape (any float dtype).
    mask : ndarray, optional
        Real-space mask of the same shape multiplied into both maps before transforming.
    workers : int
        ``scipy.fft`` worker threads (−1 = all cores).

    Returns
    -------
    FSCCurve
        Shells ``r = 1 … nx/2``; ``freq = r / nx`` cycles/px.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"fsc: a and b differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"fsc: expected a 2D or 3D array, got shape {a.shape}")
    if mask is not None:
        if mask.shape != a.shape:
            raise ValueError(f"fsc: mask shape {mask.shape} differs from map shape {a.shape}")
        a = a * mask
        b = b * mask
    fa = scipy.fft.rfftn(a.astype(np.float32, copy=False), workers=workers)
    fb = scipy.fft.rfftn(b.astype(np.float32, copy=False), workers=workers)
    return _fsc_from_halves(fa, fb, a.shape)


@functools.lru_cache(maxsize=8)
def _shell_bins(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Flat int32 shell per rfft element (duplicates and r > nx/2 → dump bin nx//2+1), and nvox."""
    nshell = shape[-1] // 2 + 1
    sh = shell_index(shape).ravel()
    bins = np.where((sh >= 0) & (sh < nshell), sh, nshell).astype(np.int32)
    nvox = np.bincount(bins, minlength=nshell + 1)[:nshell].astype(np.int64)
    bins.setflags(write=False)
    nvox.setflags(write=False)
    return bins, nvox


@jit
def _shell_sums_kernel(fa, fb, bins, nbins):
    """Σ Re(F·G*), Σ|F|², Σ|G|² per bin (float64 accumulators), one pass over the rfft half."""
    out = np.zeros((nbins, 3), dtype=np.float64)
    for i in range(bins.size):
        b = bins[i]
        ar = np.float64(fa[i].real)
        ai = np.float64(fa[i].imag)
        br = np.float64(fb[i].real)
        bi = np.float64(fb[i].imag)
        out[b, 0] += ar * br + ai * bi
        out[b, 1] += ar * ar + ai * ai
        out[b, 2] += br * br + bi * bi
    return out


def _fsc_from_halves(fa: np.ndarray, fb: np.ndarray, shape: tuple[int, ...]) -> FSCCurve:
    nx = shape[-1]
    nshell = nx // 2 + 1
    bins, nvox = _shell_bins(tuple(shape))
    fa = np.ascontiguousarray(fa, dtype=np.complex64).ravel()
    fb = np.ascontiguousarray(fb, dtype=np.complex64).ravel()
    sums = _shell_sums_kernel(fa, fb, bins, nshell + 1)[:nshell]
    cross, pa, pb = sums[:, 0], sums[:, 1], sums[:, 2]
    denom = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), 0.0)
    r = np.arange(1, nshell)
    return FSCCurve(shell=r, freq=r / nx, fsc=curve[1:], nvox=nvox[1:].copy())


def frc_from_ft(fa: np.ndarray, fb: np.ndarray, nx: int, nshells: int) -> np.ndarray:
    """Per-image FRC of rfft-half 2D transforms (e.g. Fourier slices vs. subtilt FTs).

    Parameters
    ----------
    fa, fb : complex ndarray, shape (n, ny, nx//2+1) or (ny, nx//2+1)
        rfft2 halves (any phase origin, the same for both); broadcast against each other.
    nx : int
        Real-space x size of the images (needed to tell odd from even).
    nshells : int
        Number of shells returned.

    Returns
    -------
    ndarray of float64, shape (n, nshells)
        Column ``r`` is the FRC of shell ``r`` (rounded radius, Fourier px), ``r = 0 … nshells−1``;
        column 0 is the DC term. Shells with no power give 0.
    """
    fa, fb = np.broadcast_arrays(np.asarray(fa), np.asarray(fb))
    if fa.ndim == 2:
        return frc_from_ft(fa[None], fb[None], nx, nshells)
    n, ny, nh = fa.shape
    if nh != nx // 2 + 1:
        raise ValueError(f"frc_from_ft: last axis {nh} does not match nx={nx} (expected {nx // 2 + 1})")
    shells = shell_index((ny, nx))
    valid = (shells >= 0) & (shells < nshells)
    sh = shells[valid]
    nsel = sh.size
    # One bincount over all images: bin = image * nshells + shell.
    bins = (np.arange(n, dtype=np.int64)[:, None] * nshells + sh[None, :]).ravel()
    a = fa[:, valid]
    b = fb[:, valid]
    total = n * nshells

    def sums(v):
        return np.bincount(bins, weights=v.reshape(n * nsel), minlength=total).reshape(n, nshells)

    cross = sums(a.real * b.real + a.imag * b.imag)
    pa = sums(a.real**2 + a.imag**2)
    pb = sums(b.real**2 + b.imag**2)
    denom = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), 0.0)


def frc_per_image(a_stack: np.ndarray, b_stack: np.ndarray, nshells: int | None = None,
                  workers: int = -1) -> np.ndarray:
    """Fourier ring correlation of many image pairs at once.

    Parameters
    ----------
    a_stack, b_stack : ndarray, shape (n, ny, nx) or (ny, nx)
        Real-space images; a single image broadcasts against a stack.
    nshells : int, optional
        Number of shells returned (default ``nx//2 + 1``, i.e. up to Nyquist).
    workers : int
        ``scipy.fft`` worker threads.

    Returns
    -------
    ndarray of float64, shape (n, nshells)
        Column ``r`` = FRC of shell ``r`` (``r = 0 … nshells−1``, frequency ``r / nx`` cycles/px).
    """
    a = np.asarray(a_stack, dtype=np.float32)
    b = np.asarray(b_stack, dtype=np.float32)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"frc_per_image: image shapes differ: {a.shape} vs {b.shape}")
    nx = a.shape[-1]
    if nshells is None:
        nshells = nx // 2 + 1
    fa = scipy.fft.rfft2(a, workers=workers)
    fb = scipy.fft.rfft2(b, workers=workers)
    return frc_from_ft(fa, fb, nx, int(nshells))


def resolution_at(curve: FSCCurve, threshold: float = 0.143) -> float:
    """Frequency (cycles/px) where the curve first falls below ``threshold``.

    Linear interpolation between the last shell at/above the threshold and the first one below
    (the point before shell 1 is taken as ``(0, 1)``). If the curve never falls below the
    threshold, returns the frequency of the last shell (Nyquist, 0.5 for even boxes); check
    :meth:`FSCCurve.crosses` to tell the two cases apart.
    """
    f = np.asarray(curve.fsc, dtype=np.float64)
    s = np.asarray(curve.freq, dtype=np.float64)
    below = np.flatnonzero(f < threshold)
    if below.size == 0:
        return float(s[-1])
    i = int(below[0])
    f0, s0 = (1.0, 0.0) if i == 0 else (f[i - 1], s[i - 1])
    f1, s1 = f[i], s[i]
    t = (f0 - threshold) / (f0 - f1) if f0 != f1 else 0.0
    return float(s0 + t * (s1 - s0))


def resolution(curve: FSCCurve, apix: float, threshold: float = 0.143) -> float:
    """Resolution in Å at the first ``threshold`` crossing (see :func:`resolution_at`).

    Returns ``apix / freq``; when the curve never crosses this is the Nyquist limit ``2·apix``
    (for even boxes), which means "at least this good", not a measured value.
    """
    freq = resolution_at(curve, threshold)
    if freq <= 0:
        return float("inf")
    return float(apix) / freq
