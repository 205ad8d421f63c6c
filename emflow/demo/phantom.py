"""Building blocks of the demo simulator: map resampling, particle placement, pasting, dose
order, footprints.

Private to :mod:`emflow.demo.simulate`; kept separate so each piece is small and tested alone.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from emflow import fourier
from emflow._numba import jit
from emflow.ctf import CTF, ctf_1d
from emflow.errors import InputError

TILT_SCHEMES = ("dose_symmetric", "sequential")


def particle_radius_px(vol: np.ndarray, mass_fraction: float = 0.99) -> float:
    """Radius (px) of the centred sphere holding ``mass_fraction`` of the map's integral.

    ``vol`` is ``(n, n, n)`` with the particle centred on voxel ``n//2``. The signed cumulative
    integral is used, so the Gibbs ringing of a Fourier-cropped map (small, of both signs, but
    spread over the whole box) does not inflate the radius as a threshold on ``|vol|`` would.
    """
    vol = np.asarray(vol, dtype=np.float64)
    n = vol.shape[0]
    c = n // 2
    z, y, x = np.ogrid[:n, :n, :n]
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2).ravel()
    order = np.argsort(r)
    cumulative = np.cumsum(vol.ravel()[order])
    total = cumulative[-1]
    if not total > 0:
        raise ValueError("vol has no positive mass")
    return float(r[order][np.searchsorted(cumulative, mass_fraction * total)])


def place_particles(
    n: int,
    shape_xyz: tuple[int, int, int],
    radius_px: float,
    min_dist_px: float,
    rng: np.random.Generator,
    *,
    batch: int = 512,
    max_batches: int = 200,
) -> np.ndarray:
    """Random non-overlapping particle centres inside a slab.

    Centres are uniform in ``|x| ≤ nx/2 − r − 1``, ``|y| ≤ ny/2 − r − 1``, ``|z| ≤ nz/2 − r − 1``
    (px from the volume centre, ``r = radius_px``), so every particle lies wholly inside the
    volume, and any two centres are at least ``min_dist_px`` apart (random sequential adsorption:
    each new centre is the first of a batch of uniform candidates that keeps the distance).

    Returns
    -------
    ndarray, float64, shape (n, 3)
        Centres ``(x, y, z)`` in px from the volume centre.

    Raises
    ------
    InputError
        If the slab is thinner than a particle, or ``n`` particles do not fit.
    """
    half = np.array(shape_xyz, dtype=np.float64) / 2.0 - radius_px - 1.0
    if np.any(half < 0):
        raise InputError(
            f"a particle of radius {radius_px:.1f} px does not fit a volume of {tuple(shape_xyz)} px",
            source="demo.tomo.shape_xyz",
            fix=f"make every dimension at least {int(np.ceil(2 * radius_px + 2))} px",
        )
    centres = np.empty((n, 3))
    count = 0
    for _ in range(max_batches):
        cand = rng.uniform(-half, half, size=(batch, 3))
        for c in cand:
            if count == n:
                break
            if count == 0 or np.min(np.sum((centres[:count] - c) ** 2, axis=1)) >= min_dist_px**2:
                centres[count] = c
                count += 1
        if count == n:
            return centres
    raise InputError(
        f"could place only {count} of {n} particles at least {min_dist_px} px apart",
        source="demo.tomo.n_particles",
        fix="lower n_particles or min_dist_px, or enlarge shape_xyz",
    )


def acquisition_order(tilts_deg: np.ndarray, scheme: str = "dose_symmetric", group: int = 2) -> np.ndarray:
    """Position of every tilt in the acquisition sequence (0 = first exposed).

    ``"dose_symmetric"`` (Hagen et al. 2017, doi:10.1016/j.jsb.2016.06.007): start at the tilt
    nearest 0°, then alternate groups of ``group`` tilts on the positive and negative side,
    moving outwards. ``"sequential"``: from the most negative to the most positive tilt.
    """
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    if scheme not in TILT_SCHEMES:
        raise InputError(f"unknown tilt scheme {scheme!r}", source="demo.tomo.tilt_scheme",
                         fix=f"use one of {TILT_SCHEMES}")
    order = np.empty(tilts.size, dtype=np.int64)
    if scheme == "sequential":
        order[np.argsort(tilts, kind="stable")] = np.arange(tilts.size)
        return order
    start = int(np.argmin(np.abs(tilts)))
    pos = [i for i in np.argsort(tilts, kind="stable") if tilts[i] > tilts[start]]
    neg = [i for i in np.argsort(-tilts, kind="stable")
           if tilts[i] < tilts[start] or (tilts[i] == tilts[start] and i != start)]
    seq = [start]
    side = 0
    while pos or neg:
        src = pos if (side == 0 and pos) or not neg else neg
        seq.extend(src[:group])
        del src[:group]
        side = 1 - side
    order[np.array(seq)] = np.arange(tilts.size)
    return order


@jit
def _paste_add(image, patches, corners):
    """``image[y0:y0+p, x0:x0+p] += patches[i]`` for each particle, clipped at the edges."""
    ny, nx = image.shape
    npatch, py, px = patches.shape
    for i in range(npatch):
        y0, x0 = corners[i, 0], corners[i, 1]
        for yy in range(max(0, -y0), min(py, ny - y0)):
            for xx in range(max(0, -x0), min(px, nx - x0)):
                image[y0 + yy, x0 + xx] += patches[i, yy, xx]


def paste_patches(image: np.ndarray, patches: np.ndarray, centres_yx: np.ndarray) -> None:
    """Add square patches into ``image`` (in place) with patch centre ``p//2`` on integer pixels.

    image : (ny, nx) float32; patches : (n, p, p) float32; centres_yx : (n, 2) int pixel indices.
    """
    p = patches.shape[1]
    corners = np.asarray(centres_yx, dtype=np.int64) - p // 2
    _paste_add(image, np.ascontiguousarray(patches, dtype=np.float32), corners)


@jit
def _disc_mask(mask, centres_yx, radius):
    ny, nx = mask.shape
    r2 = radius * radius
    for i in range(centres_yx.shape[0]):
        cy, cx = centres_yx[i, 0], centres_yx[i, 1]
        for y in range(max(0, int(np.floor(cy - radius))), min(ny, int(np.ceil(cy + radius)) + 1)):
            for x in range(max(0, int(np.floor(cx - radius))), min(nx, int(np.ceil(cx + radius)) + 1)):
                if (y - cy) ** 2 + (x - cx) ** 2 <= r2:
                    mask[y, x] = True


def footprint_mask(shape_yx: tuple[int, int], centres_yx: np.ndarray, radius_px: float) -> np.ndarray:
    """Boolean ``(ny, nx)`` union of discs of ``radius_px`` around sub-pixel centres ``(n, 2)`` (y, x)."""
    mask = np.zeros(shape_yx, dtype=np.bool_)
    _disc_mask(mask, np.asarray(centres_yx, dtype=np.float64).reshape(-1, 2), float(radius_px))
    return mask


def resample_map(vol: np.ndarray, apix_in: float, apix_out: float, box: int | None = None) -> np.ndarray:
    """Resample a cubic map to a new pixel size (and optionally a new box).

    The map is Fourier-cropped (or padded) to the even size ``n·apix_in/apix_out`` nearest the
    exact ratio (:func:`emflow.fourier.fourier_crop`: no aliasing, mean density kept). When that
    size is not exact, a cubic-spline zoom about the centre voxel corrects the residual scale
    (< 1 px over the box). ``box`` then pads or crops about the centre.

    Parameters
    ----------
    vol : ndarray, shape (n, n, n)
        Map ``[z, y, x]`` centred on voxel ``n//2``.
    apix_in, apix_out : float
        Å/px of the input and of the result.
    box : int, optional
        Output box; default: the resampled size.

    Returns
    -------
    ndarray, float32, shape (m, m, m)
    """
    vol = np.asarray(vol, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"vol must be a cubic 3D map, got shape {vol.shape}")
    if apix_in <= 0 or apix_out <= 0:
        raise InputError(f"pixel sizes must be positive (got {apix_in}, {apix_out})", source="apix")
    n = vol.shape[0]
    exact = n * apix_in / apix_out
    m = max(2, 2 * int(round(exact / 2)))
    out = fourier.fourier_crop(vol, m) if m != n else vol.copy()
    scale = exact / m  # output voxel spacing in units of the Fourier-cropped voxels is 1/scale
    if abs(scale - 1.0) > 1e-4:
        c = m // 2
        out = scipy.ndimage.affine_transform(
            out, np.eye(3) / scale, offset=c - c / scale, order=3, mode="constant"
        ).astype(np.float32)
    if box is not None and box != m:
        out = fourier.pad(out, box) if box > m else fourier.crop(out, box)
    return out


def ctf_stack(defocus_um: np.ndarray, size: int, apix: float, voltage_kv: float, cs_mm: float,
               ampcont: float) -> np.ndarray:
    """Non-astigmatic CTFs ``(n, size, size//2+1)`` float32 on the :func:`fourier.ft` grid.

    Equal to :func:`emflow.ctf.ctf_2d_stack` without astigmatism, but evaluated on the
    precomputed ``|s|`` grid (no per-particle angle grids).
    """
    s = fourier.radius_grid((size, size)) / apix
    out = np.empty((len(defocus_um), size, size // 2 + 1), dtype=np.float32)
    for i, d in enumerate(defocus_um):  # one vectorised grid evaluation per particle
        out[i] = ctf_1d(CTF(defocus_um=float(d), voltage_kv=voltage_kv, cs_mm=cs_mm, ampcont=ampcont), s)
    return out


def shift_ramps(shifts_xy: np.ndarray, size: int) -> np.ndarray:
    """Phase ramps ``exp(−2πi(kx·tx + ky·ty))`` (moves an image by ``+t``), complex64, separable."""
    ky, kx = fourier.freq_grid((size, size))
    ry = np.exp(-2j * np.pi * ky[None] * shifts_xy[:, 1, None, None]).astype(np.complex64)
    rx = np.exp(-2j * np.pi * kx[None] * shifts_xy[:, 0, None, None]).astype(np.complex64)
    return ry * rx
