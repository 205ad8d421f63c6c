"""Template matching in tomograms: fast local normalised cross-correlation (FLCF).

What EMAN2's ``e2spt_tempmatch`` does (spec §3.4) is a plain, globally normalised CC with
no missing-wedge or CTF compensation. This module does what pytom-match-pick does instead:

* the **score** at voxel ``x`` for orientation ``R`` is the Pearson correlation, under a
  spherical mask ``M`` of the template box, between the rotated, weighted template and the
  tomogram neighbourhood of ``x`` (Roseman 2003; Förster et al. 2008). The template is
  normalised under ``M`` once per rotation; the tomogram's local mean/variance under ``M``
  do not depend on ``R`` (the mask is a sphere) and are computed once per tile by FFT;
* the template is filtered in Fourier space by the **transfer of the tomogram**: the sum of
  the central slices of the tilt images (missing wedge, Crowther gaps), each slice weighted
  by its CTF and exposure (dose) filter, plus a band-pass and optional spectral whitening;
* the search runs over ``emflow.geometry.orientations("eman", sym, delta, phitoo=delta,
  inc_mirror=True)``; per rotation the cost is one real FFT and one inverse FFT of the tile
  (the forward FFT is pruned to the template's non-zero rows and planes) plus a numba pass that
  updates the best score, the best-orientation index and the running sums from which the
  null distribution's standard deviation is estimated (Rickgauer et al. 2017). Threads take
  whole rotations (one-thread FFTs each, their own best score and index, merged per tile), so
  the search scales with the cores where one tile's FFT does not;
* big tomograms are cut into tiles that overlap by one template box.

Orientation convention: index ``i`` of the result refers to ``rotations[i]`` = ``R_p``, the
particle is the template transformed by ``R_p`` (``particle(r) = template(R_p⁻¹ r)``).
Score maps are ``(nz, ny, nx)`` float32 indexed like the tomogram; a particle centred on
voxel ``(x, y, z)`` gives its peak at ``scores[z, y, x]``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import numba
import numpy as np
import scipy.fft
import scipy.ndimage

from emflow import fourier
from emflow._numba import jit, pjit
from emflow.masks import soft_sphere

# ----------------------------------------------------------------------------- numba kernels


@pjit
def _tilt_weight_kernel(box, normals, radial, out):
    """Sum of per-tilt central slices at template box ``box`` (rfft layout) into ``out``.

    ``normals`` (ntilt, 3) float64 unit plane normals (x, y, z); ``radial`` (ntilt, nr)
    float32 per-tilt weight vs. radius in Fourier pixels (linear interpolation, clamped).
    Slice profile: triangle of half-width one Fourier pixel. Result = Σ s·w / max(1, Σ s).
    """
    nzf, nyf, nxf = out.shape
    ntilt, nr = radial.shape
    for iz in numba.prange(nzf):
        kz = iz if iz < (box + 1) // 2 else iz - box
        for iy in range(nyf):
            ky = iy if iy < (box + 1) // 2 else iy - box
            for ix in range(nxf):
                kx = ix
                r = np.sqrt(kx * kx + ky * ky + kz * kz)
                i0 = int(r)
                frac = r - i0
                if i0 >= nr - 1:
                    i0 = nr - 2
                    frac = 1.0
                num = 0.0
                den = 0.0
                for t in range(ntilt):
                    d = abs(kx * normals[t, 0] + ky * normals[t, 1] + kz * normals[t, 2])
                    if d < 1.0:
                        s = 1.0 - d
                        w = (1.0 - frac) * radial[t, i0] + frac * radial[t, i0 + 1]
                        num += s * w
                        den += s
                out[iz, iy, ix] = num / max(1.0, den)


@jit
def _conj_multiply(tomo_ft, tmpl_ft, y0, y1):
    """``tmpl_ft = tomo_ft · conj(tmpl_ft)`` in place on rows ``y0 ≤ y < y1`` (complex64, same
    C-contiguous shape; serial: one stream). Whole arrays and a row range, not strided views, so
    the row loop vectorises."""
    nz = tmpl_ft.shape[0]
    nx = tmpl_ft.shape[2]
    for z in range(nz):
        for y in range(y0, y1):
            a = tomo_ft[z, y]
            b = tmpl_ft[z, y]
            for x in range(nx):
                b[x] = a[x] * np.conj(b[x])


@jit
def _update_best(cc, inv_denom, z0, y0, x0, best, best_idx, rot_index, acc):
    """Max-update of the owned region of a tile and running sums of the scores (serial: one stream).

    ``cc`` (tile) float32 raw correlation; ``inv_denom`` (owned shape) float32, 0 where the
    voxel is not searched (its score is 0 and adds nothing to the sums; the caller resets
    those voxels); owned region = ``cc[z0:z0+nz, y0:y0+ny, x0:x0+nx]``.
    ``acc`` (2, nx) float64 accumulates Σ score, Σ score² per column x (one accumulator per
    column, so the loop over x vectorises instead of waiting on one running sum).
    Strict ``>``: called in increasing ``rot_index`` the first best rotation is kept.
    """
    nz, ny, nx = best.shape
    s = np.empty(nx, np.float32)
    for z in range(nz):
        for y in range(ny):
            c = cc[z + z0, y + y0]
            iv = inv_denom[z, y]
            for x in range(nx):  # three simple row loops vectorise; one fused loop did not (1.5x slower)
                s[x] = c[x + x0] * iv[x]
            for x in range(nx):
                v = np.float64(s[x])
                acc[0, x] += v
                acc[1, x] += v * v
            b = best[z, y]
            bi = best_idx[z, y]
            for x in range(nx):
                if s[x] > b[x]:
                    b[x] = s[x]
                    bi[x] = rot_index


@jit
def _merge_best(best, best_idx, other, other_idx):
    """``best``/``best_idx`` ← the better of the two (ties: the lower rotation index), in place.

    Streams that each visit their rotations in increasing order and keep the first maximum merge
    into the first maximum over all rotations: the result of one stream visiting them all.
    """
    nz, ny, nx = best.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                o = other[z, y, x]
                b = best[z, y, x]
                if o > b or (o == b and other_idx[z, y, x] < best_idx[z, y, x]):
                    best[z, y, x] = o
                    best_idx[z, y, x] = other_idx[z, y, x]


# ----------------------------------------------------------------------------- weights


def radial_frequency(shape: tuple[int, ...]) -> np.ndarray:
    """|k| in cycles/px on the rfft grid of a real array of ``shape`` (last axis halved), float32.

    :func:`emflow.fourier.radius_grid` in float32.
    """
    return fourier.radius_grid(shape).astype(np.float32)


def tilt_radial_weights(box: int, apix: float, n_tilts: int, *, ctf_mode: str = "none",
                        defocus_um=None, voltage_kv: float = 300.0, cs_mm: float = 2.7,
                        ampcont: float = 0.1, exposure_e_a2=None) -> np.ndarray:
    """Per-tilt weight vs. radius (Fourier px of ``box``): CTF × exposure filter.

    Parameters
    ----------
    box : int
        Template box (px) at the tomogram's pixel size ``apix`` (Å/px).
    n_tilts : int
    ctf_mode : {"none", "ctf", "phase_flipped"}
        ``"ctf"``: the tomogram was not CTF-corrected, weight ``−CTF`` (positive at low
        frequency, so the template's contrast is set by the caller's sign alone);
        ``"phase_flipped"``: ``|CTF|``; ``"none"``: 1.
    defocus_um : float or (n_tilts,) array
        Defocus of each tilt (µm, underfocus positive); needed unless ``ctf_mode="none"``.
    exposure_e_a2 : (n_tilts,) array, optional
        Accumulated exposure of each tilt (e/Å²); adds the Grant & Grigorieff filter.

    Returns
    -------
    (n_tilts, nr) float32 with ``nr = ceil(√3·box/2) + 2`` radii ``r`` (frequency ``r/(box·apix)`` 1/Å).
    """
    from emflow import ctf as ctfmod

    nr = int(np.ceil(np.sqrt(3) * box / 2)) + 2
    s = np.arange(nr) / (box * apix)
    out = np.ones((n_tilts, nr), np.float64)
    if ctf_mode not in ("none", "ctf", "phase_flipped"):
        raise ValueError(f"ctf_mode must be none, ctf or phase_flipped, got {ctf_mode!r}")
    if ctf_mode != "none":
        if defocus_um is None:
            raise ValueError("defocus_um is needed for CTF weighting")
        dfs = np.broadcast_to(np.asarray(defocus_um, np.float64), (n_tilts,))
        for t, df in enumerate(dfs):
            c = -ctfmod.ctf_1d(ctfmod.CTF(defocus_um=float(df), voltage_kv=voltage_kv, cs_mm=cs_mm,
                                          ampcont=ampcont), s)
            out[t] *= np.abs(c) if ctf_mode == "phase_flipped" else c
    if exposure_e_a2 is not None:
        ne = ctfmod.critical_exposure(np.maximum(s, 1e-6), voltage_kv)
        out *= np.exp(-np.asarray(exposure_e_a2, np.float64)[:, None] / (2.0 * ne[None, :]))
    return out.astype(np.float32)


def so3_rings(delta_deg: float, n_fold: int = 1) -> np.ndarray:
    """An even grid of SO(3) for a search at step ``delta_deg`` (EMAN ``az, alt, phi`` degrees, (n, 3)).

    Altitude rings ``alt = k·180/n_alt`` (``n_alt = round(180/δ)``, poles included); on each ring
    ``n_az = max(1, round(360·sin(alt)/(n_fold·δ)))`` azimuths evenly over the ``Cn`` asymmetric
    wedge ``[0, 360/n_fold)`` (one at the poles, where az and phi coincide); ``round(360/δ)``
    in-plane angles ``phi`` evenly over 360°. Unlike EMAN's ``eman`` generator (az step
    ``δ/sin(alt)`` from 0, the last gap of a ring left short, a full ring at alt = 180) no two
    rotations are closer than ~δ: at 15° 4416 rotations (EMAN: 4440, 48 pairs 6.4° apart), covering
    radius 11.7°; at 20° 1908 rotations (EMAN 1926), covering radius 15.4° (pyTME's 15° set c48u83:
    1992 rotations, 16.29°). Measured with 3000 random rotations (tests/test_tempmatch.py).
    """
    d = float(delta_deg)
    if not 0 < d <= 180:
        raise ValueError(f"so3_rings: delta_deg must be in (0, 180], got {delta_deg}")
    n_alt = max(1, int(round(180.0 / d)))
    phis = 360.0 * np.arange(max(1, int(round(360.0 / d)))) / max(1, int(round(360.0 / d)))
    wedge = 360.0 / n_fold
    rows = []
    for k in range(n_alt + 1):
        alt = 180.0 * k / n_alt
        n_az = max(1, int(round(wedge * np.sin(np.radians(alt)) / d)))
        for az in wedge * np.arange(n_az) / n_az:
            rows.extend((az, alt, phi) for phi in phis)
    return np.asarray(rows, np.float64)


def search_orientations(sym: str = "c1", delta_deg: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Orientations for a 3D search at angular step ``delta_deg`` over the asymmetric unit of ``sym``.

    ``c1``/``cN``: :func:`so3_rings` (no redundant rotations; the ``Cn`` unit is ``az < 360/n``,
    since ``R·S_z(360/n)`` only adds ``360/n`` to EMAN's az). Other symmetries: EMAN's ``eman``
    generator with ``phitoo = delta`` and the mirror half (spec §2.3).

    Returns ``(eman_euler (n, 3) degrees az, alt, phi; matrices (n, 3, 3))``.

    ``delta_deg`` is the *spacing* of the grid (nearest neighbours ≈ delta, as pytom-match-pick's
    HEALPix step); the covering radius (largest angle from any rotation to the set) is about
    0.8·delta. pyTME's ``--angular-sampling`` is a covering radius (Karney's sets,
    ``tme/data/metadata.yaml``: 15° → c48u83, 1992 rotations, 16.29°), so pyTME at "15°" is this
    set at about 20° (1908 rotations, 15.4°): same coverage, same size.
    """
    from emflow.geometry import eman_to_matrix, get_symmetry, orientations

    symm = get_symmetry(sym)
    if symm.kind == "c":
        eul = so3_rings(delta_deg, int(symm.order))
    else:
        eul = np.asarray(orientations("eman", sym=sym, delta=delta_deg, phitoo=delta_deg, inc_mirror=True),
                         np.float64).reshape(-1, 3)
    return eul, eman_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2])


def angular_step_deg(diameter_a: float, resolution_a: float) -> float:
    """Angular step (degrees) that moves the edge of a particle of ``diameter_a`` by ``resolution_a``:
    ``degrees(resolution / diameter)`` (Crowther-type criterion).

    Source: pytom-match-pick ``src/pytom_tm/tmjob.py`` L489-493 (commit 27f5d68):
    ``angle_increment = np.rad2deg(max_res / particle_diameter)`` with
    ``max_res = max(2·voxel size, low-pass)``; its ``--particle-diameter`` help (entry_points.py
    L680) calls it the Crowther criterion. pytom uses the value as the spacing of its HEALPix cone
    grid and its in-plane step, which is what EMAN's ``delta``/``phitoo`` are here.
    """
    if not (diameter_a > 0 and resolution_a > 0):
        raise ValueError(f"angular_step_deg: need diameter and resolution > 0, got {diameter_a}, {resolution_a}")
    return float(np.degrees(resolution_a / diameter_a))


def search_step_deg(delta_deg, *, apix: float, template_box: int, lowpass_res_a: float | None = None,
                    particle_diameter_a: float | None = None, mask_radius_px: float | None = None) -> float:
    """The angular step of the search: ``delta_deg`` itself, or for ``"auto"`` the step of
    :func:`angular_step_deg` at resolution ``max(2·apix, lowpass_res_a)`` (as pytom-match-pick) for
    ``particle_diameter_a`` (default: the correlation mask's diameter, ``2·mask_radius_px`` or
    ``template_box − 4`` px, times ``apix``)."""
    if delta_deg != "auto":
        return float(delta_deg)
    if particle_diameter_a is None:
        radius = mask_radius_px if mask_radius_px is not None else template_box / 2 - 2
        particle_diameter_a = 2.0 * radius * apix
    res = max(2.0 * apix, lowpass_res_a or 0.0)
    return angular_step_deg(particle_diameter_a, res)


def tilt_weight(box: int, slice_rotations: np.ndarray, radial: np.ndarray | None = None) -> np.ndarray:
    """Fourier transfer of a tomogram at template box ``box`` from its tilt images.

    Parameters
    ----------
    box : int
        Template box (px); the result is on its rfft grid ``(box, box, box//2+1)``.
    slice_rotations : (ntilt, 3, 3) float64
        Projection transform of each tilt image (``emflow.geometry.tilt_matrix``). The tilt
        image samples the map's 3D FT on the plane with normal ``Rᵀ ẑ`` (CONVENTIONS.md).
    radial : (ntilt, nr) float32, optional
        Weight of each tilt vs. radius in Fourier pixels of ``box`` (CTF × exposure); ones
        when omitted (pure missing wedge).

    Returns
    -------
    (box, box, box//2+1) float32
        ``Σ_t s_t(k) w_t(|k|) / max(1, Σ_t s_t(k))``, with ``s_t`` a triangular slice profile
        of half-width one Fourier pixel: 1 where slices overlap (low frequency inside the
        wedge), 0 in the missing wedge, partial between slices beyond the Crowther limit.
    """
    rots = np.asarray(slice_rotations, np.float64).reshape(-1, 3, 3)
    normals = np.ascontiguousarray(rots[:, 2, :])  # Rᵀ ẑ = third row of R
    nr = int(np.ceil(np.sqrt(3) * box / 2)) + 2
    if radial is None:
        radial = np.ones((len(rots), nr), np.float32)
    radial = np.ascontiguousarray(radial, dtype=np.float32)
    if radial.shape[0] != len(rots) or radial.shape[1] < 2:
        raise ValueError(f"radial must be (ntilt={len(rots)}, nr>=2), got {radial.shape}")
    out = np.empty((box, box, box // 2 + 1), np.float32)
    _tilt_weight_kernel(box, normals, radial, out)
    return out


def prepare_template(template: np.ndarray, apix_template: float, apix_tomo: float,
                     box: int | None = None) -> np.ndarray:
    """Resample a template map to the tomogram's pixel size (and box).

    The map is low-passed at the new Nyquist (Fourier tophat) and resampled with cubic
    splines about the box centre (``n//2`` maps onto ``box//2``), so the scale is exact even
    for non-integer pixel-size ratios.

    Parameters
    ----------
    template : (n, n, n) float32
    apix_template, apix_tomo : float
        Pixel sizes (Å/px).
    box : int, optional
        Output box (even); default the even size nearest ``n·apix_template/apix_tomo``.
    """
    vol = np.asarray(template, np.float32)
    n = vol.shape[0]
    scale = apix_tomo / apix_template  # old px per new px
    if box is None:
        box = max(8, 2 * int(round(n / scale / 2)))
    if scale > 1:
        ft = scipy.fft.rfftn(vol)
        ft *= radial_frequency(vol.shape) <= 0.5 / scale
        vol = scipy.fft.irfftn(ft, s=vol.shape).astype(np.float32)
    c_new, c_old = box // 2, n // 2
    g = (np.arange(box) - c_new) * scale + c_old
    coords = np.meshgrid(g, g, g, indexing="ij")
    out = scipy.ndimage.map_coordinates(vol, coords, order=3, mode="constant", cval=0.0)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- tiling


def tile_layout(n: int, tile: int, margin: int) -> list[tuple[int, int, int]]:
    """Split an axis of length ``n`` into tiles of length ``tile`` overlapping by ``2·margin``.

    Returns ``[(start, own_lo, own_hi), ...]``: the tile covers ``[start, start+tile)`` and
    owns (writes) ``[own_lo, own_hi)``, where its circular correlation is exact (at least
    ``margin`` from the tile's faces) except at the volume's own faces. Owned ranges
    partition ``[0, n)``. A single tile (``start=0``) is used when ``n <= tile``.
    """
    if n <= tile:
        return [(0, 0, n)]
    step = tile - 2 * margin
    if step < 1:
        raise ValueError(f"tile {tile} too small for margin {margin}")
    starts = list(range(0, n - tile, step)) + [n - tile]
    out = []
    for i, s in enumerate(starts):
        lo = 0 if i == 0 else s + margin
        hi = n if i == len(starts) - 1 else starts[i + 1] + margin
        out.append((s, lo, hi))
    return out


def _wrapped_index(box: int, n: int) -> np.ndarray:
    """Positions in an FFT box of length ``n`` of template voxels 0..box-1 (centre box//2 → 0)."""
    return (np.arange(box) - box // 2) % n


# ----------------------------------------------------------------------------- search


@dataclasses.dataclass
class SearchStats:
    """Null-distribution statistics of the per-orientation scores (all voxels × rotations)."""

    n_rotations: int
    n_voxels: int
    mean: float
    std: float


@dataclasses.dataclass
class MatchResult:
    """Output of :func:`match_template`.

    Attributes
    ----------
    scores : (nz, ny, nx) float32
        Best score over orientations (FLCF: a correlation coefficient in [−1, 1]); 0 where
        not searched (outside the mask).
    best_index : (nz, ny, nx) int32
        Index into ``rotations`` of the best orientation (−1 where not searched).
    rotations : (n, 3, 3) float64
        Searched orientations ``R_p`` (particle = template transformed by ``R_p``).
    stats : SearchStats
    """

    scores: np.ndarray
    best_index: np.ndarray
    rotations: np.ndarray
    stats: SearchStats


STREAM_BYTES = 2 << 30
"""Memory of the rotation streams together (about 12 bytes per tile voxel each: the template's FT
buffer and the stream's own best score and index; the correlation exists one cache block at a time):
more threads than fit run as fewer streams with several FFT threads each."""
_ROTATE_LOCK = threading.Lock()
BLOCK_BYTES = 2 << 20
"""Block of the FT (and correlation) kept in cache between consecutive FFT passes (L2-sized)."""

def _reuse_freed_memory() -> None:
    """Let glibc serve large arrays from its heap and keep freed ones for reuse (``mallopt``
    ``M_MMAP_THRESHOLD`` / ``M_TRIM_THRESHOLD`` = 1 GiB; no-op elsewhere). By default arrays above
    32 MB are fresh ``mmap``s: every rotation of a 256² × 128 tile then page-faults its FFT outputs
    (~12 bytes per voxel) back in, measured at about a third of the time per rotation. Memory stays
    bounded by the largest set of live arrays (freed blocks are reused, not accumulated)."""
    global _MALLOPT_DONE
    if _MALLOPT_DONE:
        return
    _MALLOPT_DONE = True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


_MALLOPT_DONE = False


def _wrap_slices(box: int, n: int) -> list[tuple[slice, slice]]:
    """``(destination in an axis of length n, source in the template axis)`` pairs of the wrapped
    placement of :func:`_wrapped_index` (template ``h…box−1`` → ``0…box−h−1``, ``0…h−1`` →
    ``n−h…n−1``, ``h = box//2``); positions ``box−h … n−h−1`` hold zeros."""
    h = box // 2
    return [(slice(0, box - h), slice(h, box)), (slice(n - h, n), slice(0, h))]


def _fft_inplace(a: np.ndarray, axis: int, forward: bool, workers: int) -> None:
    """``a`` ← its (inverse) FFT along ``axis``, in place (scipy.fft writes into ``a`` itself)."""
    r = (scipy.fft.fft if forward else scipy.fft.ifft)(a, axis=axis, workers=workers, overwrite_x=True)
    if r.__array_interface__["data"][0] != a.__array_interface__["data"][0]:
        a[...] = r


class _PrunedTemplateFFT:
    """rfftn of a tile-sized array that is zero except for a (box³) template placed wrapped at the
    origin, and the circular cross-correlation of a tile with it (one stream's buffers).

    The forward transform skips what is zero: rfft along x over the template's ``box²`` rows only,
    fft along y over its ``box`` z-planes only (in place, the other planes of the buffer stay zero),
    then fft along z over everything: for box 32 in a 64 × 128² tile about 0.5 of a full rfftn.
    :meth:`correlate_update` then multiplies by the tile's FT, inverts and updates the best scores
    in cache-sized blocks, in place (scipy.fft with ``workers`` threads).
    """

    def __init__(self, box: int, shape: tuple[int, int, int], workers: int = 1):
        nz, ny, nx = shape
        self.box, self.shape, self.workers = box, tuple(shape), workers
        self.sz, self.sy, self.sx = (_wrap_slices(box, n) for n in shape)
        self.bx = np.zeros((box, box, nx), np.float32)
        self.by = np.zeros((nz, ny, nx // 2 + 1), np.complex64)  # planes off the template stay 0
        row = 8 * nz * (nx // 2 + 1)  # bytes of one y row of the FT
        plane = ny * (8 * (nx // 2 + 1) + 4 * nx)  # one z plane of the FT and of the correlation
        self.y_block = int(max(1, min(ny, BLOCK_BYTES // row)))
        self.z_block = int(max(1, min(nz, BLOCK_BYTES // plane)))

    def __call__(self, tmpl: np.ndarray) -> np.ndarray:
        """``tmpl`` ``(box, box, box)`` float32 → ``(nz, ny, nx//2+1)`` complex64 (a new array)."""
        self._forward_xy(tmpl)
        out = scipy.fft.fft(self.by, axis=0, workers=self.workers)
        self._zero_off_template_planes(0, self.shape[0])
        return out

    def _forward_xy(self, tmpl: np.ndarray) -> None:
        """Place ``tmpl`` in ``by`` (all other planes must be zero) transformed along x and y."""
        b, h, w = self.box, self.box // 2, self.workers
        ny = self.shape[1]
        for d, s in self.sx:
            self.bx[:, :, d] = tmpl[:, :, s]
        xf = scipy.fft.rfft(self.bx, axis=2, workers=w)
        for dz, sz in self.sz:
            blk = self.by[dz]
            for dy, sy in self.sy:
                blk[:, dy] = xf[sz, sy]
            blk[:, b - h:ny - h] = 0
            _fft_inplace(blk, 1, True, w)

    def _zero_off_template_planes(self, z_lo: int, z_hi: int) -> None:
        b, h, nz = self.box, self.box // 2, self.shape[0]
        lo, hi = max(z_lo, b - h), min(z_hi, nz - h)
        if hi > lo:
            self.by[lo:hi] = 0

    def correlate_update(self, tmpl: np.ndarray, tile_ft: np.ndarray, inv_denom: np.ndarray,
                         own0: tuple[int, int, int], best: np.ndarray, best_idx: np.ndarray, rot_index: int,
                         acc: np.ndarray) -> None:
        """Correlate the tile with ``tmpl`` and :func:`_update_best` the owned region (at ``own0``).

        Cache-blocked: after the x and y passes of the forward transform, blocks of y rows go
        through the forward z FFT, the product with ``conj`` and the inverse z FFT while in cache;
        then blocks of z planes go through the inverse y and x FFTs and the max-update.
        """
        nz, ny, nx = self.shape
        w = self.workers
        self._forward_xy(tmpl)
        for ys in range(0, ny, self.y_block):
            v = self.by[:, ys:ys + self.y_block]
            _fft_inplace(v, 0, True, w)
            _conj_multiply(tile_ft, self.by, ys, min(ny, ys + self.y_block))
            _fft_inplace(v, 0, False, w)
        z0, y0, x0 = own0
        z1 = z0 + best.shape[0]
        for zs in range(0, nz, self.z_block):
            ze = min(nz, zs + self.z_block)
            v = self.by[zs:ze]
            _fft_inplace(v, 1, False, w)
            cc = scipy.fft.irfft(v, n=nx, axis=2, workers=w)
            lo, hi = max(zs, z0), min(ze, z1)
            if hi > lo:
                _update_best(cc, inv_denom[lo - z0:hi - z0], lo - zs, y0, x0, best[lo - z0:hi - z0],
                             best_idx[lo - z0:hi - z0], rot_index, acc)
            self._zero_off_template_planes(zs, ze)


def _tile_local_stats(tile: np.ndarray, mask: np.ndarray, workers: int) -> np.ndarray:
    """Masked local variance times ΣM of ``tile`` (float64) for every template position."""
    shape = tile.shape
    placer = np.zeros(shape, np.float64)
    idx = np.ix_(*(_wrapped_index(mask.shape[0], n) for n in shape))
    placer[idx] = mask
    m_ft = np.conj(scipy.fft.rfftn(placer, workers=workers))
    t64 = tile.astype(np.float64)
    msum = float(mask.sum())
    mean = scipy.fft.irfftn(scipy.fft.rfftn(t64, workers=workers) * m_ft, s=shape, workers=workers) / msum
    mean2 = scipy.fft.irfftn(scipy.fft.rfftn(t64 * t64, workers=workers) * m_ft, s=shape, workers=workers) / msum
    return np.maximum(mean2 - mean * mean, 0.0) * msum


def _normalise_under_mask(t: np.ndarray, mask: np.ndarray, msum: float) -> np.ndarray:
    """``M·(t − μ_M)/sqrt(Σ M (t − μ_M)²)`` (float32); zero template gives zeros."""
    mu = float((t * mask).sum()) / msum
    d = (t - mu) * mask
    norm = float(np.sqrt((d * (t - mu)).sum()))
    return (d / norm).astype(np.float32) if norm > 0 else np.zeros_like(d)


def match_template(
    tomogram: np.ndarray,
    template: np.ndarray,
    rotations: np.ndarray,
    *,
    weight: np.ndarray | None = None,
    mask_radius_px: float | None = None,
    tomogram_mask: np.ndarray | None = None,
    filter_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    local_normalisation: bool = True,
    clamp_sigma: float | None = 3.0,
    tile_size: int = 256,
    workers: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> MatchResult:
    """Search ``tomogram`` for copies of ``template`` in all ``rotations``.

    Parameters
    ----------
    tomogram : (nz, ny, nx) float32
        Binned tomogram, same pixel size as the template; contrast must match the template
        (negate a positive-density template for a raw, dark-protein tomogram).
    template : (b, b, b) float32
        Reference, centred on voxel ``b//2`` (even ``b``).
    rotations : (n, 3, 3) float64
        Orientations to test; the template is transformed by each (``rotate_volume``).
    weight : (b, b, b//2+1) float32, optional
        Fourier weight of the rotated template (rfft layout): missing wedge × CTF × exposure
        × band-pass × whitening (:func:`tilt_weight`, :func:`bandpass`). None = no filter.
    mask_radius_px : float, optional
        Radius of the spherical correlation mask (default ``b/2 − 2``; raised-cosine edge of 2 px).
    tomogram_mask : (nz, ny, nx) array, optional
        Voxels with value ≤ 0.5 are not searched (score 0, index −1).
    filter_fn : callable, optional
        ``filter_fn(freq_cycles_per_px) -> weight`` applied to every tile's FT before matching
        (band-pass / whitening of the tomogram; the same filter should be in ``weight``).
    clamp_sigma : float, optional
        Clip the tomogram to median ± ``clamp_sigma``·σ (σ = 1.4826·MAD) first, as EMAN
        does: gold beads and carbon edges then no longer dominate correlation and local σ.
    local_normalisation : bool
        True: FLCF (local mean/σ under the mask). False: the tomogram's global σ instead (a
        plain masked CC, what EMAN does), for comparison.
    tile_size : int
        Largest tile edge (px); tiles overlap by one template box.
    workers : int, optional
        Threads (default: numba's thread count). Rotations are spread over up to ``workers``
        streams, each with its own buffers (about 12 bytes per tile voxel; at most
        ``STREAM_BYTES`` together, the remaining threads then go to each stream's FFTs). Scores
        and indices do not depend on ``workers``.
    progress : callable, optional
        Called with the fraction done.
    """
    from emflow.rotate import rotate_volume

    _reuse_freed_memory()
    vol = np.asarray(tomogram, np.float32)
    tmpl = np.asarray(template, np.float32)
    b = tmpl.shape[0]
    if tmpl.ndim != 3 or tmpl.shape != (b, b, b) or b % 2:
        raise ValueError(f"template must be a cubic even box, got {tmpl.shape}")
    if vol.ndim != 3 or min(vol.shape) < b:
        raise ValueError(f"tomogram {vol.shape} must be 3D and at least the template box {b} on every axis")
    rots = np.asarray(rotations, np.float64).reshape(-1, 3, 3)
    if weight is not None and weight.shape != (b, b, b // 2 + 1):
        raise ValueError(f"weight must be {(b, b, b // 2 + 1)}, got {weight.shape}")
    if tomogram_mask is not None and tomogram_mask.shape != vol.shape:
        raise ValueError("tomogram_mask must have the tomogram's shape")
    workers = workers or numba.get_num_threads()
    radius = mask_radius_px if mask_radius_px is not None else b / 2 - 2
    mask = soft_sphere(b, radius, 2.0, kind="cosine")
    msum = float(mask.sum())
    if clamp_sigma:
        med = float(np.median(vol))
        sig = 1.4826 * float(np.median(np.abs(vol - med)))
        vol = np.clip(vol, med - clamp_sigma * sig, med + clamp_sigma * sig)
    vol = vol - np.float32(vol.mean())
    global_var = float(vol.var()) * msum

    scores = np.zeros(vol.shape, np.float32)
    best_index = np.full(vol.shape, -1, np.int32)
    sums = np.zeros(3)
    layouts = [tile_layout(n, tile_size, b // 2) for n in vol.shape]
    tiles = [(z, y, x) for z in layouts[0] for y in layouts[1] for x in layouts[2]]
    tshape = tuple(min(tile_size, n) for n in vol.shape)
    fshape = tuple(scipy.fft.next_fast_len(n, real=True) for n in tshape)
    nvox = int(np.prod(fshape))
    # Rotated + weighted + normalised templates do not depend on the tile. With one tile each is
    # used once: no cache. With several, keep those of the first rotations within a budget of one
    # tile's FT, so memory stays bounded by the tile whatever the number of rotations (preparing a
    # template costs a few % of the tile's FFT pair at box 32 / tile 128, so recomputing is cheap).
    n_cache = 0
    if len(tiles) > 1:
        n_cache = min(len(rots), (8 * fshape[0] * fshape[1] * (fshape[2] // 2 + 1)) // (4 * b**3))
    cache = np.empty((n_cache, b, b, b), np.float32)
    cached = np.zeros(n_cache, bool)
    # Threads go to rotations: each stream takes the next rotation, correlates it with one-thread
    # FFTs and keeps its own best score and index; the streams merge at the end of the tile. One
    # tile's FFT pair scales poorly over threads (and a numba kernel between FFTs makes OpenMP
    # threads spin against pocketfft's); independent rotations scale with the cores.
    n_streams = int(max(1, min(workers, len(rots), STREAM_BYTES // (12 * nvox))))
    per_stream = max(1, workers // n_streams)
    ffts = [_PrunedTemplateFFT(b, fshape, per_stream) for _ in range(n_streams)]
    total = len(tiles) * len(rots)
    lock = threading.Lock()
    done = [0]

    def template(i: int, buf: np.ndarray) -> np.ndarray:
        if i < n_cache and cached[i]:
            return cache[i]
        with _ROTATE_LOCK:  # one numba-parallel launch at a time (any threading layer)
            rotate_volume(tmpl, rots[i], out=buf)
        t = buf
        if weight is not None:
            t = scipy.fft.irfftn(scipy.fft.rfftn(t, workers=per_stream) * weight, s=t.shape, workers=per_stream)
        t = _normalise_under_mask(t, mask, msum)
        if i < n_cache:
            cache[i] = t
            cached[i] = True
        return t

    def stream(k: int, todo, tile_ft, inv_denom, own0, best, best_idx, acc) -> None:
        # numba's thread count is per thread: a stream's numba kernels use its share only (more
        # would leave OpenMP threads spinning against the FFTs).
        numba.set_num_threads(min(per_stream, numba.config.NUMBA_NUM_THREADS))
        buf = np.empty((b, b, b), np.float32)
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            ffts[k].correlate_update(template(i, buf), tile_ft, inv_denom, own0, best, best_idx, i, acc)
            if progress is not None:
                with lock:
                    done[0] += 1
                    progress(done[0] / total)

    pool = None
    numba_threads = numba.get_num_threads()
    if n_streams > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(n_streams, thread_name_prefix="tempmatch")
    try:
        for tz, ty, tx in tiles:
            starts = (tz[0], ty[0], tx[0])
            tile = np.zeros(fshape, np.float32)
            sl = tuple(slice(s, s + n) for s, n in zip(starts, tshape))
            tile[tuple(slice(0, n) for n in tshape)] = vol[sl]
            tile_ft = scipy.fft.rfftn(tile, workers=workers)
            if filter_fn is not None:
                tile_ft *= filter_fn(radial_frequency(fshape)).astype(np.float32)
                tile = scipy.fft.irfftn(tile_ft, s=fshape, workers=workers).astype(np.float32)
            own = tuple(slice(lo - s, hi - s) for (s, lo, hi) in (tz, ty, tx))
            dest = tuple(slice(lo, hi) for (_, lo, hi) in (tz, ty, tx))
            # FLCF denominators: the mask is a sphere, so the tomogram's local σ under it is the
            # same for every rotation: once per tile (as pytom-match-pick and pyTME do for a
            # spherical mask).
            var = _tile_local_stats(tile, mask, workers)[own] if local_normalisation else None
            searched = np.ones(scores[dest].shape, bool)
            if tomogram_mask is not None:
                searched &= np.asarray(tomogram_mask[dest]) > 0.5
            if local_normalisation:
                # Flat regions (padding, masked-out) carry no information: do not search them.
                floor = 1e-6 * float(np.median(var[searched])) if searched.any() else 0.0
                searched &= var > floor
                inv_denom = np.where(searched, 1.0 / np.sqrt(np.maximum(var, 1e-30)), 0.0).astype(np.float32)
            else:
                inv_denom = np.where(searched, 1.0 / np.sqrt(global_var), 0.0).astype(np.float32)
            del var
            own0 = tuple(o.start for o in own)
            outs = [(np.full(inv_denom.shape, -np.inf, np.float32), np.full(inv_denom.shape, -1, np.int32),
                     np.zeros((2, inv_denom.shape[2]))) for _ in range(n_streams)]
            todo = iter(range(len(rots)))
            if pool is None:
                stream(0, todo, tile_ft, inv_denom, own0, *outs[0])
            else:
                futures = [pool.submit(stream, k, todo, tile_ft, inv_denom, own0, *outs[k])
                           for k in range(n_streams)]
                for f in futures:
                    f.result()
            best, best_idx, _ = outs[0]
            for other, other_idx, _ in outs[1:]:
                _merge_best(best, best_idx, other, other_idx)
            best[~searched] = 0.0
            best_idx[~searched] = -1
            scores[dest] = best
            best_index[dest] = best_idx
            sums += [searched.sum() * len(rots), *np.sum([acc.sum(axis=1) for _, _, acc in outs], axis=0)]
            del outs, best, best_idx, tile_ft, tile, inv_denom
    finally:
        numba.set_num_threads(numba_threads)
        if pool is not None:
            pool.shutdown()
    n = max(sums[0], 1.0)
    mean = sums[1] / n
    std = float(np.sqrt(max(sums[2] / n - mean * mean, 0.0)))
    stats = SearchStats(n_rotations=len(rots), n_voxels=int(sums[0] // max(len(rots), 1)), mean=float(mean), std=std)
    return MatchResult(scores=scores, best_index=best_index, rotations=rots, stats=stats)


def dose_symmetric_exposure(tilts_deg: np.ndarray, dose_per_tilt_e_a2: float) -> np.ndarray:
    """Accumulated exposure (e/Å²) at the middle of each tilt for a dose-symmetric scheme.

    Tilts are taken in order of increasing |tilt| (positive first on ties), each adding
    ``dose_per_tilt_e_a2``; a tilt's exposure is everything before it plus half its own.
    """
    t = np.asarray(tilts_deg, np.float64)
    order = np.lexsort((-t, np.abs(t)))
    rank = np.empty(len(t))
    rank[order] = np.arange(len(t))
    return (rank + 0.5) * float(dose_per_tilt_e_a2)
