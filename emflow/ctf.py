"""Contrast transfer function, phase flipping, Wiener filtering and dose weighting.

Sign convention (binding for the simulator, extraction and reconstruction):

    image FT = CTF(s) · object FT,   CTF(s) = −sin(χ(s)) · E(s)

    χ(s) = π·λ·Δf(θ)·s² − (π/2)·Cs·λ³·s⁴ + arcsin(A) + φ

with ``s`` in 1/Å, ``λ`` the relativistic electron wavelength (Å), ``Δf`` the defocus in Å
(**positive = underfocus**), ``Cs`` in Å, ``A`` the amplitude-contrast fraction, ``φ`` an extra
phase shift (phase plate) and ``E(s) = exp(−B·s²/4)`` the B-factor envelope. At low frequency
``CTF ≈ −A − π·λ·Δf·s²`` < 0: a positive (protein-like) object appears **dark** in an underfocused
image, as in real micrographs (extraction multiplies by −1 to make protein bright).

Astigmatism follows EMAN: the defocus along the direction ``θ`` of the frequency vector
(``θ = atan2(ky, kx)``, counter-clockwise from +x) is ``Δf + (dfdiff/2)·cos(2(θ − dfang))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import scipy.fft

from emflow.errors import InputError

__all__ = [
    "CTF",
    "electron_wavelength_a",
    "ctf_1d",
    "ctf_2d",
    "ctf_2d_stack",
    "phase_flip",
    "wiener_filter",
    "ctf_weighted_average",
    "ctf_zeros",
    "critical_exposure",
    "dose_weight",
]

# CODATA 2018
_H = 6.62607015e-34  # J s
_M0 = 9.1093837015e-31  # kg
_E = 1.602176634e-19  # C
_C = 299792458.0  # m/s


def electron_wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV (300 kV → 0.01969 Å)."""
    v = float(voltage_kv) * 1e3
    if not v > 0:
        raise InputError(f"voltage must be positive, got {voltage_kv} kV", source="voltage_kv")
    p = np.sqrt(2 * _M0 * _E * v * (1 + _E * v / (2 * _M0 * _C * _C)))
    return float(_H / p * 1e10)


@dataclass(frozen=True)
class CTF:
    """CTF parameters of one image (units in the names; see the module docstring for the model).

    Attributes
    ----------
    defocus_um : float
        Mean defocus, µm, positive = underfocus.
    voltage_kv : float
        Acceleration voltage, kV.
    cs_mm : float
        Spherical aberration, mm.
    ampcont : float
        Amplitude contrast as a fraction (0.1 = 10 %; EMAN files store percent).
    bfactor : float
        Envelope B-factor, Å²; envelope ``exp(−B·s²/4)``.
    dfdiff_um : float
        Astigmatism: defocus difference between the two principal directions, µm.
    dfang_deg : float
        Direction of the larger defocus, degrees counter-clockwise from +x.
    phase_shift_deg : float
        Extra phase shift (Volta phase plate), degrees.
    """

    defocus_um: float
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    ampcont: float = 0.1
    bfactor: float = 0.0
    dfdiff_um: float = 0.0
    dfang_deg: float = 0.0
    phase_shift_deg: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.ampcont < 1.0:
            raise InputError(
                f"amplitude contrast {self.ampcont} is not a fraction in [0, 1)",
                source="ampcont",
                fix="give amplitude contrast as a fraction (0.1 for 10 %)",
            )
        if not self.voltage_kv > 0:
            raise InputError(f"voltage must be positive, got {self.voltage_kv} kV", source="voltage_kv")

    @property
    def wavelength_a(self) -> float:
        """Electron wavelength, Å."""
        return electron_wavelength_a(self.voltage_kv)


def _chi(ctf: CTF, s2: np.ndarray, defocus_a: np.ndarray | float) -> np.ndarray:
    """Phase χ (rad) for squared frequency ``s2`` (1/Å²) and defocus in Å."""
    lam = ctf.wavelength_a
    cs_a = ctf.cs_mm * 1e7
    w = np.arcsin(ctf.ampcont) + np.deg2rad(ctf.phase_shift_deg)
    return np.pi * lam * defocus_a * s2 - 0.5 * np.pi * cs_a * lam**3 * s2 * s2 + w


def ctf_1d(ctf: CTF, s_inv_a: np.ndarray, angle_deg: float | None = None) -> np.ndarray:
    """CTF along a radial line.

    Parameters
    ----------
    ctf : CTF
    s_inv_a : array_like
        Frequencies in 1/Å.
    angle_deg : float, optional
        Direction of the line (degrees from +x) for astigmatic CTFs; default uses the mean defocus.

    Returns
    -------
    ndarray of float64, same shape as ``s_inv_a``: ``−sin(χ)·exp(−B s²/4)``.
    """
    s = np.asarray(s_inv_a, dtype=np.float64)
    df = ctf.defocus_um
    if angle_deg is not None:
        df = df + 0.5 * ctf.dfdiff_um * np.cos(2 * np.deg2rad(angle_deg - ctf.dfang_deg))
    s2 = s * s
    return -np.sin(_chi(ctf, s2, df * 1e4)) * np.exp(-ctf.bfactor * s2 / 4.0)


def _freq_components(shape: tuple[int, int], apix: float, rfft: bool) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = shape
    ky = np.fft.fftfreq(ny, d=apix)[:, None]
    kx = (np.fft.rfftfreq(nx, d=apix) if rfft else np.fft.fftfreq(nx, d=apix))[None, :]
    return kx, ky


def ctf_2d(ctf: CTF, shape: tuple[int, int], apix: float, rfft: bool = True) -> np.ndarray:
    """2D CTF on the unshifted FFT grid of an image.

    Parameters
    ----------
    ctf : CTF
    shape : (ny, nx)
        Real-space image shape.
    apix : float
        Pixel size, Å/px.
    rfft : bool
        True: rfft-half layout ``(ny, nx//2 + 1)`` matching ``scipy.fft.rfft2``; False: full
        ``(ny, nx)`` layout of ``fft2``. Both unshifted (DC at [0, 0]).

    Returns
    -------
    ndarray of float32
    """
    return ctf_2d_stack([ctf], shape, apix, rfft=rfft)[0]


def ctf_2d_stack(ctfs: Sequence[CTF], shape: tuple[int, int], apix: float, rfft: bool = True) -> np.ndarray:
    """:func:`ctf_2d` for many CTFs at once (e.g. per-particle defocus), shape (n, ny, nxh), float32."""
    if apix <= 0:
        raise InputError(f"pixel size must be positive, got {apix}", source="apix")
    shape = (int(shape[0]), int(shape[1]))
    kx, ky = _freq_components(shape, apix, rfft)
    s2 = kx * kx + ky * ky
    theta = np.arctan2(ky, kx)
    out = np.empty((len(ctfs),) + s2.shape, dtype=np.float32)
    for i, c in enumerate(ctfs):  # per image; each is a vectorised grid evaluation
        df_a = (c.defocus_um + 0.5 * c.dfdiff_um * np.cos(2 * (theta - np.deg2rad(c.dfang_deg)))) * 1e4
        out[i] = -np.sin(_chi(c, s2, df_a)) * np.exp(-c.bfactor * s2 / 4.0)
    return out


def _as_ctf_list(ctf: CTF | Sequence[CTF], n: int) -> list[CTF]:
    if isinstance(ctf, CTF):
        return [ctf] * n
    ctfs = list(ctf)
    if len(ctfs) != n:
        raise ValueError(f"got {len(ctfs)} CTFs for {n} images")
    return ctfs


def _apply_ctf_function(image, ctf, apix, func, workers):
    img = np.asarray(image, dtype=np.float32)
    stack = img[None] if img.ndim == 2 else img
    if stack.ndim != 3:
        raise ValueError(f"expected an image (ny, nx) or stack (n, ny, nx), got shape {img.shape}")
    ctfs = _as_ctf_list(ctf, stack.shape[0])
    shape = stack.shape[-2:]
    if all(c == ctfs[0] for c in ctfs):
        c2d = ctf_2d_stack(ctfs[:1], shape, apix)  # broadcast one CTF over the stack
    else:
        c2d = ctf_2d_stack(ctfs, shape, apix)
    ft = scipy.fft.rfft2(stack, workers=workers)
    ft *= func(c2d)
    out = scipy.fft.irfft2(ft, s=shape, workers=workers).astype(np.float32, copy=False)
    return out[0] if img.ndim == 2 else out


def phase_flip(image: np.ndarray, ctf: CTF | Sequence[CTF], apix: float, workers: int = -1) -> np.ndarray:
    """Multiply the image FT by sign(CTF) (+1 where the CTF is exactly 0).

    Parameters
    ----------
    image : ndarray, shape (ny, nx) or (n, ny, nx)
    ctf : CTF or sequence of n CTFs (one per image, e.g. per-particle defocus)
    apix : float, Å/px

    Notes
    -----
    EMAN's subtilt extraction flips with the amplitude contrast set to 0; pass
    ``dataclasses.replace(ctf, ampcont=0)`` to reproduce that. Flipping twice is the identity.
    """
    return _apply_ctf_function(image, ctf, apix, lambda c: np.where(c < 0, -1.0, 1.0).astype(np.float32), workers)


def wiener_filter(
    image: np.ndarray,
    ctf: CTF | Sequence[CTF],
    apix: float,
    snr: float | Callable[[np.ndarray], np.ndarray],
    workers: int = -1,
) -> np.ndarray:
    """CTF correction by Wiener filtering: ``F · CTF / (CTF² + 1/SNR)``.

    Parameters
    ----------
    image : ndarray, shape (ny, nx) or (n, ny, nx)
    ctf : CTF or sequence of CTFs
    apix : float, Å/px
    snr : float or callable
        Spectral SNR, constant or a function of frequency ``s`` (1/Å, rfft-half grid).
    """
    if callable(snr):
        ny, nx = np.asarray(image).shape[-2:]
        kx, ky = _freq_components((ny, nx), apix, True)
        inv: np.ndarray | float = 1.0 / np.maximum(np.asarray(snr(np.sqrt(kx * kx + ky * ky)), dtype=np.float64), 1e-12)
    else:
        if not snr > 0:
            raise InputError(f"Wiener SNR must be positive, got {snr}", source="snr")
        inv = 1.0 / float(snr)
    return _apply_ctf_function(image, ctf, apix, lambda c: (c / (c * c + inv)).astype(np.float32), workers)


def ctf_weighted_average(
    images: np.ndarray,
    ctfs: Sequence[CTF],
    apix: float,
    snr: float = 10.0,
    weights: np.ndarray | None = None,
    workers: int = -1,
) -> np.ndarray:
    """CTF-weighted (Wiener) average of images of one view (EMAN averager ``ctf.weight``-like).

    ``avg = IFT[ Σ wᵢ·CTFᵢ·Fᵢ / (Σ wᵢ·CTFᵢ² + 1/snr) ]``: each image contributes in proportion to its
    CTF, so zeros of one defocus are filled by the others, and the result is CTF-corrected.

    Parameters
    ----------
    images : ndarray, shape (n, ny, nx)
        Aligned images (same phase origin), not phase flipped.
    ctfs : sequence of n CTF
    apix : float, Å/px
    snr : float
        Wiener SNR of a single image (regularises shells where Σ CTF² is small).
    weights : ndarray (n,), optional
        Per-image weights (e.g. per-particle quality), default 1.

    Returns
    -------
    ndarray of float32, shape (ny, nx).
    """
    stack = np.asarray(images, dtype=np.float32)
    if stack.ndim != 3:
        raise ValueError(f"ctf_weighted_average: expected (n, ny, nx), got {stack.shape}")
    if not snr > 0:
        raise InputError(f"Wiener SNR must be positive, got {snr}", source="snr")
    n = stack.shape[0]
    w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32).reshape(n)
    c2d = ctf_2d_stack(_as_ctf_list(ctfs, n), (stack.shape[1], stack.shape[2]), apix)
    ft = scipy.fft.rfft2(stack, workers=workers)
    num = np.einsum("i,iyx,iyx->yx", w, c2d, ft)
    den = np.einsum("i,iyx->yx", w, c2d * c2d) + np.float32(1.0 / snr)
    return scipy.fft.irfft2(num / den, s=stack.shape[-2:], workers=workers).astype(np.float32)


def ctf_zeros(ctf: CTF, n: int, angle_deg: float | None = None) -> np.ndarray:
    """The first ``n`` frequencies (1/Å, ascending) where the CTF is zero (χ = kπ).

    Uses the mean defocus, or the defocus along ``angle_deg`` for astigmatic CTFs. Solved
    analytically: χ is a quadratic in u = s².
    """
    df = ctf.defocus_um
    if angle_deg is not None:
        df = df + 0.5 * ctf.dfdiff_um * np.cos(2 * np.deg2rad(angle_deg - ctf.dfang_deg))
    lam = ctf.wavelength_a
    a = -0.5 * np.pi * ctf.cs_mm * 1e7 * lam**3
    b = np.pi * lam * df * 1e4
    w = np.arcsin(ctf.ampcont) + np.deg2rad(ctf.phase_shift_deg)
    # χ(u) = a u² + b u + w. Zeros at χ = kπ; on the rising branch k goes up to χ_max/π, then down.
    roots: list[float] = []
    # Rising branch: k = 1, 2, ...; falling branch (Cs > 0): k = kmax, kmax − 1, ... (χ_max = kmax·π).
    ks = set(range(-n - 2, n + 3))
    if a < 0:
        kmax = int(np.floor((w - b * b / (4 * a)) / np.pi))
        ks |= set(range(kmax - n - 2, kmax + 1))
    for k in sorted(ks):
        c = w - k * np.pi
        if a == 0:
            cand = [-c / b] if b != 0 else []
        else:
            disc = b * b - 4 * a * c
            if disc < 0:
                continue
            sq = np.sqrt(disc)
            cand = [(-b + sq) / (2 * a), (-b - sq) / (2 * a)]
        roots.extend(u for u in cand if u > 0)
    s = np.sort(np.sqrt(np.unique(np.round(roots, 15))))
    if s.size < n:
        raise ValueError(f"ctf_zeros: only {s.size} zeros found for n={n}")
    return s[:n]


def critical_exposure(s_inv_a: np.ndarray, voltage_kv: float = 300.0) -> np.ndarray:
    """Grant & Grigorieff (2015) critical exposure ``N_e(s) = 0.245·s^−1.665 + 2.81`` e⁻/Å².

    Fitted at 300 kV; at other voltages it is scaled by ``0.8 + 0.002·(V − 200)`` (×0.8 at 200 kV,
    as in Unblur/Relion), clipped to ≥ 0.5.
    """
    s = np.asarray(s_inv_a, dtype=np.float64)
    scale = max(0.8 + 0.002 * (float(voltage_kv) - 200.0), 0.5)
    with np.errstate(divide="ignore"):
        ne = 0.245 * np.power(s, -1.665) + 2.81
    return ne * scale


def dose_weight(
    shape: tuple[int, int], apix: float, dose_e_per_a2: float | np.ndarray, voltage_kv: float = 300.0
) -> np.ndarray:
    """Exposure filter ``exp(−N / (2 N_e(s)))`` on the rfft-half grid (Grant & Grigorieff 2015).

    Parameters
    ----------
    shape : (ny, nx)
        Real-space image shape.
    apix : float
        Å/px.
    dose_e_per_a2 : float or array (n,)
        Accumulated exposure (e⁻/Å²) of the image(s), e.g. the exposure before a tilt image plus
        half of its own.
    voltage_kv : float

    Returns
    -------
    ndarray of float32, shape (ny, nx//2+1), or (n, ny, nx//2+1) for an array of doses. 1 at s = 0.
    """
    kx, ky = _freq_components((int(shape[0]), int(shape[1])), apix, True)
    ne = critical_exposure(np.sqrt(kx * kx + ky * ky), voltage_kv)
    dose = np.asarray(dose_e_per_a2, dtype=np.float64)
    if np.any(dose < 0):
        raise InputError("exposure must be ≥ 0 e/Å²", source="dose_e_per_a2")
    w = np.exp(-dose[..., None, None] / (2.0 * ne))
    return w.astype(np.float32)
