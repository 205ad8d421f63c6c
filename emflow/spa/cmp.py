"""Image comparators of EMAN2's ``cmp`` family (spec §5.1); every score is *lower is better*.

All functions compare stacks pairwise: ``image`` and ``with_`` are ``(n, ny, nx)`` float32
(or single ``(ny, nx)`` images) and the result is ``(n,)`` float32. ``image`` is EMAN's
*this* (in simmx the particle), ``with_`` the reference it is compared with (the aligned
projection). Real-space comparators (``ccc``, ``dot``, ``sqeuclidean``) work on pixels; ``frc``
and ``phase`` on centred real FFTs with rings ``r = round(|k|)`` in Fourier pixels (spec §2.5).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.fft

from emflow._numba import pjit
from emflow.errors import InputError

#: Comparators this module implements and the options each one accepts.
COMPARATORS = {
    "ccc": {"negative": 1},
    "dot": {"normalize": 0, "negative": 1},
    "sqeuclidean": {"normto": 0, "zeromask": 0},
    "frc": {"zeromask": 0, "snrweight": 0, "sweight": 1, "ampweight": 0, "minres": 200.0, "maxres": 8.0},
    "phase": {"zeromask": 0, "snrweight": 0, "ampweight": 0, "minres": 500.0, "maxres": 10.0},
}

#: Score returned for degenerate input (EMAN returns −(−2)).
DEGENERATE = 2.0


def parse_cmp(spec: str | None, source: str = "cmp") -> tuple[str, dict]:
    """Parse an EMAN option string ``"frc:zeromask=1:snrweight=1"`` into ``(name, options)``.

    Unknown comparators or options raise :class:`InputError` naming ``source`` (a config key).
    Options not given take the defaults of :data:`COMPARATORS`.
    """
    if not spec:
        raise InputError("empty comparator", source=source, fix="use e.g. 'ccc' or 'frc:zeromask=1'")
    name, *items = str(spec).split(":")
    name = name.strip().lower()
    if name not in COMPARATORS:
        raise InputError(f"unknown comparator {name!r}", source=source, fix=f"use one of {sorted(COMPARATORS)}")
    opts = dict(COMPARATORS[name])
    for item in items:
        if "=" not in item:
            raise InputError(f"option {item!r} is not key=value", source=source)
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in opts:
            raise InputError(f"comparator {name!r} has no option {key!r}", source=source,
                             fix=f"options are {sorted(opts)}")
        try:
            opts[key] = type(opts[key])(float(value))
        except ValueError:
            raise InputError(f"option {key}={value!r} is not a number", source=source) from None
    return name, opts


def _stack(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x[None] if x.ndim == 2 else x


def ring_index(ny: int, nx: int) -> np.ndarray:
    """Ring number ``round(|k|)`` of every pixel of an rfft2 array ``(ny, nx//2+1)`` (int64)."""
    ky = scipy.fft.fftfreq(ny, 1.0 / ny)
    kx = np.arange(nx // 2 + 1)
    return np.rint(np.hypot(ky[:, None], kx[None, :])).astype(np.int64)


def centred_rfft(images: np.ndarray, workers: int = -1) -> np.ndarray:
    """rfft2 of ``(n, ny, nx)`` images with the phase origin at the box centre (complex64).

    For even ``ny`` and ``nx`` the shift of the origin by half a box is the sign pattern
    ``(−1)^(ky + kx)`` on the transform (applied in place, no shifted copy of the input);
    odd sizes shift the input (``ifftshift``).
    """
    x = np.asarray(images, np.float32)
    ny, nx = x.shape[-2:]
    if ny % 2 or nx % 2:
        x = scipy.fft.ifftshift(x, axes=(-2, -1))
        return scipy.fft.rfft2(x, axes=(-2, -1), workers=workers).astype(np.complex64, copy=False)
    ft = scipy.fft.rfft2(x, axes=(-2, -1), workers=workers).astype(np.complex64, copy=False)
    ft[..., 1::2, 0::2] *= -1
    ft[..., 0::2, 1::2] *= -1
    return ft


@pjit
def _ring_sums(a, b, rings, nring, with_phase):  # pragma: no cover - numba
    """Per image and ring: Σ Re(a b*), Σ|a|², Σ|b|², Σ|Δφ| (unweighted; only when ``with_phase``:
    the arctangent costs as much as all the rest), pixel count."""
    n = a.shape[0]
    out = np.zeros((n, 5, nring), np.float64)
    for i in numba.prange(n):
        for y in range(a.shape[1]):
            for x in range(a.shape[2]):
                r = rings[y, x]
                if r >= nring:
                    continue
                av = a[i, y, x]
                bv = b[i, y, x]
                cr = av.real * bv.real + av.imag * bv.imag
                ci = av.imag * bv.real - av.real * bv.imag
                out[i, 0, r] += cr
                out[i, 1, r] += av.real * av.real + av.imag * av.imag
                out[i, 2, r] += bv.real * bv.real + bv.imag * bv.imag
                if with_phase:
                    out[i, 3, r] += abs(np.arctan2(ci, cr))
                out[i, 4, r] += 1.0
    return out


def band_weights(nring: int, ny: int, apix: float | None, minres: float, maxres: float) -> np.ndarray:
    """EMAN's tanh band-pass over ring radius ``r`` (Fourier px) for resolutions in Å."""
    r = np.arange(nring, dtype=np.float64)
    w = np.ones(nring)
    if apix:
        pmin = ny * apix / minres if minres > 0 else 0.0
        pmax = ny * apix / maxres if maxres > 0 else ny / 2.0
        if pmin > 0:
            w *= (np.tanh(5.0 * (r - pmin) / pmin) + 1.0) / 2.0
        w *= (1.0 - np.tanh(r - pmax)) / 2.0
    w[0] = 0.0  # the origin (mean) never scores
    return w


def frc_curves(image: np.ndarray, with_: np.ndarray, zeromask: bool = False, with_phase: bool = True) -> np.ndarray:
    """Per-ring sums ``(n, 5, ny//2)``: Σ Re(AB*), Σ|A|², Σ|B|², Σ|Δφ| (0 without ``with_phase``), count."""
    a, b = _stack(image), _stack(with_)
    if zeromask:
        zero = (a == 0) | (b == 0)
        a = np.where(zero, 0, a).astype(np.float32)
        b = np.where(zero, 0, b).astype(np.float32)
    ny, nx = a.shape[-2:]
    return _ring_sums(centred_rfft(a), centred_rfft(b), ring_index(ny, nx), ny // 2, with_phase)


def frc(image, with_, *, zeromask=0, snrweight=0, sweight=1, ampweight=0, minres=200.0, maxres=8.0,
        snr: np.ndarray | None = None, apix: float | None = None) -> np.ndarray:
    """EMAN ``frc`` score ``−Σ w_r FRC_r / Σ w_r`` over rings ``r < ny/2``.

    ``snr`` : ``(nring,)`` or ``(n, nring)`` SNR per ring (``nring = ny//2``) of ``image``
    (from its CTF); used when ``snrweight``; values ≤ 0 become 0.001. ``apix`` (Å/px) sets the
    tanh band-pass from ``minres``/``maxres`` (Å); without it only ``r < ny/2`` limits the sum.
    """
    s = frc_curves(image, with_, zeromask=bool(zeromask), with_phase=False)
    return frc_score_from_sums(s, _stack(image).shape[-2], sweight=sweight, snrweight=snrweight,
                               ampweight=ampweight, minres=minres, maxres=maxres, snr=snr, apix=apix)


def frc_score_from_sums(s, ny, *, zeromask=0, snrweight=0, sweight=1, ampweight=0, minres=200.0, maxres=8.0,
                        snr=None, apix=None) -> np.ndarray:
    """The ``frc`` score from ring sums ``s`` ``(n, 5, nring)`` (see :func:`frc_curves`)."""
    denom = np.sqrt(s[:, 1] * s[:, 2])
    curve = np.divide(s[:, 0], denom, out=np.zeros_like(denom), where=denom > 0)
    w = np.broadcast_to(band_weights(s.shape[-1], ny, apix, minres, maxres), curve.shape).copy()
    if sweight:
        w *= s[:, 4]
    if snrweight and snr is not None:
        w *= np.maximum(np.asarray(snr, np.float64), 0.001)
    if ampweight:
        w *= np.sqrt(s[:, 2] / np.maximum(s[:, 4], 1))
    wsum = w.sum(axis=1)
    score = -np.divide((w * curve).sum(axis=1), wsum, out=np.zeros_like(wsum), where=wsum > 0)
    return np.where(np.isfinite(score), score, DEGENERATE).astype(np.float32)


def phase(image, with_, *, zeromask=0, snrweight=0, ampweight=0, minres=500.0, maxres=10.0,
          snr: np.ndarray | None = None, apix: float | None = None) -> np.ndarray:
    """EMAN ``phase``: weighted mean phase error (radians) over rings ``r < ny/2``."""
    s = frc_curves(image, with_, zeromask=bool(zeromask))
    return phase_score_from_sums(s, _stack(image).shape[-2], snrweight=snrweight, ampweight=ampweight,
                                 minres=minres, maxres=maxres, snr=snr, apix=apix)


def phase_score_from_sums(s, ny, *, zeromask=0, snrweight=0, ampweight=0, minres=500.0, maxres=10.0,
                          snr=None, apix=None) -> np.ndarray:
    """The ``phase`` score from ring sums ``s`` ``(n, 5, nring)`` (see :func:`frc_curves`)."""
    w = np.broadcast_to(band_weights(s.shape[-1], ny, apix, minres, maxres), s[:, 0].shape).copy()
    if snrweight and snr is not None:
        w *= np.maximum(np.asarray(snr, np.float64), 0.001)
    if ampweight:
        w *= np.sqrt(s[:, 2] / np.maximum(s[:, 4], 1))
    err = (w * s[:, 3]).sum(axis=1)
    norm = (w * s[:, 4]).sum(axis=1)
    return np.divide(err, norm, out=np.full_like(err, DEGENERATE), where=norm > 0).astype(np.float32)


def ccc(image, with_, *, negative=1, mask: np.ndarray | None = None) -> np.ndarray:
    """EMAN ``ccc``: ``−ρ`` (Pearson) over all pixels, or pixels where ``mask > 0.5``."""
    a, b = _stack(image).astype(np.float64), _stack(with_).astype(np.float64)
    sel = np.ones(a.shape[-2:], bool) if mask is None else np.asarray(mask) > 0.5
    a, b = a[:, sel], b[:, sel]
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    rho = np.divide((a * b).sum(axis=1), denom, out=np.full(len(a), np.nan), where=denom > 0)
    score = -rho if negative else rho
    return np.where(np.isfinite(score), score, DEGENERATE).astype(np.float32)


def dot(image, with_, *, normalize=0, negative=1, mask: np.ndarray | None = None) -> np.ndarray:
    """EMAN ``dot``: ``−Σxy/N`` or, with ``normalize``, ``−Σxy/√(Σx²Σy²)``."""
    a, b = _stack(image).astype(np.float64), _stack(with_).astype(np.float64)
    sel = np.ones(a.shape[-2:], bool) if mask is None else np.asarray(mask) > 0.5
    a, b = a[:, sel], b[:, sel]
    num = (a * b).sum(axis=1)
    if normalize:
        denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
        val = np.divide(num, denom, out=np.full(len(a), np.nan), where=denom > 0)
    else:
        val = num / a.shape[1]
    score = -val if negative else val
    return np.where(np.isfinite(score), score, DEGENERATE).astype(np.float32)


def sqeuclidean(image, with_, *, normto=0, zeromask=0, mask: np.ndarray | None = None) -> np.ndarray:
    """EMAN ``sqeuclidean``: mean ``(image − with)²``.

    ``normto`` first least-squares fits ``s·with + o`` to ``image`` (kept only if ``s > 0``);
    ``zeromask`` ignores pixels that are exactly 0 in either image.
    """
    a, b = _stack(image).astype(np.float64), _stack(with_).astype(np.float64)
    use = np.ones(a.shape, bool)
    if mask is not None:
        use &= (np.asarray(mask) > 0.5)[None]
    if zeromask:
        use &= (a != 0) & (b != 0)
    cnt = np.maximum(use.sum(axis=(1, 2)), 1)
    if normto:
        mb = (b * use).sum(axis=(1, 2)) / cnt
        ma = (a * use).sum(axis=(1, 2)) / cnt
        db = (b - mb[:, None, None]) * use
        da = (a - ma[:, None, None]) * use
        var = (db * db).sum(axis=(1, 2))
        fit = np.divide((da * db).sum(axis=(1, 2)), var, out=np.zeros_like(var), where=var > 0)
        keep = fit > 0  # EMAN undoes the fit when the scale is not positive
        scale = np.where(keep, fit, 1.0)
        offset = np.where(keep, ma - fit * mb, 0.0)
        b = b * scale[:, None, None] + offset[:, None, None]
    d = (a - b) ** 2 * use
    return (d.sum(axis=(1, 2)) / cnt).astype(np.float32)


_FUNCS = {"ccc": ccc, "dot": dot, "sqeuclidean": sqeuclidean, "frc": frc, "phase": phase}


def compare(image, with_, cmp: str | tuple[str, dict], *, mask=None, snr=None, apix=None) -> np.ndarray:
    """Score pairs ``(image[i], with_[i])`` with comparator ``cmp`` (string or parsed tuple).

    ``mask`` (``(ny, nx)``, 0/1) multiplies both images first for Fourier comparators and selects
    pixels for real-space ones (EMAN's simmx ``--mask``). ``snr`` and ``apix`` feed ``frc``/``phase``.
    Returns ``(n,)`` float32 scores, lower is better.
    """
    name, opts = parse_cmp(cmp) if isinstance(cmp, str) else cmp
    if name in ("frc", "phase"):
        if mask is not None:
            m = np.asarray(mask, np.float32)
            image, with_ = _stack(image) * m, _stack(with_) * m
        return _FUNCS[name](image, with_, snr=snr, apix=apix, **opts)
    return _FUNCS[name](image, with_, mask=mask, **opts)
