"""Tomogram reconstruction by weighted back-projection (WBP) from a tilt series.

Geometry (``docs/CONVENTIONS.md``, "Tilt geometry"): tilt image ``i`` is the projection of the
tomogram with the specimen transform ``R_i = geometry.tilt_matrix(tilt_i, axis_rot_i,
offtilt_i)``; a point ``p = (x, y, z)`` (px from the tomogram centre) lands in that image at
``u = (R_i p)_x + tx_i + nx//2``, ``v = (R_i p)_y + ty_i + ny//2``. The simulator
(:mod:`emflow.demo.simulate`) and extraction use the same function, so a particle simulated at ``p``
reconstructs at ``p``.

Method: each tilt image is Fourier-binned (:func:`bin_tilt_series`), mean-subtracted, zero-padded
to twice its size (no wrap-around of the ramp's long real-space tails), multiplied in Fourier
space by the R-weight ``|k · n_i| · Δθ_i`` (``n_i``: unit vector perpendicular to the tilt axis in
image ``i``; ``k`` in cycles/px; ``Δθ_i``: the angular interval the tilt covers, radians) times a
radial low-pass window, then back-projected voxel by voxel with bilinear interpolation. With this
normalisation the Radon inversion is exact for a full, dense tilt range, so a tomogram of a
simulated tilt series has the density of the simulated volume (per binned voxel; up to the
missing wedge). Binning divides line integrals by ``bin`` for the same reason.

References
----------
Radermacher, M. (1992). Weighted back-projection methods. In *Electron Tomography*, Springer,
pp. 91-115. doi:10.1007/978-1-4757-2163-8_5
Kak, A. C. & Slaney, M. (1988). *Principles of Computerized Tomographic Imaging*, ch. 3.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numba
import numpy as np
import scipy.fft

from emflow import fourier
from emflow._numba import pjit
from emflow.geometry import tilt_matrix

RADIAL_WEIGHTS = ("ramp", "none")
LOWPASS_WINDOWS = ("hamming", "hann", "none")


def bin_tilt_series(stack: np.ndarray, bin: int, *, threads: int | None = None) -> np.ndarray:
    """Fourier-bin every image of a tilt series by an integer factor.

    Each image is first cropped about its centre (index ``n//2``) to a multiple of ``bin`` on
    both axes, then Fourier-cropped to ``n // bin`` (:func:`emflow.fourier.fourier_crop`: an
    ideal low-pass at the new Nyquist, no aliasing). The mean value is preserved, and the
    centre pixel ``n//2`` maps to ``(n//bin)//2``.

    Parameters
    ----------
    stack : ndarray, shape (ntilt, ny, nx)
        Tilt images (any real dtype).
    bin : int
        Binning factor ≥ 1; the output pixel size is ``apix · bin``.
    threads : int, optional
        FFT worker threads (default: all cores).

    Returns
    -------
    ndarray, float32, shape (ntilt, ny // bin, nx // bin)
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"stack must be (ntilt, ny, nx), got shape {stack.shape}")
    if int(bin) != bin or bin < 1:
        raise ValueError(f"bin must be a positive integer, got {bin}")
    bin = int(bin)
    if bin == 1:
        return stack.astype(np.float32, copy=True)
    ntilt, ny, nx = stack.shape
    my, mx = (ny // bin) * bin, (nx // bin) * bin
    if my < 2 or mx < 2:
        raise ValueError(f"images of {ny}x{nx} px are too small to bin by {bin}")
    cropped = fourier.crop(stack.astype(np.float32, copy=False), (ntilt, my, mx))
    return fourier.fourier_crop(cropped, (ntilt, my // bin, mx // bin), workers=threads or -1)


def _tilt_intervals(tilts_rad: np.ndarray) -> np.ndarray:
    """Angular interval (radians) each tilt stands for: half the gaps to its neighbours.

    The end tilts get the full gap to their one neighbour, i.e. tilts are treated as samples
    of a continuous range, so the weights sum to the covered range plus one step.
    """
    n = tilts_rad.size
    if n == 1:
        return np.array([np.pi])
    order = np.argsort(tilts_rad)
    t = tilts_rad[order]
    gaps = np.diff(t)
    width = np.empty(n)
    width[0], width[-1] = gaps[0], gaps[-1]
    width[1:-1] = 0.5 * (gaps[:-1] + gaps[1:])
    out = np.empty(n)
    out[order] = width
    return out


def r_weight_filters(
    shape_yx: tuple[int, int],
    matrices: np.ndarray,
    tilts_rad: np.ndarray,
    *,
    radial_weight: str = "ramp",
    lowpass: str = "hamming",
) -> np.ndarray:
    """Fourier weights of every tilt image (rfft layout of a ``shape_yx`` image).

    Parameters
    ----------
    shape_yx : (int, int)
        Size of the (padded) images the weights apply to.
    matrices : ndarray, shape (ntilt, 3, 3)
        Specimen transforms ``R_i`` of the tilts (CONVENTIONS.md).
    tilts_rad : ndarray, shape (ntilt,)
        Tilt angles (radians), used for the angular interval ``Δθ_i``.
    radial_weight : {"ramp", "none"}
        ``"ramp"``: ``|k · n_i| · Δθ_i`` with ``n_i`` the image of the specimen x axis
        (perpendicular to the tilt axis) and ``k`` in cycles/px; the zero-frequency line gets a
        quarter of the first sample's weight (as a band-limited ramp would), keeping the mean
        finite. ``"none"``: plain back-projection.
    lowpass : {"hamming", "hann", "none"}
        Radial window ``0.54 + 0.46 cos(2πk)`` (Hamming) or ``0.5 + 0.5 cos(2πk)`` (Hann) for
        ``|k| ≤ 0.5`` cycles/px, 0 beyond; suppresses the ramp-amplified noise at Nyquist.

    Returns
    -------
    ndarray, float32, shape (ntilt, ny, nx // 2 + 1)
    """
    if radial_weight not in RADIAL_WEIGHTS:
        raise ValueError(f"radial_weight must be one of {RADIAL_WEIGHTS}, got {radial_weight!r}")
    if lowpass not in LOWPASS_WINDOWS:
        raise ValueError(f"lowpass must be one of {LOWPASS_WINDOWS}, got {lowpass!r}")
    ny, nx = shape_yx
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k = np.sqrt(kx**2 + ky**2)
    if lowpass == "none":
        window = np.ones_like(k)
    else:
        a = 0.54 if lowpass == "hamming" else 0.5
        window = np.where(k <= 0.5, a + (1 - a) * np.cos(2 * np.pi * np.minimum(k, 0.5)), 0.0)
    ntilt = matrices.shape[0]
    out = np.empty((ntilt, ny, nx // 2 + 1), dtype=np.float32)
    if radial_weight == "none":
        out[:] = window
        return out
    dtheta = _tilt_intervals(tilts_rad)
    floor = 0.25 / max(ny, nx)
    for i in range(ntilt):
        normal = matrices[i, :2, 0]
        normal = normal / max(np.hypot(*normal), 1e-12)
        ramp = np.maximum(np.abs(kx * normal[0] + ky * normal[1]), floor)
        out[i] = ramp * dtheta[i] * window
    return out


@pjit
def _backproject_slab(images, rows, z_start, out):
    """Add the back-projection of ``images`` into the z slab ``out[z - z_start]``.

    images : (ntilt, ny_img, nx_img) float32, filtered tilt images.
    rows : (ntilt, 2, 4) float64; image coordinates of voxel p are
        ``u = rows[i,0,:3]·p + rows[i,0,3]`` and ``v = rows[i,1,:3]·p + rows[i,1,3]``
        (``p`` in px from the tomogram centre; the offset includes shift and image centre).
    z_start : int, z index (0-based, in the full tomogram) of ``out[0]``.
    out : (nz_slab, ny, nx) float32, accumulated in place; full tomogram depth is implicit
        through ``z_start`` and the caller's centre convention (rows already hold -nz//2).
    """
    ntilt, ny_img, nx_img = images.shape
    nzs, ny, nx = out.shape
    for zz in numba.prange(nzs):
        z = np.float64(z_start + zz)
        for i in range(ntilt):
            ux, uy, uz, u0 = rows[i, 0, 0], rows[i, 0, 1], rows[i, 0, 2], rows[i, 0, 3]
            vx, vy, vz, v0 = rows[i, 1, 0], rows[i, 1, 1], rows[i, 1, 2], rows[i, 1, 3]
            for iy in range(ny):
                ub = uy * iy + uz * z + u0
                vb = vy * iy + vz * z + v0
                for ix in range(nx):
                    u = ux * ix + ub
                    v = vx * ix + vb
                    if u < 0.0 or v < 0.0 or u > nx_img - 1 or v > ny_img - 1:
                        continue
                    iu = min(int(u), nx_img - 2)
                    iv = min(int(v), ny_img - 2)
                    fu = u - iu
                    fv = v - iv
                    a = images[i, iv, iu] * (1.0 - fu) + images[i, iv, iu + 1] * fu
                    b = images[i, iv + 1, iu] * (1.0 - fu) + images[i, iv + 1, iu + 1] * fu
                    out[zz, iy, ix] += np.float32(a * (1.0 - fv) + b * fv)


def projection_rows(
    matrices: np.ndarray, shifts_px: np.ndarray, out_shape_zyx: tuple[int, int, int], img_shape_yx: tuple[int, int]
) -> np.ndarray:
    """Affine rows mapping a voxel *index* ``(ix, iy, iz)`` to image coordinates ``(u, v)``.

    ``p = (ix - nx//2, iy - ny//2, iz - nz//2)``; ``u = (R p)_x + tx + nx_img//2`` and likewise
    ``v``. Returns ``(ntilt, 2, 4)`` float64: columns x, y, z coefficient and offset.
    """
    nz, ny, nx = out_shape_zyx
    centre = np.array([nx // 2, ny // 2, nz // 2], dtype=np.float64)
    img_centre = np.array([img_shape_yx[1] // 2, img_shape_yx[0] // 2], dtype=np.float64)
    rows = np.empty((matrices.shape[0], 2, 4))
    rows[:, :, :3] = matrices[:, :2, :]
    rows[:, :, 3] = -(matrices[:, :2, :] @ centre) + shifts_px + img_centre
    return rows


def reconstruct_wbp(
    tilt_stack: np.ndarray,
    tilts_deg: Sequence[float] | np.ndarray,
    *,
    bin: int = 1,
    thickness_px: int,
    axis_rot_deg: float | Sequence[float] | np.ndarray = 0.0,
    shifts: np.ndarray | None = None,
    offtilt: Sequence[float] | np.ndarray | None = None,
    radial_weight: str = "ramp",
    lowpass: str = "hamming",
    progress: Callable[[float], None] | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Reconstruct a tomogram from a tilt series by weighted back-projection.

    Parameters
    ----------
    tilt_stack : ndarray, shape (ntilt, ny, nx)
        Tilt images at the unbinned pixel size ``apix`` (any real dtype).
    tilts_deg : array_like, shape (ntilt,)
        Tilt angle of each image (degrees, EMAN ``ytilt``).
    bin : int
        Binning; the tomogram pixel is ``apix · bin`` and its x, y size ``nx // bin, ny // bin``.
    thickness_px : int
        Tomogram depth ``nz`` in output (binned) voxels; the slab is centred on ``z = 0``.
    axis_rot_deg : float or array_like (ntilt,)
        In-plane rotation of the tilt axis (EMAN ``ztilt``, degrees), one value or per tilt.
    shifts : ndarray, shape (ntilt, 2), optional
        Per-tilt image alignment ``(tx, ty)`` in unbinned px (EMAN ``tlt_params`` columns 0-1).
    offtilt : array_like (ntilt,), optional
        Off-axis tilt (EMAN ``xtilt``, degrees).
    radial_weight, lowpass : str
        R-weighting and window, see :func:`r_weight_filters`.
    progress : callable, optional
        Called with the fraction done (0-1) after each z slab.
    threads : int, optional
        FFT worker threads; numba threads are set by the caller (``emflow._numba.set_threads``).

    Returns
    -------
    ndarray, float32, shape (thickness_px, ny // bin, nx // bin)
        Tomogram indexed ``[z, y, x]``, centre voxel ``n//2`` on each axis = specimen origin.
        For a tilt series of line integrals of a density ``V`` (in unbinned px), the tomogram
        approximates ``V`` binned by mean (missing-wedge artefacts aside).
    """
    stack = np.asarray(tilt_stack)
    if stack.ndim != 3:
        raise ValueError(f"tilt_stack must be (ntilt, ny, nx), got shape {stack.shape}")
    ntilt = stack.shape[0]
    tilts = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
    if tilts.size != ntilt:
        raise ValueError(f"tilts_deg has {tilts.size} angles for {ntilt} images")
    if thickness_px < 1:
        raise ValueError(f"thickness_px must be >= 1, got {thickness_px}")
    rot = np.broadcast_to(np.asarray(axis_rot_deg, dtype=np.float64), (ntilt,))
    off = np.zeros(ntilt) if offtilt is None else np.broadcast_to(np.asarray(offtilt, dtype=np.float64), (ntilt,))
    sh = np.zeros((ntilt, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64).reshape(ntilt, 2)

    images = bin_tilt_series(stack, bin, threads=threads) / np.float32(bin)
    _, ny, nx = images.shape
    matrices = np.asarray(tilt_matrix(tilts, rot, off), dtype=np.float64).reshape(ntilt, 3, 3)
    filtered = _filter_images(images, matrices, np.deg2rad(tilts), radial_weight, lowpass, threads)

    out_shape = (int(thickness_px), ny, nx)
    rows = projection_rows(matrices, sh / bin, out_shape, (ny, nx))
    tomogram = np.zeros(out_shape, dtype=np.float32)
    slab = max(1, min(out_shape[0], 8 * numba.get_num_threads()))
    for z0 in range(0, out_shape[0], slab):
        z1 = min(z0 + slab, out_shape[0])
        _backproject_slab(filtered, rows, z0, tomogram[z0:z1])
        if progress is not None:
            progress(z1 / out_shape[0])
    return tomogram


def _filter_images(
    images: np.ndarray, matrices: np.ndarray, tilts_rad: np.ndarray, radial_weight: str, lowpass: str,
    threads: int | None,
) -> np.ndarray:
    """Mean-subtract, pad 2x, R-weight and window each image; returns float32 (ntilt, ny, nx)."""
    ntilt, ny, nx = images.shape
    py, px = 2 * ny, 2 * nx
    padded = np.zeros((ntilt, py, px), dtype=np.float32)
    y0, x0 = py // 2 - ny // 2, px // 2 - nx // 2
    padded[:, y0 : y0 + ny, x0 : x0 + nx] = images - images.mean(axis=(1, 2), keepdims=True)
    weights = r_weight_filters((py, px), matrices, tilts_rad, radial_weight=radial_weight, lowpass=lowpass)
    workers = threads or os.cpu_count()
    f = scipy.fft.rfft2(padded, workers=workers)
    f *= weights
    back = scipy.fft.irfft2(f, s=(py, px), workers=workers)
    return np.ascontiguousarray(back[:, y0 : y0 + ny, x0 : x0 + nx], dtype=np.float32)


def central_slices(tomogram: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)):
    """Central XY, XZ and YZ sections of a tomogram and a common display range.

    Parameters
    ----------
    tomogram : ndarray, shape (nz, ny, nx)
    percentiles : (float, float)
        Display range taken over the three sections together.

    Returns
    -------
    slices : dict
        ``{"XY": (ny, nx), "XZ": (nz, nx), "YZ": (nz, ny)}`` float32 arrays through voxel ``n//2``.
    limits : (float, float)
        Grey-scale limits.
    """
    vol = np.asarray(tomogram)
    if vol.ndim != 3:
        raise ValueError(f"tomogram must be (nz, ny, nx), got shape {vol.shape}")
    nz, ny, nx = vol.shape
    slices = {
        "XY": np.asarray(vol[nz // 2], dtype=np.float32),
        "XZ": np.asarray(vol[:, ny // 2, :], dtype=np.float32),
        "YZ": np.asarray(vol[:, :, nx // 2], dtype=np.float32),
    }
    values = np.concatenate([s.ravel() for s in slices.values()])
    lo, hi = np.percentile(values, percentiles)
    return slices, (float(lo), float(hi))


# ----------------------------------------------------------------------------- tomograms made elsewhere
def imod_tomogram_layout(shape_file_zyx: tuple[int, int, int], image_yx_binned: tuple[int, int]) -> str:
    """Which way an IMOD tomogram is stored, from its array shape and the binned tilt-image size.

    ``"raw"``: IMOD ``tilt``'s default PERPENDICULAR output, array ``[Y, Zr, X]`` = MRC
    ``(NX, NY, NZ) = (nx, thickness, ny)`` (``tilt`` man page, DESCRIPTION and SLICE: slices are X/Z
    planes, one per Y of the projections). ``"rotated"``: after ``clip rotx`` / ``trimvol -rx``
    (or ``tilt`` RotateBy90), array ``[z, y, x]`` = MRC ``(nx, ny, thickness)``.

    Raises ValueError when the shape fits neither, or both (thickness equal to ny).
    """
    nz, ny, nx = shape_file_zyx
    ty, tx = image_yx_binned
    if nx != tx:
        raise ValueError(f"x size {nx} differs from the binned tilt images' {tx}")
    raw, rot = nz == ty, ny == ty
    if raw and rot:
        raise ValueError(f"thickness equals the image height ({ty} px): the layout is ambiguous")
    if not (raw or rot):
        raise ValueError(f"neither the y nor the z size matches the binned tilt images' height {ty}")
    return "raw" if raw else "rotated"


def imod_tomogram_to_emflow(vol: np.ndarray, layout: str) -> np.ndarray:
    """An IMOD tomogram as an emflow tomogram ``[z, y, x]`` (float32).

    IMOD's rotated tomogram frame is emflow's: x, y are the aligned tilt images' axes and
    ``z = -Zr`` (``clip rotx``: -90° about X), the same z that :func:`emflow.sta.importer.imod_to_tlt_params`
    gives (``docs/CONVENTIONS.md``, IMOD ↔ EMAN2). A ``"raw"`` file ``[Y, Zr, X]`` is turned by
    ``[Zr, Y, X]`` + flip of ``Zr``; a ``"rotated"`` one is used as is. IMOD centres a reconstruction
    at ``(n-1)/2`` (``tilt.f90`` L3266-3267), emflow at ``n//2``: for even sizes features land
    ≤ 0.5 voxel off in each axis.
    """
    v = np.asarray(vol)
    if layout == "raw":
        v = v.transpose(1, 0, 2)[::-1]
    elif layout != "rotated":
        raise ValueError(f"layout must be 'raw' or 'rotated', got {layout!r}")
    return np.ascontiguousarray(v, dtype=np.float32)


def fit_tomogram(vol_zyx: np.ndarray, factor: int, thickness_px: int, *, threads: int | None = None) -> np.ndarray:
    """Bring a tomogram to the pipeline's grid: Fourier-bin by ``factor`` (x, y, z; centre
    ``n//2`` kept, :func:`emflow.fourier.fourier_crop`) then crop z centrally to ``thickness_px``.

    Raises ValueError when the binned tomogram is thinner than ``thickness_px``.
    """
    v = np.asarray(vol_zyx, dtype=np.float32)
    if factor > 1:
        m = tuple((n // factor) * factor for n in v.shape)
        v = fourier.crop(v, m) if m != v.shape else v
        v = fourier.fourier_crop(v, tuple(n // factor for n in m), workers=threads or -1)
    if v.shape[0] < thickness_px:
        raise ValueError(f"the tomogram is {v.shape[0]} voxels thick after binning, less than {thickness_px}")
    if v.shape[0] > thickness_px:
        v = fourier.crop(v, (thickness_px, v.shape[1], v.shape[2]))
    return np.ascontiguousarray(v, dtype=np.float32)
