"""Fourier-space helpers shared by every module: FFTs with a centred phase origin, padding,
Fourier cropping, binning, sub-pixel shifts and EMAN's FFT-friendly box sizes.

Conventions (``docs/CONVENTIONS.md``, spec §2.4)
------------------------------------------------
* Arrays are indexed ``[z, y, x]``; the centre of an axis of length ``n`` is index ``n // 2``.
* :func:`ft` is ``scipy.fft.rfftn(scipy.fft.ifftshift(x))``: the phase origin is the box centre,
  the half axis is the last (x) axis with ``nx // 2 + 1`` samples, and the transform is
  unnormalised (``F[0] = x.sum()``). :func:`ift` is its exact inverse.
* Frequency index ``i`` on a full axis of length ``n`` means ``i if i < n/2 else i - n``; frequencies
  are returned in cycles/pixel (Nyquist = 0.5).
"""

from __future__ import annotations

import bisect
import functools

import numpy as np
import scipy.fft

__all__ = [
    "ft",
    "ift",
    "freq_grid",
    "radius_grid",
    "pad",
    "crop",
    "fourier_crop",
    "bin_mean",
    "shift",
    "good_size",
    "GOOD_SIZES",
]

# EMAN's list of FFT-friendly even box sizes (spec §2.4), continued beyond 512 with even
# 7-smooth numbers (what EMAN's list also contains up there).
_EMAN_SIZES = (16, 24, 32, 36, 40, 44, 48, 52, 56, 60, 64, 72, 84, 96, 100, 104, 112, 120, 128,
               132, 140, 168, 180, 192, 196, 208, 216, 220, 224, 240, 256, 260, 288, 300, 320,
               352, 360, 384, 416, 440, 448, 480, 512)


def _smooth_even(lo: int, hi: int) -> list[int]:
    out = []
    for n in range(lo + (lo % 2), hi + 1, 2):
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            out.append(n)
    return out


GOOD_SIZES: tuple[int, ...] = _EMAN_SIZES + tuple(_smooth_even(514, 16384))


def good_size(n: int) -> int:
    """Smallest FFT-friendly even box size ``>= n`` from EMAN's list (spec §2.4).

    Parameters
    ----------
    n : int
        Wanted size in pixels (>= 1). Sizes below 16 return 16.

    Returns
    -------
    int
        The next entry of :data:`GOOD_SIZES` (16, 24, 32, 36, ..., 512, then even 7-smooth sizes).
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"good_size: n must be >= 1, got {n}")
    i = bisect.bisect_left(GOOD_SIZES, n)
    if i == len(GOOD_SIZES):
        raise ValueError(f"good_size: n={n} is larger than the largest supported size {GOOD_SIZES[-1]}")
    return GOOD_SIZES[i]


def _axes(x: np.ndarray, axes) -> tuple[int, ...]:
    return tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in np.atleast_1d(axes))


def ft(x: np.ndarray, axes=None, workers: int = -1) -> np.ndarray:
    """Real-to-complex FFT with the phase origin at the box centre.

    Parameters
    ----------
    x : ndarray, float
        Real image/volume ``[..., y, x]``.
    axes : sequence of int, optional
        Axes to transform (default all); the last one becomes the half axis. Use ``(-2, -1)``
        for a stack of images.
    workers : int
        ``scipy.fft`` worker threads (-1 = all cores).

    Returns
    -------
    ndarray, complex64 for float32 input (complex128 for float64)
        ``rfftn(ifftshift(x))``: last transformed axis has length ``n // 2 + 1``; unnormalised.
    """
    ax = _axes(x, axes)
    return scipy.fft.rfftn(scipy.fft.ifftshift(x, axes=ax), axes=ax, workers=workers)


def ift(F: np.ndarray, shape, axes=None, workers: int = -1) -> np.ndarray:
    """Inverse of :func:`ft`: ``fftshift(irfftn(F, s=shape))``.

    Parameters
    ----------
    F : ndarray, complex
        Half-spectrum as produced by :func:`ft`.
    shape : sequence of int
        Real-space sizes of the transformed axes (needed to tell odd from even x).
    axes : sequence of int, optional
        Transformed axes (default: the last ``len(shape)`` axes).
    workers : int
        ``scipy.fft`` worker threads.

    Returns
    -------
    ndarray, float32 for complex64 input (float64 for complex128)
    """
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    ax = tuple(range(F.ndim - len(shape), F.ndim)) if axes is None else _axes(F, axes)
    x = scipy.fft.irfftn(F, s=shape, axes=ax, workers=workers)
    return scipy.fft.fftshift(x, axes=ax)


def freq_grid(shape, rfft: bool = True) -> tuple[np.ndarray, ...]:
    """Broadcastable frequency coordinates (cycles/pixel) in the layout of :func:`ft`.

    Parameters
    ----------
    shape : sequence of int
        Real-space shape ``(nz, ny, nx)`` or ``(ny, nx)``.
    rfft : bool
        If True the last axis is the half axis (``nx // 2 + 1`` non-negative frequencies),
        otherwise the full ``fftfreq`` axis.

    Returns
    -------
    tuple of float64 ndarray
        One array per axis, in axis order (``kz, ky, kx`` for 3D), each shaped to broadcast
        against the others (e.g. ``(nz,1,1)``, ``(1,ny,1)``, ``(1,1,nx//2+1)``).
    """
    shape = tuple(int(s) for s in shape)
    d = len(shape)
    out = []
    for i, n in enumerate(shape):
        f = scipy.fft.rfftfreq(n) if (rfft and i == d - 1) else scipy.fft.fftfreq(n)
        sh = [1] * d
        sh[i] = f.size
        out.append(f.reshape(sh))
    return tuple(out)


def radius_grid(shape, rfft: bool = True, apix: float | None = None) -> np.ndarray:
    """Spatial-frequency radius ``|k|`` on the grid of :func:`freq_grid`: the one Fourier radius grid.

    Parameters
    ----------
    shape : sequence of int
        Real-space shape ``(nz, ny, nx)`` or ``(ny, nx)``.
    rfft : bool
        Last axis halved (``nx // 2 + 1``), as for ``rfftn``.
    apix : float, optional
        Pixel size (Å/px): the radius is then in 1/Å (``fftfreq(n, d=apix)`` per axis) instead of
        cycles/px.

    Returns
    -------
    ndarray, float64, read-only (cached; copy before writing)
        Shape ``shape`` with the last axis halved when ``rfft``. Fourier pixels of the x axis are
        ``radius_grid(shape) * shape[-1]``; a real-space distance from the box centre is
        :func:`emflow.masks.radius_grid`.
    """
    return _radius_grid_cached(tuple(int(s) for s in shape), bool(rfft), None if apix is None else float(apix))


@functools.lru_cache(maxsize=16)
def _radius_grid_cached(shape: tuple[int, ...], rfft: bool, apix: float | None) -> np.ndarray:
    d = len(shape)
    step = 1.0 if apix is None else apix
    r2: np.ndarray | float = 0.0
    for i, n in enumerate(shape):
        f = scipy.fft.rfftfreq(n, d=step) if (rfft and i == d - 1) else scipy.fft.fftfreq(n, d=step)
        sh = [1] * d
        sh[i] = f.size
        r2 = r2 + (f * f).reshape(sh)
    r = np.sqrt(np.broadcast_to(r2, tuple(n // 2 + 1 if (rfft and i == d - 1) else n for i, n in enumerate(shape))))
    r.setflags(write=False)
    return r


def _sizes(x: np.ndarray, n, name: str) -> tuple[int, ...]:
    n = np.atleast_1d(np.asarray(n, dtype=int))
    if n.size == 1:
        n = np.repeat(n, x.ndim)
    if n.size != x.ndim:
        raise ValueError(f"{name}: size {tuple(n)} does not match array ndim {x.ndim}")
    if np.any(n < 1):
        raise ValueError(f"{name}: sizes must be >= 1, got {tuple(n)}")
    return tuple(int(v) for v in n)


def pad(x: np.ndarray, n, value: float = 0.0) -> np.ndarray:
    """Pad ``x`` to size ``n`` per axis, keeping the centre (index ``m//2`` lands on ``n//2``).

    Parameters
    ----------
    x : ndarray
        Any ndim.
    n : int or sequence of int
        New size per axis (>= current size).
    value : float
        Fill value.
    """
    n = _sizes(x, n, "pad")
    if any(a < b for a, b in zip(n, x.shape)):
        raise ValueError(f"pad: new size {n} is smaller than {x.shape}; use crop")
    out = np.full(n, value, dtype=x.dtype)
    sl = tuple(slice(a // 2 - b // 2, a // 2 - b // 2 + b) for a, b in zip(n, x.shape))
    out[sl] = x
    return out


def crop(x: np.ndarray, n) -> np.ndarray:
    """Centred crop of ``x`` to size ``n`` per axis (index ``m//2`` lands on ``n//2``); a copy."""
    n = _sizes(x, n, "crop")
    if any(a > b for a, b in zip(n, x.shape)):
        raise ValueError(f"crop: new size {n} is larger than {x.shape}; use pad")
    sl = tuple(slice(b // 2 - a // 2, b // 2 - a // 2 + a) for a, b in zip(n, x.shape))
    return x[sl].copy()


def _resize_axis(F: np.ndarray, axis: int, m: int, n: int) -> np.ndarray:
    """Crop or zero-pad one full (unshifted) FFT axis from length ``m`` to ``n``.

    Frequencies ``|k| < min(m, n)/2`` are copied. The shared Nyquist bin is handled so that a
    real signal stays real: when cropping, both ``±n/2`` inputs alias onto the output's
    ``-n/2`` bin; when padding, the input's ``-m/2`` bin is split evenly over ``±m/2``.
    """
    if m == n:
        return F
    Fa = np.moveaxis(F, axis, 0)
    out = np.zeros((n,) + Fa.shape[1:], dtype=F.dtype)
    k = min(m, n)
    pos = np.arange((k + 1) // 2)
    neg = np.arange(-(k // 2), 0)
    out[np.concatenate([pos, neg % n])] = Fa[np.concatenate([pos, neg % m])]
    if k % 2 == 0:  # the -k/2 bin is the Nyquist bin of the smaller grid
        if n < m:
            out[n - k // 2] += Fa[k // 2]
        else:
            out[n - k // 2] *= 0.5
            out[k // 2] = out[n - k // 2]
    return np.moveaxis(out, 0, axis)


def fourier_crop(x: np.ndarray, n, workers: int = -1) -> np.ndarray:
    """Resample ``x`` to size ``n`` by cropping or zero-padding its Fourier transform.

    Down-sampling (``n < m``) is an ideal low-pass to the new Nyquist followed by resampling;
    up-sampling is band-limited (sinc) interpolation. Frequency spacing is kept as in spec §2.4:
    the pixel size changes by ``m / n``. The box centre stays on index ``n // 2`` and the values
    keep their scale (the mean density is preserved, not the sum).

    Parameters
    ----------
    x : ndarray, real, any ndim
    n : int or sequence of int
        New size per axis; give the current size for axes that should not change (e.g.
        ``(k, 64, 64)`` for a stack of ``k`` images).
    workers : int
        ``scipy.fft`` worker threads.

    Returns
    -------
    ndarray, float32 (float64 for float64 input)
    """
    n = _sizes(x, n, "fourier_crop")
    ax = tuple(i for i, (a, b) in enumerate(zip(n, x.shape)) if a != b)
    if not ax:
        return x.copy()
    F = scipy.fft.fftn(scipy.fft.ifftshift(x, axes=ax), axes=ax, workers=workers)
    scale = 1.0
    for a in ax:
        F = _resize_axis(F, a, x.shape[a], n[a])
        scale *= n[a] / x.shape[a]
    out = scipy.fft.fftshift(scipy.fft.ifftn(F, axes=ax, workers=workers).real, axes=ax) * scale
    return out.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=False)


def bin_mean(x: np.ndarray, factor) -> np.ndarray:
    """Block-average binning (IMOD ``binvol``/``newstack -bin`` style), any ndim.

    Output voxel ``i`` is the mean of input voxels ``factor*i .. factor*i + factor - 1``; a trailing
    remainder that does not fill a whole block is dropped. No low-pass filter beyond the box
    average (as in ``../shared/data``'s binned maps).

    Parameters
    ----------
    x : ndarray, any ndim
    factor : int or sequence of int
        Bin factor per axis (>= 1).

    Returns
    -------
    ndarray, float32 (float64 for float64 input), shape ``x.shape // factor``
    """
    f = _sizes(x, factor, "bin_mean")
    out_shape = tuple(s // b for s, b in zip(x.shape, f))
    if any(s == 0 for s in out_shape):
        raise ValueError(f"bin_mean: factor {f} larger than shape {x.shape}")
    y = x[tuple(slice(0, s * b) for s, b in zip(out_shape, f))]
    y = y.reshape(tuple(v for pair in zip(out_shape, f) for v in pair))
    dt = np.float64 if x.dtype == np.float64 else np.float32
    return y.mean(axis=tuple(range(1, 2 * x.ndim, 2)), dtype=np.float64).astype(dt)


def shift(x: np.ndarray, shift_xyz, workers: int = -1) -> np.ndarray:
    """Sub-pixel shift by a Fourier phase ramp; content moves by ``+shift`` (periodic).

    Parameters
    ----------
    x : ndarray, real
        Image ``(ny, nx)``, volume ``(nz, ny, nx)``, or a stack of images ``(n, ny, nx)`` when
        ``shift_xyz`` has shape ``(n, 2)``.
    shift_xyz : array-like
        ``(sx, sy)`` for images, ``(sx, sy, sz)`` for volumes, in pixels, ordered x, y, z; or
        ``(n, 2)`` per-image shifts for a stack.
    workers : int
        ``scipy.fft`` worker threads.

    Returns
    -------
    ndarray, same shape, float32 (float64 for float64 input)
    """
    s = np.asarray(shift_xyz, dtype=np.float64)
    if s.ndim == 2:
        if x.ndim != 3 or s.shape != (x.shape[0], 2):
            raise ValueError(f"shift: per-image shifts {s.shape} need a stack (n, ny, nx), got {x.shape}")
        d, lead = 2, (slice(None),)
    else:
        d = x.ndim
        if s.shape != (d,):
            raise ValueError(f"shift: shift_xyz must have {d} components (x, y[, z]), got {s.shape}")
        s = s[None]
        lead = ()
    axes = tuple(range(x.ndim - d, x.ndim))
    F = ft(x, axes=axes, workers=workers)
    g = freq_grid(x.shape[-d:])
    phase = np.zeros((s.shape[0],) + tuple(np.broadcast_shapes(*[k.shape for k in g])))
    for i, k in enumerate(g[::-1]):  # kx pairs with sx, ky with sy, ...
        phase = phase + k[None] * s[:, i].reshape((-1,) + (1,) * d)
    ramp = np.exp(-2j * np.pi * phase)
    if not lead:
        ramp = ramp[0]
    F = F * ramp.astype(F.dtype)
    out = ift(F, x.shape[-d:], axes=axes, workers=workers)
    return out.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=False)
