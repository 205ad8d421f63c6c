"""Demo data with known ground truth: cryo-ET tilt series and single-particle images.

Image model (both modes)
------------------------
A particle with orientation ``R_p`` is the reference map transformed by ``R_p``
(``docs/CONVENTIONS.md``). Its image is the Fourier central slice of the reference at the
projection transform ``R`` (tilt series: ``R = R_t · R_p`` with ``R_t = geometry.tilt_matrix``),
in units of projected density (e/Å², the map's e/Å³ times the path length), multiplied in Fourier
space by the CTF of :mod:`emflow.ctf` (``CTF = −sin χ``: protein **dark** in underfocus, like
raw micrographs) and by the exposure filter. Sub-pixel positions are phase ramps, so nothing is
interpolated twice. Every particle is projected into a patch twice its box (``pad = 2``), so
the CTF's delocalised fringes do not wrap around. Gaussian white noise sets the SNR.

**SNR** means the signal variance over particle footprints divided by the noise variance.
A footprint is the disc of the particle's radius around its projected centre (for single
particles: the particle disc in its box). In a tilt series the noise σ is the same in every
image (each tilt gets the same dose, so the same shot noise) and is set on the tilt nearest 0°.
Later exposures have less signal (dose damage), so their SNR is lower.

**Depth-dependent defocus** (spec §3.2): a particle whose centre lies at depth
``z_t = (R_t p)_z`` (px) in tilt ``t`` has defocus ``df_t − z_t · apix / 10⁴`` µm, where ``df_t``
is the tilt's defocus at the specimen mid-plane. Extraction uses the same expression, so
correcting with the recorded values is exact. The mid-plane defocus varies from tilt to
tilt by a Gaussian jitter (``defocus_jitter_um``).

**Dose**: tilts are exposed in the order given by ``tilt_scheme`` (``"dose_symmetric"``, after
Hagen et al. 2017, or ``"sequential"``). Tilt ``t`` is damped by ``exp(−N/(2 N_e(s)))`` at the
mid-exposure dose ``N = (order_t + ½) · dose_per_tilt`` (Grant & Grigorieff 2015).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from emflow import fourier
from emflow.ctf import CTF, dose_weight
from emflow.demo.phantom import (
    acquisition_order,
    ctf_stack,
    footprint_mask,
    particle_radius_px,
    paste_patches,
    place_particles,
    resample_map,
    shift_ramps,
)
from emflow.errors import InputError
from emflow.geometry import matrix_to_eman, random_rotations, tilt_matrix
from emflow.projection import VolumeProjector

__all__ = [
    "TiltSeriesTruth",
    "SpaTruth",
    "resample_map",
    "simulate_tilt_series",
    "simulate_spa",
    "noisy_picks",
    "tilt_range",
]


def tilt_range(tilt_min_deg: float, tilt_max_deg: float, step_deg: float) -> list[float]:
    """Tilt angles ``tilt_min, tilt_min + step, …`` up to ``tilt_max`` (inclusive within 1e-6°)."""
    if step_deg <= 0 or tilt_max_deg < tilt_min_deg:
        raise InputError(f"tilt range {tilt_min_deg}..{tilt_max_deg} by {step_deg} is empty",
                         source="demo.tomo.tilt_step_deg", fix="use tilt_min_deg <= tilt_max_deg and a step > 0")
    n = int(np.floor((tilt_max_deg - tilt_min_deg) / step_deg + 1e-6)) + 1
    return [float(tilt_min_deg + i * step_deg) for i in range(n)]


@dataclasses.dataclass
class TiltSeriesTruth:
    """Ground truth of one simulated tilt series.

    Attributes
    ----------
    apix : float
        Pixel size of the tilt images (Å/px, the "unbinned" pixel).
    shape_xyz : tuple of int
        Simulated specimen volume ``(nx, ny, nz)`` (px); tilt images are ``ny × nx``.
    box : int
        Box of the reference at ``apix`` (px).
    radius_px : float
        Particle radius used for placement and SNR footprints (px).
    tilts_deg, tilt_axis_deg : ndarray (ntilt,), float
        Tilt angles in stack order and the in-plane tilt-axis angle (EMAN ``ztilt``).
    defocus_um : ndarray (ntilt,)
        Defocus of each tilt at the specimen mid-plane (µm, underfocus positive).
    dose_order : ndarray (ntilt,) int
        Position of each tilt in the exposure sequence.
    dose_e_per_a2 : ndarray (ntilt,)
        Mid-exposure accumulated dose used for the exposure filter (e/Å²).
    positions_px : ndarray (n, 3)
        Particle centres ``(x, y, z)`` in px from the volume centre.
    rotations : ndarray (n, 3, 3)
        Particle orientations ``R_p`` (reference → particle).
    noise_sigma : float
        Standard deviation of the added noise (0 for noise-free data).
    snr : float or None
        Requested SNR (``None``: noise-free).
    """

    apix: float
    shape_xyz: tuple[int, int, int]
    box: int
    radius_px: float
    tilts_deg: np.ndarray
    tilt_axis_deg: float
    defocus_um: np.ndarray
    dose_order: np.ndarray
    dose_e_per_a2: np.ndarray
    positions_px: np.ndarray
    rotations: np.ndarray
    noise_sigma: float
    snr: float | None
    voltage_kv: float
    cs_mm: float
    ampcont: float
    tilt_shift_px: np.ndarray | None = None
    tilt_axis_error_deg: np.ndarray | None = None
    defocus_recorded_um: np.ndarray | None = None

    def __post_init__(self):
        n = self.tilts_deg.size
        if self.tilt_shift_px is None:
            self.tilt_shift_px = np.zeros((n, 2))
        if self.tilt_axis_error_deg is None:
            self.tilt_axis_error_deg = np.zeros(n)
        if self.defocus_recorded_um is None:
            self.defocus_recorded_um = np.array(self.defocus_um, dtype=np.float64)

    @property
    def eman_eulers(self) -> np.ndarray:
        """EMAN ``(az, alt, phi)`` degrees of each particle's ``R_p``, shape (n, 3)."""
        return matrix_to_eman(self.rotations)

    def to_dict(self) -> dict:
        """JSON-ready dict (lists of floats); every key carries its unit."""
        return {
            "apix": self.apix,
            "shape_xyz": list(self.shape_xyz),
            "box": self.box,
            "radius_px": self.radius_px,
            "tilts_deg": self.tilts_deg.tolist(),
            "tilt_axis_deg": self.tilt_axis_deg,
            "defocus_um": self.defocus_um.tolist(),
            "defocus_recorded_um": self.defocus_recorded_um.tolist(),
            "tilt_shift_px": self.tilt_shift_px.tolist(),
            "tilt_axis_error_deg": self.tilt_axis_error_deg.tolist(),
            "dose_order": self.dose_order.tolist(),
            "dose_e_per_a2": self.dose_e_per_a2.tolist(),
            "voltage_kv": self.voltage_kv,
            "cs_mm": self.cs_mm,
            "ampcont": self.ampcont,
            "noise_sigma": self.noise_sigma,
            "snr": self.snr,
            "particles": [
                {"xyz_px": p.tolist(), "eman_az_alt_phi": e.tolist(), "matrix": R.tolist()}
                for p, e, R in zip(self.positions_px, self.eman_eulers, self.rotations)
            ],
        }


def _footprint_variance(image: np.ndarray, centres_yx: np.ndarray, radius: float) -> float:
    mask = footprint_mask(image.shape, centres_yx, radius)
    return float(image[mask].var()) if mask.any() else 0.0


def simulate_tilt_series(
    ref_map: np.ndarray,
    apix_ref: float,
    *,
    apix: float,
    shape_xyz: Sequence[int],
    tilts_deg: Sequence[float] | np.ndarray,
    n_particles: int,
    rng: np.random.Generator,
    defocus_um: float = 3.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    ampcont: float = 0.1,
    dose_per_tilt: float = 3.0,
    snr: float | None = 0.08,
    tilt_axis_deg: float = 0.0,
    min_dist_px: float | None = None,
    tilt_scheme: str = "dose_symmetric",
    defocus_jitter_um: float = 0.0,
    tilt_shift_error_px: float = 0.0,
    tilt_axis_error_deg: float = 0.0,
    defocus_error_um: float = 0.0,
    progress: Callable[[float], None] | None = None,
    workers: int = -1,
) -> tuple[np.ndarray, TiltSeriesTruth]:
    """Simulate a cryo-ET tilt series of randomly placed and oriented copies of a map.

    Parameters
    ----------
    ref_map : ndarray, shape (n, n, n)
        Reference density ``[z, y, x]`` (e/Å³), centred on voxel ``n//2``.
    apix_ref : float
        Pixel size of ``ref_map`` (Å/px); the map is resampled to ``apix``.
    apix : float
        Pixel size of the tilt images (Å/px).
    shape_xyz : (nx, ny, nz)
        Specimen volume in px; particles lie wholly inside it, so ``nz`` is the slab thickness.
    tilts_deg : array_like (ntilt,)
        Tilt angles in stack order (degrees).
    n_particles : int
        Number of particles.
    rng : numpy.random.Generator
        Source of every random draw (positions, orientations, defocus jitter, noise).
    defocus_um, voltage_kv, cs_mm, ampcont
        Microscope: mid-plane defocus (µm, underfocus positive), kV, mm, fraction.
    dose_per_tilt : float
        Exposure of each tilt image (e/Å²).
    snr : float or None
        SNR of the tilt nearest 0° (see module docstring); ``None`` gives noise-free images.
    tilt_axis_deg : float
        In-plane rotation of the tilt axis (EMAN ``ztilt``, degrees).
    min_dist_px : float, optional
        Minimum centre distance (px); default one particle diameter.
    tilt_scheme : {"dose_symmetric", "sequential"}
        Exposure order (see :func:`emflow.demo.phantom.acquisition_order`).
    defocus_jitter_um : float
        Standard deviation of the per-tilt mid-plane defocus around ``defocus_um``.
    tilt_shift_error_px, tilt_axis_error_deg : float
        Residual tilt-series alignment errors, as a real aligned series has: each tilt image is
        shifted by ``N(0, σ)`` px per axis and its tilt axis rotated by ``N(0, σ)`` degrees from
        what the metadata (``.tlt``, ``tlt_params``) say. The tilt nearest 0° has neither, so it
        fixes the frame. Subtilt refinement ``t``/``r`` should recover them.
    defocus_error_um : float
        Standard deviation of the error of each tilt's *recorded* defocus
        (``truth.defocus_recorded_um``, what the info json says) against the defocus used here, as
        a CTF fit has; refinement ``d`` should recover it.
    progress : callable, optional
        Called with the fraction of tilts done.
    workers : int
        ``scipy.fft`` threads.

    Returns
    -------
    stack : ndarray, float32, shape (ntilt, ny, nx)
        Tilt images, protein dark.
    truth : TiltSeriesTruth
    """
    nx, ny, nz = (int(v) for v in shape_xyz)
    tilts = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
    if snr is not None and not snr > 0:
        raise InputError(f"snr must be positive, got {snr}", source="demo.tomo.snr")
    vol = resample_map(ref_map, apix_ref, apix)
    box = vol.shape[0]
    radius = particle_radius_px(vol)
    min_dist = 2.0 * radius if min_dist_px is None else float(min_dist_px)
    positions = place_particles(n_particles, (nx, ny, nz), radius, min_dist, rng)
    rotations = random_rotations(n_particles, rng)
    order = acquisition_order(tilts, tilt_scheme)
    dose = (order + 0.5) * dose_per_tilt
    df_tilt = defocus_um + (rng.normal(0.0, defocus_jitter_um, tilts.size) if defocus_jitter_um > 0 else 0.0)
    df_tilt = np.broadcast_to(df_tilt, tilts.shape).astype(np.float64)
    t0 = int(np.argmin(np.abs(tilts)))
    shift_err = (rng.normal(0.0, tilt_shift_error_px, (tilts.size, 2)) if tilt_shift_error_px > 0
                 else np.zeros((tilts.size, 2)))
    axis_err = rng.normal(0.0, tilt_axis_error_deg, tilts.size) if tilt_axis_error_deg > 0 else np.zeros(tilts.size)
    df_recorded = df_tilt + (rng.normal(0.0, defocus_error_um, tilts.size) if defocus_error_um > 0 else 0.0)
    shift_err[t0], axis_err[t0] = 0.0, 0.0

    projector = VolumeProjector(vol, pad=2, workers=workers)
    npad = projector.n_pad
    R_tilt = tilt_matrix(tilts, tilt_axis_deg + axis_err)  # the true geometry, not the recorded one
    stack = np.zeros((tilts.size, ny, nx), dtype=np.float32)
    centres = np.empty((tilts.size, n_particles, 2))
    for t in range(tilts.size):
        q = positions @ R_tilt[t].T  # (x, y, depth) in tilt t
        u, v = q[:, 0] + nx // 2 + shift_err[t, 0], q[:, 1] + ny // 2 + shift_err[t, 1]
        iu, iv = np.round(u), np.round(v)
        centres[t] = np.stack([v, u], axis=1)
        slices = projector.slices_ft(R_tilt[t] @ rotations, size=npad)
        slices *= shift_ramps(np.stack([u - iu, v - iv], axis=1), npad)
        slices *= ctf_stack(df_tilt[t] - q[:, 2] * apix / 1e4, npad, apix, voltage_kv, cs_mm, ampcont)
        slices *= dose_weight((npad, npad), apix, dose[t], voltage_kv) * np.float32(apix)
        patches = fourier.ift(slices, (npad, npad), workers=workers)
        paste_patches(stack[t], patches, np.stack([iv, iu], axis=1).astype(np.int64))
        if progress is not None:
            progress((t + 1) / tilts.size)

    sigma = 0.0
    if snr is not None:
        sigma = float(np.sqrt(_footprint_variance(stack[t0], centres[t0], radius) / snr))
        stack += rng.normal(0.0, sigma, stack.shape).astype(np.float32)
    truth = TiltSeriesTruth(
        apix=float(apix), shape_xyz=(nx, ny, nz), box=box, radius_px=radius, tilts_deg=tilts,
        tilt_axis_deg=float(tilt_axis_deg), defocus_um=df_tilt.copy(), dose_order=order, dose_e_per_a2=dose,
        positions_px=positions, rotations=rotations, noise_sigma=sigma, snr=snr,
        voltage_kv=float(voltage_kv), cs_mm=float(cs_mm), ampcont=float(ampcont),
        tilt_shift_px=shift_err, tilt_axis_error_deg=axis_err, defocus_recorded_um=np.asarray(df_recorded, np.float64),
    )
    return stack, truth


def noisy_picks(positions_px: np.ndarray, error_px: float, rng: np.random.Generator) -> np.ndarray:
    """Simulated manual picks: truth positions plus isotropic Gaussian error (σ per axis, px)."""
    positions_px = np.asarray(positions_px, dtype=np.float64)
    if error_px <= 0:
        return positions_px.copy()
    return positions_px + rng.normal(0.0, error_px, positions_px.shape)


@dataclasses.dataclass
class SpaTruth:
    """Ground truth of a simulated single-particle stack.

    Attributes
    ----------
    apix : float
        Å/px of the images.
    box : int
        Image size (px).
    radius_px : float
        Particle radius (px) used for the SNR footprint.
    rotations : ndarray (n, 3, 3)
        Projection transforms ``R`` (EMAN ``xform.projection``).
    shifts_px : ndarray (n, 2)
        ``(tx, ty)``: the projection was moved by ``+t`` (the particle centre is at
        ``box//2 + t``). RELION's origin is ``−t``.
    defocus_um : ndarray (n,)
        Per-particle defocus (µm, underfocus positive; no astigmatism).
    noise_sigma, snr, voltage_kv, cs_mm, ampcont
        As in :class:`TiltSeriesTruth`.
    """

    apix: float
    box: int
    radius_px: float
    rotations: np.ndarray
    shifts_px: np.ndarray
    defocus_um: np.ndarray
    noise_sigma: float
    snr: float | None
    voltage_kv: float
    cs_mm: float
    ampcont: float

    @property
    def eman_eulers(self) -> np.ndarray:
        """EMAN ``(az, alt, phi)`` degrees of each ``R``, shape (n, 3)."""
        return matrix_to_eman(self.rotations)

    def ctfs(self) -> list[CTF]:
        """The CTF of every particle."""
        return [CTF(defocus_um=float(d), voltage_kv=self.voltage_kv, cs_mm=self.cs_mm, ampcont=self.ampcont)
                for d in self.defocus_um]


def simulate_spa(
    ref_map: np.ndarray,
    apix_ref: float,
    *,
    apix: float,
    box: int,
    n: int,
    rng: np.random.Generator,
    defocus_range_um: tuple[float, float] = (1.0, 2.5),
    snr: float | None = 0.08,
    max_shift_px: float = 2.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    ampcont: float = 0.1,
    chunk: int = 256,
    progress: Callable[[float], None] | None = None,
    workers: int = -1,
) -> tuple[np.ndarray, SpaTruth]:
    """Simulate single-particle images: random orientations, shifts and defocus, CTF, noise.

    Orientations are uniform on SO(3) (the symmetry of the structure does not matter for the
    simulation; any symmetry-equivalent orientation is equally correct). Shifts are uniform in
    a disc of radius ``max_shift_px``; defocus is uniform in ``defocus_range_um``. The images are
    the raw, CTF-modulated projections with **protein white** (the RELION/EMAN particle
    convention, i.e. contrast-inverted micrograph boxes): ``image = IFT(−CTF · FT(P))``; the
    CTF is *not* corrected, it is recorded per particle for the refinement.

    Parameters
    ----------
    ref_map, apix_ref
        Reference density (cubic) and its pixel size (Å/px).
    apix : float
        Å/px of the images.
    box : int
        Image size (px); the resampled map is padded/cropped to it.
    n : int
        Number of images.
    rng : numpy.random.Generator
    defocus_range_um : (float, float)
        Uniform defocus range (µm).
    snr : float or None
        Mean signal variance over the particle disc (radius of the map at ``apix``, box
        centre) divided by the noise variance; one noise σ for all images. ``None``: no noise.
    max_shift_px : float
        Largest in-plane shift (px).
    voltage_kv, cs_mm, ampcont
        Microscope parameters.
    chunk : int
        Images per batch (memory ``≈ chunk · (2·box)²`` complex values).
    progress : callable, optional
        Called with the fraction done.
    workers : int
        ``scipy.fft`` threads.

    Returns
    -------
    stack : ndarray, float32, shape (n, box, box)
    truth : SpaTruth
    """
    lo, hi = (float(v) for v in defocus_range_um)
    if not 0 <= lo <= hi:
        raise InputError(f"defocus range {lo}..{hi} µm is not ordered", source="demo.spa.defocus_min_um",
                         fix="set defocus_min_um <= defocus_max_um")
    if snr is not None and not snr > 0:
        raise InputError(f"snr must be positive, got {snr}", source="demo.spa.snr")
    vol = resample_map(ref_map, apix_ref, apix, box=box)
    radius = particle_radius_px(vol)
    if radius + max_shift_px > box / 2:
        raise InputError(f"a particle of radius {radius:.1f} px shifted by {max_shift_px} px does not fit a "
                         f"{box} px box", source="demo.spa.box", fix=f"use a box of at least "
                         f"{fourier.good_size(int(2 * (radius + max_shift_px)) + 2)} px")
    rotations = random_rotations(n, rng)
    r = max_shift_px * np.sqrt(rng.uniform(0.0, 1.0, n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    shifts = np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)
    defocus = rng.uniform(lo, hi, n)

    projector = VolumeProjector(vol, pad=2, workers=workers)
    npad = projector.n_pad
    stack = np.empty((n, box, box), dtype=np.float32)
    for i0 in range(0, n, chunk):
        i1 = min(i0 + chunk, n)
        slices = projector.slices_ft(rotations[i0:i1], size=npad)
        slices *= shift_ramps(shifts[i0:i1], npad)
        slices *= ctf_stack(defocus[i0:i1], npad, apix, voltage_kv, cs_mm, ampcont) * np.float32(-apix)
        stack[i0:i1] = fourier.crop(fourier.ift(slices, (npad, npad), workers=workers), (i1 - i0, box, box))
        if progress is not None:
            progress(i1 / n)

    sigma = 0.0
    if snr is not None:
        disc = footprint_mask((box, box), np.array([[box // 2, box // 2]]), radius)
        signal_var = float(stack[:, disc].var(axis=1).mean())
        sigma = float(np.sqrt(signal_var / snr))
        stack += rng.normal(0.0, sigma, stack.shape).astype(np.float32)
    truth = SpaTruth(apix=float(apix), box=int(box), radius_px=radius, rotations=rotations, shifts_px=shifts,
                     defocus_um=defocus, noise_sigma=sigma, snr=snr, voltage_kv=float(voltage_kv),
                     cs_mm=float(cs_mm), ampcont=float(ampcont))
    return stack, truth
