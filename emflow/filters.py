"""Fourier filters, normalisation and structure-factor tools (EMAN2 processor semantics).

Conventions (spec §2.4): cutoffs are given as a resolution ``res_a`` in Å, i.e. a frequency
``1/res_a`` in 1/Å. Frequencies are ``s = |k| / (n·apix)`` with per-axis box sizes, so non-cubic
boxes are handled. All radial filters are real and radially symmetric, so they are applied on the
plain ``rfftn`` (the phase origin does not matter for a real symmetric multiplier).

Every filter takes ``ndim`` (default: all axes of ``x``): with ``ndim=2`` a stack
``(n, ny, nx)`` is filtered image by image.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.fft

from emflow.errors import InputError
from emflow.fourier import radius_grid
from emflow.fsc import FSCCurve, _shell_grid, shell_index

__all__ = [
    "freq_grid_inv_a",
    "bandpass_profile",
    "apply_radial_filter",
    "lowpass_tophat",
    "lowpass_gauss",
    "highpass_gauss",
    "bandpass",
    "phase_randomize",
    "normalize",
    "normalize_edgemean",
    "normalize_circlemean",
    "radial_profile",
    "set_structure_factor",
    "fsc_to_wiener",
    "fsc_weight_filter",
    "apply_symmetry",
    "normalize_by_mass",
]

PROTEIN_DA_PER_A3 = 0.81  # EMAN's protein density used by normalize.bymass (Da/Å³)


def freq_grid_inv_a(shape: Sequence[int], apix: float) -> np.ndarray:
    """Spatial frequency magnitude |s| (1/Å) on the rfft-half grid of a real array ``shape``.

    Returns a read-only float64 array of shape ``shape[:-1] + (shape[-1]//2 + 1,)`` (unshifted
    layout), cached per (shape, apix).
    """
    return radius_grid(shape, apix=float(apix))


def _check_apix(apix: float) -> float:
    if not np.isfinite(apix) or apix <= 0:
        raise InputError(f"pixel size must be positive, got {apix}", source="apix", fix="give the pixel size in Å/px")
    return float(apix)


def _axes(x: np.ndarray, ndim: int | None) -> tuple[int, ...]:
    nd = x.ndim if ndim is None else int(ndim)
    if nd < 1 or nd > x.ndim:
        raise ValueError(f"ndim={ndim} invalid for an array of shape {x.shape}")
    return tuple(range(x.ndim - nd, x.ndim))


def apply_radial_filter(
    x: np.ndarray,
    apix: float,
    func: Callable[[np.ndarray], np.ndarray],
    ndim: int | None = None,
    workers: int = -1,
) -> np.ndarray:
    """Multiply the FT of ``x`` by ``func(s)``, ``s`` = |frequency| in 1/Å.

    Parameters
    ----------
    x : ndarray
        Real image/volume (or stack, see ``ndim``).
    apix : float
        Pixel size, Å/px.
    func : callable
        Maps an array of frequencies (1/Å, float64) to real filter values.
    ndim : int, optional
        Number of trailing axes that are transformed (default all).

    Returns
    -------
    ndarray of float32, same shape as ``x``.
    """
    apix = _check_apix(apix)
    x = np.asarray(x, dtype=np.float32)
    axes = _axes(x, ndim)
    shape = tuple(x.shape[a] for a in axes)
    filt = np.asarray(func(freq_grid_inv_a(shape, apix)), dtype=np.float32)
    ft = scipy.fft.rfftn(x, axes=axes, workers=workers)
    ft *= filt
    return scipy.fft.irfftn(ft, s=shape, axes=axes, workers=workers).astype(np.float32, copy=False)


def lowpass_tophat(x: np.ndarray, apix: float, res_a: float, ndim: int | None = None) -> np.ndarray:
    """EMAN ``filter.lowpass.tophat``: zero every Fourier component with s > 1/res_a (1/Å)."""
    cutoff = 1.0 / float(res_a)
    return apply_radial_filter(x, apix, lambda s: (s <= cutoff).astype(np.float32), ndim)


def lowpass_gauss(x: np.ndarray, apix: float, res_a: float, ndim: int | None = None) -> np.ndarray:
    """EMAN ``filter.lowpass.gauss``: multiply by ``exp(−s²/(2σ²))``, σ = 1/res_a (1/Å).

    The amplitude at s = σ is ``exp(−1/2) ≈ 0.61`` (not 0.5).
    """
    sigma = 1.0 / float(res_a)
    return apply_radial_filter(x, apix, lambda s: np.exp(-(s * s) / (2 * sigma * sigma)), ndim)


def highpass_gauss(x: np.ndarray, apix: float, res_a: float, ndim: int | None = None) -> np.ndarray:
    """EMAN ``filter.highpass.gauss``: multiply by ``1 − exp(−s²/(2σ²))``, σ = 1/res_a (1/Å)."""
    sigma = 1.0 / float(res_a)
    return apply_radial_filter(x, apix, lambda s: 1.0 - np.exp(-(s * s) / (2 * sigma * sigma)), ndim)


def bandpass_profile(
    freq: np.ndarray,
    apix: float,
    lowpass_res_a: float | None = None,
    highpass_res_a: float | None = None,
    kind: str = "cosine",
    edge: float | None = None,
) -> np.ndarray:
    """The one band-pass: filter values on a grid of frequencies ``freq`` (cycles/px).

    Vocabulary (as the config keys ``tempmatch.lowpass_res_a`` / ``highpass_res_a``):
    ``lowpass_res_a`` is the finest detail kept (Å; the low-pass removes frequencies above
    ``apix / lowpass_res_a`` cycles/px), ``highpass_res_a`` the coarsest (Å; the high-pass removes
    frequencies below ``apix / highpass_res_a``), so ``lowpass_res_a < highpass_res_a``. ``None`` (or 0)
    switches a side off.

    Parameters
    ----------
    freq : ndarray
        |k| in cycles/px (e.g. :func:`emflow.fourier.radius_grid`), any float dtype.
    apix : float
        Pixel size (Å/px).
    lowpass_res_a, highpass_res_a : float or None
        Cut-offs (Å), see above.
    kind : {"cosine", "gauss", "tophat"}
        ``cosine``: raised-cosine edges of width ``edge`` (cycles/px) centred on each cut-off (the
        template-matching filter); ``gauss``: Gaussian high-pass × Gaussian low-pass with σ at the
        cut-offs; ``tophat``: 1 on ``apix/highpass_res_a ≤ freq ≤ apix/lowpass_res_a``, else 0.
    edge : float, optional
        Edge width (cycles/px), required for ``cosine``.

    Returns
    -------
    ndarray of float32, the shape of ``freq``.
    """
    if lowpass_res_a and highpass_res_a and lowpass_res_a >= highpass_res_a:
        raise InputError(
            f"band-pass limits reversed: lowpass_res_a={lowpass_res_a} Å (finest detail kept) must be smaller "
            f"than highpass_res_a={highpass_res_a} Å (coarsest detail kept)",
            source="bandpass", fix="swap the two resolutions",
        )
    out = np.ones(freq.shape, np.float32)
    if kind == "cosine":
        if edge is None or not edge > 0:
            raise ValueError(f"bandpass_profile: kind 'cosine' needs edge > 0 (cycles/px), got {edge}")
        if lowpass_res_a:
            fc = apix / lowpass_res_a
            t = np.clip((freq - (fc - edge / 2)) / edge, 0, 1)
            out *= (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)
        if highpass_res_a:
            fc = apix / highpass_res_a
            t = np.clip((freq - (fc - edge / 2)) / edge, 0, 1)
            out *= (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)
    elif kind == "gauss":
        if highpass_res_a:
            lo = apix / float(highpass_res_a)
            out *= (1.0 - np.exp(-(freq * freq) / (2 * lo * lo))).astype(np.float32)
        if lowpass_res_a:
            hi = apix / float(lowpass_res_a)
            out *= np.exp(-(freq * freq) / (2 * hi * hi)).astype(np.float32)
    elif kind == "tophat":
        if highpass_res_a:
            out *= freq >= apix / float(highpass_res_a)
        if lowpass_res_a:
            out *= freq <= apix / float(lowpass_res_a)
    else:
        raise ValueError(f"bandpass: kind must be 'cosine', 'gauss' or 'tophat', got {kind!r}")
    return out


def bandpass(
    x: np.ndarray,
    apix: float,
    lowpass_res_a: float | None = None,
    highpass_res_a: float | None = None,
    kind: str = "gauss",
    edge: float | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Band-pass ``x``: keep details between ``lowpass_res_a`` (finest, Å) and ``highpass_res_a`` (coarsest, Å).

    The filter is :func:`bandpass_profile` (same vocabulary and kinds); ``ndim`` as in
    :func:`apply_radial_filter`.
    """
    apix = _check_apix(apix)
    return apply_radial_filter(
        x, apix, lambda s: bandpass_profile(s * apix, apix, lowpass_res_a, highpass_res_a, kind, edge), ndim
    )


def phase_randomize(
    x: np.ndarray, apix: float, res_a: float, rng: np.random.Generator, ndim: int | None = None
) -> np.ndarray:
    """EMAN ``filter.lowpass.randomphase``: random phases beyond s > 1/res_a, amplitudes kept.

    The random phases are those of the FT of real white noise, so they are Hermitian-consistent
    and the result is exactly real (self-conjugate coefficients get a random sign).
    """
    apix = _check_apix(apix)
    x = np.asarray(x, dtype=np.float32)
    axes = _axes(x, ndim)
    shape = tuple(x.shape[a] for a in axes)
    ft = scipy.fft.rfftn(x, axes=axes, workers=-1)
    noise_ft = scipy.fft.rfftn(rng.standard_normal(x.shape).astype(np.float32), axes=axes, workers=-1)
    mag = np.abs(noise_ft)
    phase = np.where(mag > 0, noise_ft / np.where(mag > 0, mag, 1), 1.0)
    beyond = freq_grid_inv_a(shape, apix) > 1.0 / float(res_a)
    ft = np.where(beyond, np.abs(ft) * phase, ft)
    return scipy.fft.irfftn(ft, s=shape, axes=axes, workers=-1).astype(np.float32, copy=False)


def normalize(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Shift and scale to mean 0, σ 1 (statistics over ``mask > 0`` when a mask is given).

    A constant input (σ = 0) is only mean-subtracted. Returns float32.
    """
    x = np.asarray(x, dtype=np.float32)
    sel = x if mask is None else x[np.broadcast_to(np.asarray(mask) > 0, x.shape)]
    if sel.size == 0:
        raise ValueError("normalize: mask selects no voxels")
    mean = float(np.mean(sel, dtype=np.float64))
    sd = float(np.std(sel, dtype=np.float64))
    out = x - np.float32(mean)
    if sd > 0:
        out /= np.float32(sd)
    return out


def _edge_mask(shape: tuple[int, ...]) -> np.ndarray:
    edge = np.zeros(shape, dtype=bool)
    for ax in range(len(shape)):
        idx: list[slice | int] = [slice(None)] * len(shape)
        idx[ax] = 0
        edge[tuple(idx)] = True
        idx[ax] = -1
        edge[tuple(idx)] = True
    return edge


def normalize_edgemean(x: np.ndarray, ndim: int | None = None) -> np.ndarray:
    """EMAN ``normalize.edgemean``: subtract the mean of the box-border pixels, divide by σ.

    The border is every pixel/voxel on the outer faces of the box (EMAN's ``get_edge_mean``); σ is
    the standard deviation of the whole image. With ``ndim=2`` a stack is normalised per image.
    """
    x = np.asarray(x, dtype=np.float32)
    axes = _axes(x, ndim)
    if len(axes) < x.ndim:
        flat = x.reshape((-1,) + x.shape[x.ndim - len(axes):])
        return np.stack([normalize_edgemean(im) for im in flat]).reshape(x.shape)
    edge = _edge_mask(x.shape)
    mean = float(np.mean(x[edge], dtype=np.float64))
    sd = float(np.std(x, dtype=np.float64))
    out = x - np.float32(mean)
    if sd > 0:
        out /= np.float32(sd)
    return out


def normalize_circlemean(x: np.ndarray, radius: float | None = None, width: float = 1.0) -> np.ndarray:
    """EMAN ``normalize.circlemean``: subtract the mean of a thin ring/shell at ``radius``, divide by σ.

    ``radius`` is in px from the box centre ``n//2`` (default ``min(shape)//2 − 1``); the ring holds
    pixels with ``|r − radius| < width``.
    """
    x = np.asarray(x, dtype=np.float32)
    if radius is None:
        radius = min(x.shape) // 2 - 1
    from emflow.masks import radius_grid as real_radius  # masks imports this module

    r = real_radius(x.shape)
    ring = np.abs(r - radius) < width
    if not ring.any():
        raise ValueError(f"normalize_circlemean: radius {radius} selects no pixels in shape {x.shape}")
    mean = float(np.mean(x[ring], dtype=np.float64))
    sd = float(np.std(x, dtype=np.float64))
    out = x - np.float32(mean)
    if sd > 0:
        out /= np.float32(sd)
    return out


def radial_profile(x: np.ndarray, kind: str = "power", workers: int = -1) -> np.ndarray:
    """Rotationally averaged power (or amplitude) spectrum per rounded Fourier shell.

    Parameters
    ----------
    x : ndarray, 2D or 3D
        Real image or volume (cubic/square; shells are in Fourier px of the x axis).
    kind : {"power", "amplitude"}
        Mean of |F|² per shell, or the square root of it (RMS amplitude).

    Returns
    -------
    ndarray of float64, shape (nx//2 + 1,)
        Index ``r`` = shell ``r`` (frequency ``r / (nx·apix)``); index 0 is the DC term.
    """
    x = np.asarray(x, dtype=np.float32)
    nx = x.shape[-1]
    nshell = nx // 2 + 1
    ft = scipy.fft.rfftn(x, workers=workers)
    sh = shell_index(x.shape)
    valid = (sh >= 0) & (sh < nshell)
    p = np.bincount(sh[valid], weights=(ft.real[valid] ** 2 + ft.imag[valid] ** 2), minlength=nshell)[:nshell]
    cnt = np.bincount(sh[valid], minlength=nshell)[:nshell]
    prof = p / np.maximum(cnt, 1)
    if kind == "power":
        return prof
    if kind == "amplitude":
        return np.sqrt(prof)
    raise ValueError(f"radial_profile: kind must be 'power' or 'amplitude', got {kind!r}")


def _shell_lookup(shape: tuple[int, ...], values: np.ndarray, fill: float) -> np.ndarray:
    """Per-rfft-element value of a per-shell table (shells beyond the table get ``fill``)."""
    sh = _shell_grid(tuple(shape))
    table = np.append(np.asarray(values, dtype=np.float64), fill)
    return table[np.minimum(sh, len(values))]


def set_structure_factor(x: np.ndarray, target_profile: np.ndarray, workers: int = -1) -> np.ndarray:
    """EMAN ``filter.setstrucfac``: scale each shell so its mean power equals ``target_profile``.

    Parameters
    ----------
    x : ndarray, 2D or 3D
        Map to correct.
    target_profile : ndarray, shape (nx//2 + 1,)
        Target mean power per shell (as :func:`radial_profile` ``kind="power"``, index = shell).
        Shells beyond its length, and shells with no power in ``x``, are left unchanged.
    """
    x = np.asarray(x, dtype=np.float32)
    cur = radial_profile(x, "power")
    target = np.asarray(target_profile, dtype=np.float64)
    n = min(len(cur), len(target))
    scale = np.ones(len(cur))
    ok = (cur[:n] > 0) & (target[:n] >= 0)
    scale[:n][ok] = np.sqrt(target[:n][ok] / cur[:n][ok])
    scale[0] = 1.0  # keep the mean
    mult = _shell_lookup(x.shape, scale, 1.0).astype(np.float32)
    ft = scipy.fft.rfftn(x, workers=workers) * mult
    return scipy.fft.irfftn(ft, s=x.shape, workers=workers).astype(np.float32, copy=False)


def fsc_to_wiener(fsc_values: np.ndarray, freq: np.ndarray, snrmult: float = 2.0,
                  maxfreq: float | None = None) -> np.ndarray:
    """EMAN ``filter.wiener.byfsc`` turned into a per-shell filter (spec §3.10, §7-17).

    Parameters
    ----------
    fsc_values : ndarray, shape (m,)
        FSC per shell (any units of frequency, consistent with ``freq`` and ``maxfreq``).
    freq : ndarray, shape (m,)
        Shell frequencies, ascending.
    snrmult : float
        SNR multiplier: 2 for a half-map FSC applied to the combined map.
    maxfreq : float, optional
        Beyond this frequency the FSC is forced to decay (0.9× the previous value whenever it rises).

    Returns
    -------
    ndarray of float64, shape (m,)
        Filter ``W = SNR²/(SNR²+1)`` with ``SNR = snrmult·FSC/(1−FSC)``, floored at 0.001.

    Notes
    -----
    Steps: (1) beyond ``maxfreq`` a rising FSC is replaced by 0.9× the previous value; (2) once the
    FSC goes negative (from the third point on), the curve is replaced by a 5-point running mean,
    and once that mean is negative every later shell gets FSC = 1e−5; (3) FSC ≤ 0.9999.
    """
    f = np.asarray(fsc_values, dtype=np.float64).copy()
    s = np.asarray(freq, dtype=np.float64)
    m = len(f)
    raw = f.copy()
    smoothing = False
    dead = False
    for i in range(m):  # tiny (≤ a few hundred shells), sequential by nature
        if dead:
            f[i] = 1e-5
            continue
        if maxfreq is not None and i > 0 and s[i] >= maxfreq and f[i] > f[i - 1]:
            f[i] = 0.9 * f[i - 1]
            raw[i] = f[i]
        if i >= 2 and f[i] < 0:
            smoothing = True
        if smoothing:
            lo, hi = max(0, i - 2), min(m, i + 3)
            avg = float(np.mean(raw[lo:hi]))
            if avg < 0:
                dead = True
                f[i] = 1e-5
                continue
            f[i] = avg
        elif f[i] < 0:
            f[i] = 1e-5
    f = np.minimum(f, 0.9999)
    f = np.maximum(f, 0.0)
    snr = snrmult * f / (1.0 - f)
    w = snr * snr / (snr * snr + 1.0)
    return np.maximum(w, 0.001)


def fsc_weight_filter(
    x: np.ndarray,
    fsc_curve: FSCCurve,
    apix: float,
    snrmult: float = 2.0,
    maxfreq: float | None = None,
    workers: int = -1,
) -> np.ndarray:
    """Apply the FSC-based Wiener filter (``filter.wiener.byfsc``) to a map.

    Parameters
    ----------
    x : ndarray, 2D or 3D
        Map of the same box as the FSC (or any box: the filter is interpolated in 1/Å).
    fsc_curve : FSCCurve
        Half-map FSC, shells 1 … n/2.
    apix : float
        Å/px of ``x`` and of the FSC.
    snrmult : float
        2 for a half-map FSC applied to the full map.
    maxfreq : float, optional
        1/Å; beyond it the FSC is forced to decay (EMAN passes 1/restarget).

    Returns
    -------
    ndarray of float32. The DC term is kept (filter 1 at s = 0); frequencies beyond the last FSC
    shell get the last filter value.
    """
    apix = _check_apix(apix)
    freq = fsc_curve.freq_inv_a(apix)
    w = fsc_to_wiener(fsc_curve.fsc, freq, snrmult=snrmult, maxfreq=maxfreq)
    fr = np.concatenate([[0.0], freq])
    wr = np.concatenate([[1.0], w])
    return apply_radial_filter(x, apix, lambda s: np.interp(s, fr, wr), workers=workers)


def apply_symmetry(vol: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """EMAN ``xform.applysym``: average of the map transformed by every symmetry operator.

    Each copy is ``out_k(r) = vol(R_k⁻¹ r)`` about the box centre ``n//2`` (CONVENTIONS), trilinear
    with zero outside, via :func:`emflow.rotate.rotate_volume` (the identity is an exact copy).

    Parameters
    ----------
    vol : ndarray, shape (nz, ny, nx)
    matrices : ndarray, shape (nsym, 3, 3)
        Rotation matrices acting on (x, y, z) column vectors (e.g. ``get_symmetry(...).matrices``).

    Returns
    -------
    ndarray of float32, shape of ``vol``.
    """
    from emflow.rotate import rotate_volume

    vol = np.asarray(vol, dtype=np.float32)
    mats = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    acc = np.zeros(vol.shape, dtype=np.float64)
    buf = np.empty(vol.shape, dtype=np.float32)
    for R in mats:  # nsym ≤ 60 whole-volume passes
        acc += rotate_volume(vol, R, out=buf)
    return (acc / len(mats)).astype(np.float32)


def normalize_by_mass(vol: np.ndarray, apix: float, mass_kda: float, thr: float = 1.0) -> np.ndarray:
    """EMAN ``normalize.bymass`` (spec §4.6): put the correct-mass isosurface at ``thr``.

    The threshold ``t`` is the density at which the enclosed volume ``N(>t)·apix³`` times
    0.81 Da/Å³ equals ``mass_kda``; the map is scaled by ``thr / t``. We find ``t`` exactly from the
    sorted voxel values (EMAN steps the threshold by σ/5 from mean + σ/2 and interpolates; this is
    the limit of that search).

    Raises
    ------
    InputError
        If the mass is not positive or does not fit in the box, or the threshold is not positive.
    """
    apix = _check_apix(apix)
    vol = np.asarray(vol, dtype=np.float32)
    if not mass_kda > 0:
        raise InputError(f"mass must be positive, got {mass_kda} kDa", source="mass",
                         fix="give the particle mass in kDa")
    nvox = int(round(mass_kda * 1000.0 / (PROTEIN_DA_PER_A3 * apix**3)))
    if nvox < 1 or nvox >= vol.size:
        raise InputError(
            f"a mass of {mass_kda} kDa is {nvox} voxels at {apix} Å/px, outside a box of {vol.size} voxels",
            source="mass",
            fix="check the mass (kDa) and the pixel size",
        )
    t = float(np.partition(vol.ravel(), vol.size - nvox)[vol.size - nvox])
    if not t > 0:
        raise InputError(
            f"the density threshold enclosing {mass_kda} kDa is {t:.4g} (not positive)",
            source="mass",
            fix="normalise the map so that protein is positive, or check the mass",
        )
    return (vol * np.float32(thr / t)).astype(np.float32)
