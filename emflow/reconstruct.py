"""Direct Fourier inversion: insert 2D slices into a padded 3D Fourier volume (spec §5.6).

The accumulators are a complex half-volume ``F`` and a real weight volume ``W`` on the padded
grid ``N = pad·b`` (shape ``(N, N, N//2+1)``, z and y fftshifted so that zero frequency sits
at index ``N//2``; x is the rfft half axis). Each image is zero-padded to ``N×N``, Fourier
transformed with a centred phase origin and every pixel ``k = (kx, ky)`` with ``|k| <= N/2 - 1``
(the x >= 0 half plane) is deposited at ``(R·S)ᵀ (kx, ky, 0)`` for every symmetry operator ``S``.

Why ``R·S``: an image is the projection of ``V`` with transform ``R``; for a map invariant under
``S`` (``V(S r) = V(r)``) it is also the projection with ``R·S``, whose slice samples the FT at
``(R S)ᵀ k = Sᵀ Rᵀ k``. With ``S = I`` this is the plain Fourier-slice position.

Weights: ``F += w·c·K·S(k)`` and ``W += w·c²·K`` where ``w`` is the per-image weight, ``c`` the
optional per-pixel Fourier weight (``ctf``, e.g. the CTF for CTF-weighted insertion or ``|CTF|``
for phase-flipped data) and ``K`` the interpolation kernel weight. ``finish`` returns ``IFT(F/W)``
(or ``F/(W+1)`` for the Wiener form, where inserted data were pre-weighted by the SNR).
Because ``F`` and ``W`` are plain sums, partial reconstructions merge by adding them, which is
spec §7.24's ``F_total = Σ_j F_j W_j / Σ_j W_j`` for normalised ``F_j``.

Parallelism: ``strategy="slab"`` gives each thread the z-planes ``z ≡ t (mod T)`` of the shared
volume (no write races, no extra memory; every thread computes every slice coordinate);
``strategy="private"`` gives each thread its own accumulator pair and sums them afterwards
(T× memory). See ``benchmarks/bench_fourier.py`` for the measured trade-off. The trilinear slab
kernel (:func:`_insert_tri_blocked`) works in blocks of 16 z planes, thread ``t`` taking blocks
``t, t+T, …``, on one interleaved ``[Re F, Im F, W]`` accumulator, slices ordered by orientation.

:meth:`Reconstructor.insert` Fourier transforms each image in the corner of the ``N×N`` box (no padded
copy, no roll) and hands the centring and shift phase ramps to that kernel, which applies them per
sample (``benchmarks/bench_reconstruct.py`` prints voxel updates per CPU-second and the subtilt
reconstruction time against its 2D-FFT bound).
"""

from __future__ import annotations

import os

import numba
import numpy as np
import scipy.fft

from emflow import fourier
from emflow._numba import jit, pjit
from emflow.projection import _as_rotations, _as_shifts, gridding_apodization

__all__ = ["Reconstructor", "reconstruct", "KERNELS"]

KERNELS = {"nearest": 0, "trilinear": 1, "gauss_2": 2}
_GAUSS2 = np.pi**2 / 4.0  # exp(-d² / (4/π²)) of EMAN's gauss_2 (I2G = 4/π²)


@jit
def _deposit(F, W, px, py, pz, vr, vi, wt, kernel, c, zmod, zrem):
    """Add one sample (px >= 0 after Friedel folding; py, pz relative to the centre) to F, W.

    Only planes with ``z % zmod == zrem`` are written (the calling thread's planes).
    """
    N = F.shape[0]
    nxh = F.shape[2]
    if kernel == 0:
        xx = int(np.floor(px + 0.5))
        yy = int(np.floor(py + 0.5)) + c
        zz = int(np.floor(pz + 0.5)) + c
        if zz % zmod != zrem or xx >= nxh or yy < 0 or yy >= N or zz < 0 or zz >= N:
            return
        F[zz, yy, xx] += complex(wt * vr, wt * vi)
        W[zz, yy, xx] += wt
        return
    x0 = int(np.floor(px))
    y0 = int(np.floor(py))
    z0 = int(np.floor(pz))
    fx = px - x0
    fy = py - y0
    fz = pz - z0
    if kernel == 1:
        for dz in range(2):
            zz = z0 + dz + c
            if zz % zmod != zrem or zz < 0 or zz >= N:
                continue
            wz = 1.0 - abs(fz - dz)
            for dy in range(2):
                yy = y0 + dy + c
                if yy < 0 or yy >= N:
                    continue
                wzy = wz * (1.0 - abs(fy - dy))
                for dx in range(2):
                    xx = x0 + dx
                    if xx >= nxh:
                        continue
                    w = wt * wzy * (1.0 - abs(fx - dx))
                    F[zz, yy, xx] += complex(w * vr, w * vi)
                    W[zz, yy, xx] += w
        return
    # gauss_2: every voxel within 1 voxel per axis; a voxel at exactly distance 1 (sample on a
    # grid plane) gets half weight on both sides, which keeps the kernel Friedel-symmetric.
    # exp(-c(ex²+ey²+ez²)) is separable: three 1D weights per axis (offsets -1, 0, +1).
    gx0, gx1, gx2 = _gauss_axis(fx)
    gy0, gy1, gy2 = _gauss_axis(fy)
    gz0, gz1, gz2 = _gauss_axis(fz)
    for dz in range(-1, 2):
        wz = gz0 if dz == -1 else (gz1 if dz == 0 else gz2)
        if wz == 0.0:
            continue
        for dy in range(-1, 2):
            wzy = wz * (gy0 if dy == -1 else (gy1 if dy == 0 else gy2))
            if wzy == 0.0:
                continue
            for dx in range(-1, 2):
                w = wt * wzy * (gx0 if dx == -1 else (gx1 if dx == 0 else gx2))
                if w == 0.0:
                    continue
                xx = x0 + dx
                yy = y0 + dy + c
                zz = z0 + dz + c
                im = vi
                if xx < 0:  # only for px == 0: store on the Friedel partner voxel
                    xx = -xx
                    yy = 2 * c - yy
                    zz = 2 * c - zz
                    im = -vi
                yy %= N  # periodic: the -N/2 plane is also +N/2
                zz %= N
                if zz % zmod != zrem or xx >= nxh:
                    continue
                F[zz, yy, xx] += complex(w * vr, w * im)
                W[zz, yy, xx] += w


@jit
def _gauss_axis(f):
    """1D gauss_2 weights of offsets -1, 0, +1 for a fractional position f in [0, 1)."""
    if f == 0.0:  # on the grid: both neighbours at distance 1 share the weight
        h = 0.5 * np.exp(-_GAUSS2)
        return h, 1.0, h
    return 0.0, np.exp(-f * f * _GAUSS2), np.exp(-(1.0 - f) * (1.0 - f) * _GAUSS2)


@jit
def _insert_one(F, W, S, wsl, has_wsl, wimg, R, kernel, rmax2, zmod, zrem):
    """Deposit one slice S (N, N//2+1; plain rfft2 layout) under rotation R."""
    N = S.shape[0]
    c = F.shape[0] // 2
    for j in range(N):
        fy = j if j < N // 2 else j - N
        for kx in range(S.shape[1]):
            if kx == 0 and fy < 0:  # (0, -ky) is the Friedel mate of (0, ky): insert once
                continue
            if kx * kx + fy * fy > rmax2:
                continue
            pz = R[0, 2] * kx + R[1, 2] * fy
            px = R[0, 0] * kx + R[1, 0] * fy
            if px < 0.0:
                pz = -pz
            # cheap reject of samples whose z-neighbours are not this thread's planes
            if zmod > 1 and (kernel != 2 or abs(px) >= 1.0):
                zf = int(np.floor(pz + 0.5 if kernel == 0 else pz)) + c
                if zf % zmod != zrem and (kernel == 0 or (zf + 1) % zmod != zrem) and \
                        (kernel != 2 or (zf - 1) % zmod != zrem):
                    continue
            py = R[0, 1] * kx + R[1, 1] * fy
            v = S[j, kx]
            vr = v.real
            vi = v.imag
            if px < 0.0:  # Friedel: store the mate -p with the conjugate value
                px = -px
                py = -py
                vi = -vi
            wt = wsl[j, kx] if has_wsl else wimg
            if kx == 0 and fy == 0:
                wt *= 0.5  # the origin is its own Friedel mate (hermitian_sums adds it again)
            _deposit(F, W, px, py, pz, vr, vi, wt, kernel, c, zmod, zrem)


_ZBLOCK = 16  # z planes per cache block of the trilinear insertion (16: 5-10 % faster than 8 or 32 at N = 128, 256; measured)


@jit
def _kx_range(a, b, lo, hi, kmin, kmax):
    """Integers ``kx`` in [kmin, kmax] with ``lo <= a·kx + b < hi`` (widened by one each side;
    callers check exactly). Returns (first, last); empty when first > last."""
    k0, k1 = float(kmin), float(kmax)
    if a > 1e-12:
        k0 = max(k0, (lo - b) / a - 1.0)
        k1 = min(k1, (hi - b) / a + 1.0)
    elif a < -1e-12:
        k0 = max(k0, (hi - b) / a - 1.0)
        k1 = min(k1, (lo - b) / a + 1.0)
    elif not (lo - 1.0 <= b < hi + 1.0):
        return 1, 0
    return int(np.ceil(k0)), int(np.floor(k1))


@jit(fastmath={"contract", "nsz", "arcp"})
def _insert_tri_block(A, S, wsl, has_wsl, wimg, r00, r01, r02, r10, r11, r12, rmax2, zb, ex, ey, has_ramp):
    """The samples of one slice that deposit into z planes ``[zb·B, (zb+1)·B)`` (B = _ZBLOCK) only:
    for each row the kx where the (Friedel-folded) sample's planes ``floor(pz) + c`` and ``+1`` can
    reach the block are an interval, found from the linear ``pz(kx)``. Same samples, weights and
    folding as :func:`_insert_one` + :func:`_deposit` (kernel 1). The accumulator ``A``
    (N, N, N//2+1, 3) interleaves ``[Re F, Im F, W]``: F and W of a voxel share a cache line and the
    two x-neighbours are adjacent (4 lines per sample instead of 16); processing all slices block by
    block keeps the block's accumulator planes in cache; no per-voxel kernel dispatch.

    ``has_ramp``: sample ``(j, kx)`` is ``S[j, kx]·ey[j]·ex[kx]`` (the centring/shift phase ramps of
    :meth:`Reconstructor.insert`, applied here instead of in two passes over the slices).

    Speed (issue 13): the six floats of the two x-neighbours are updated by direct indexing of one
    accumulator row (no per-voxel array views), with fused multiply-adds allowed (``contract``);
    ``x0 + 1 < N//2 + 1`` always holds inside the insertion radius (``|p| <= N/2 - 1``)."""
    n = S.shape[0]
    N = A.shape[0]
    nxh = A.shape[2]
    c = N // 2
    zlo = zb * _ZBLOCK
    zhi = min(zlo + _ZBLOCK, N)
    plo = zlo - 1 - c  # floor(pz) + c in [zlo - 1, zhi - 1]
    phi = zhi - c
    for j in range(n):
        fy = j if j < n // 2 else j - n
        ry2 = rmax2 - fy * fy
        if ry2 < 0:
            continue
        kx0 = 1 if fy < 0 else 0
        kmax = min(int(np.floor(np.sqrt(ry2))), S.shape[1] - 1)
        Sj = S[j]
        eyj = ey[j] if has_ramp else np.complex64(1.0)
        bx = r10 * fy
        by = r11 * fy
        bz = r12 * fy
        for case in range(2):  # 0: stored at p (px >= 0); 1: stored at -p (px < 0)
            sg = 1.0 if case == 0 else -1.0
            a0, a1 = _kx_range(sg * r02, sg * bz, plo, phi, kx0, kmax)
            for kx in range(a0, a1 + 1):
                if kx * kx > ry2:
                    continue
                px = r00 * kx + bx
                if (px < 0.0) != (case == 1):
                    continue
                py = r01 * kx + by
                pz = r02 * kx + bz
                v = Sj[kx]
                if has_ramp:
                    v = v * eyj * ex[kx]
                vr = np.float32(v.real)
                vi = np.float32(v.imag)
                if case == 1:
                    px = -px
                    py = -py
                    pz = -pz
                    vi = -vi
                zf = np.floor(pz)
                z0 = int(zf) + c
                own0 = z0 >= zlo and z0 < zhi
                own1 = z0 + 1 >= zlo and z0 + 1 < zhi
                if not (own0 or own1):
                    continue
                wt = wsl[j, kx] if has_wsl else wimg
                if kx == 0 and fy == 0:
                    wt *= 0.5
                xf = np.floor(px)
                yf = np.floor(py)
                x0 = int(xf)
                y0 = int(yf) + c
                fx = px - xf
                fy_ = py - yf
                fz = pz - zf
                if x0 + 1 >= nxh:  # not reached inside the insertion radius
                    continue
                for dz in range(2):
                    if (own0 if dz == 0 else own1):
                        wz = wt * (fz if dz else 1.0 - fz)
                        zz = z0 + dz
                        for dy in range(2):
                            yy = y0 + dy
                            if yy < 0 or yy >= N:
                                continue
                            wzy = wz * (fy_ if dy else 1.0 - fy_)
                            w0 = np.float32(wzy * (1.0 - fx))  # float32 products: no f64 round trips
                            w1 = np.float32(wzy * fx)
                            row = A[zz, yy]
                            row[x0, 0] += w0 * vr
                            row[x0, 1] += w0 * vi
                            row[x0, 2] += w0
                            row[x0 + 1, 0] += w1 * vr
                            row[x0 + 1, 1] += w1 * vi
                            row[x0 + 1, 2] += w1


@pjit
def _insert_tri_blocked(A, slices, wslices, has_wsl, wimg, rots, img_of, rmax2, nthreads, exs, eys, has_ramp):
    """Cache-blocked trilinear insertion: thread ``t`` takes z blocks ``t, t+T, …`` and inserts every
    slice's share of one block before moving to the next (:func:`_insert_tri_block`)."""
    nblk = (A.shape[0] + _ZBLOCK - 1) // _ZBLOCK
    for t in numba.prange(nthreads):
        for zb in range(t, nblk, nthreads):
            for m in range(rots.shape[0]):
                i = img_of[m]
                R = rots[m]
                r = i if has_ramp else 0
                _insert_tri_block(A, slices[i], wslices[i if has_wsl else 0], has_wsl, wimg[i],
                                  R[0, 0], R[0, 1], R[0, 2], R[1, 0], R[1, 1], R[1, 2], rmax2, zb,
                                  exs[r], eys[r], has_ramp)


@pjit
def _insert_slab(F, W, slices, wslices, has_wsl, wimg, rots, img_of, kernel, rmax2, nthreads):
    for t in numba.prange(nthreads):
        for m in range(rots.shape[0]):
            i = img_of[m]
            _insert_one(F, W, slices[i], wslices[i if has_wsl else 0], has_wsl, wimg[i], rots[m],
                        kernel, rmax2, nthreads, t)


@pjit
def _insert_private(Fp, Wp, slices, wslices, has_wsl, wimg, rots, img_of, kernel, rmax2):
    T = Fp.shape[0]
    M = rots.shape[0]
    for t in numba.prange(T):
        for m in range(t * M // T, (t + 1) * M // T):
            i = img_of[m]
            _insert_one(Fp[t], Wp[t], slices[i], wslices[i if has_wsl else 0], has_wsl, wimg[i],
                        rots[m], kernel, rmax2, 1, 0)


@pjit
def _reduce_private(F, W, Fp, Wp):
    for z in numba.prange(F.shape[0]):
        for t in range(Fp.shape[0]):
            F[z] += Fp[t, z]
            W[z] += Wp[t, z]


def _ift_centre_crop(F: np.ndarray, N: int, b: int, workers: int) -> np.ndarray:
    """``fourier.crop(fourier.ift(F, (N, N, N)), b)`` without computing the voxels the crop drops.

    ``F`` (N, N, N//2+1) in :func:`fourier.ft` layout (unshifted). One axis at a time, each
    inverse transform is followed by the crop along that axis (real-space index ``j`` of the
    centred box is ``j − b/2 mod N``), so the y and x passes run on 1/2 and 1/4 of the data:
    ~0.55 of the full inverse FFT for ``N = 2b``. Float32 output, same values to rounding.
    """
    if b == N:
        return fourier.ift(F, (N, N, N), workers=workers).astype(np.float32, copy=False)
    keep = (np.arange(b) - b // 2) % N
    a = scipy.fft.ifft(F, axis=0, workers=workers)[keep]
    a = scipy.fft.ifft(a, axis=1, workers=workers, overwrite_x=True)[:, keep]
    a = scipy.fft.irfft(a, n=N, axis=2, workers=workers, overwrite_x=True)[:, :, keep]
    return np.ascontiguousarray(a, dtype=np.float32)


def _undo_shift_ramps(t: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable phase ramps ``(ex (n, N//2+1), ey (n, N))`` complex64 that move the content of an ``N×N``
    slice (layout of :func:`emflow.fourier.ft`) by ``−t`` (``t`` ``(n, 2)`` px, ``(tx, ty)``):
    ``S·ey[:, :, None]·ex[:, None, :]``."""
    kx = np.arange(N // 2 + 1) / N
    ky = scipy.fft.fftfreq(N)
    ex = np.exp(2j * np.pi * kx[None, :] * t[:, 0, None]).astype(np.complex64)
    ey = np.exp(2j * np.pi * ky[None, :] * t[:, 1, None]).astype(np.complex64)
    return ex, ey


def _orientation_order(rots: np.ndarray, bin_deg: float = 10.0) -> np.ndarray:
    """Insertion order grouping slices of similar orientation (orientation blocking): slices whose
    planes are close touch the same accumulator lines one after another, which keeps them in cache.
    Sorted by the plane normal ``R[2]`` (sign-folded: a plane and its Friedel mate are the same
    plane) in ``bin_deg`` bins of polar and azimuthal angle, then by in-plane angle."""
    n = rots[:, 2, :] * np.where(rots[:, 2, 2:3] < 0, -1.0, 1.0)
    pol = np.degrees(np.arccos(np.clip(n[:, 2], -1.0, 1.0))) // bin_deg
    az = np.degrees(np.arctan2(n[:, 1], n[:, 0])) // bin_deg
    inplane = np.arctan2(rots[:, 0, 1], rots[:, 0, 0])
    return np.lexsort((inplane, az, pol))


def _resolve_sym(sym) -> np.ndarray:
    if isinstance(sym, str):
        if sym.lower() == "c1":
            return np.eye(3)[None]
        try:
            from emflow.geometry import get_symmetry
        except ImportError as exc:  # pragma: no cover - geometry is written in parallel
            raise ValueError(f"symmetry {sym!r} needs emflow.geometry; pass (nsym,3,3) matrices") from exc
        return np.asarray(get_symmetry(sym).reconstruction_matrices, dtype=np.float64)
    m = np.asarray(sym, dtype=np.float64)
    if m.ndim != 3 or m.shape[1:] != (3, 3):
        raise ValueError(f"sym must be a symmetry name or (nsym, 3, 3) matrices, got shape {m.shape}")
    return m


class Reconstructor:
    """Fourier-insertion reconstructor with mergeable accumulators (spec §5.6, §7.23–24).

    Parameters
    ----------
    box : int
        Real-space box ``b`` of the images and of the result (even).
    pad : int or float
        Fourier padding factor; the accumulator grid is ``N = pad·b`` (rounded up to even).
    kernel : {"trilinear", "gauss_2", "nearest"}
        Insertion kernel: trilinear (EMAN SPT default), EMAN's ``gauss_2`` (``exp(-d²π²/4)``
        on the voxels within 1 voxel per axis, i.e. the 8 neighbours; a sample lying exactly
        on a grid plane gives half weight to both neighbouring planes, which keeps the kernel
        Friedel-symmetric) or nearest neighbour.
    sym : str or ndarray (nsym, 3, 3)
        Point-group symmetry; every slice is inserted under ``R·S`` for each operator ``S``.
        Names other than ``"c1"`` are resolved by :func:`emflow.geometry.get_symmetry`.
    strategy : {"auto", "slab", "private"}
        Parallel insertion scheme (module docstring). ``auto`` = ``slab`` (same speed as
        ``private`` on the benchmark machine, no extra memory).
    workers : int
        ``scipy.fft`` worker threads.

    Attributes
    ----------
    F : ndarray, complex64, (N, N, N//2+1)
        Σ w·c·K·S (z, y fftshifted).
    W : ndarray, float32, (N, N, N//2+1)
        Σ w·c²·K.
    n_inserted : int
        Number of images inserted (symmetry copies not counted).
    """

    def __init__(self, box: int, pad: float = 2, kernel: str = "trilinear", sym="c1",
                 strategy: str = "auto", workers: int = -1):
        box = int(box)
        if box < 2 or box % 2:
            raise ValueError(f"Reconstructor: box must be even and >= 2, got {box}")
        if kernel not in KERNELS:
            raise ValueError(f"Reconstructor: unknown kernel {kernel!r}; use one of {sorted(KERNELS)}")
        if strategy not in ("auto", "slab", "private"):
            raise ValueError(f"Reconstructor: strategy must be auto, slab or private, got {strategy!r}")
        if pad < 1:
            raise ValueError(f"Reconstructor: pad must be >= 1, got {pad}")
        N = int(np.ceil(box * pad))
        N += N % 2
        self.box, self.pad, self.n_pad, self.kernel = box, float(pad), N, kernel
        self.sym = _resolve_sym(sym)
        self.strategy, self.workers = strategy, workers
        # interleaved accumulator [Re F, Im F, W] per voxel; F and W are views of it
        self._acc = np.zeros((N, N, N // 2 + 1, 3), dtype=np.float32)
        self.F = self._acc[..., :2].view(np.complex64)[..., 0]
        self.W = self._acc[..., 2]
        self.n_inserted = 0

    # ------------------------------------------------------------------ insertion
    def _strategy(self) -> str:
        if self.strategy != "auto":
            return self.strategy
        # measured (benchmarks/bench_fourier.py, 2 threads): slab 175/38 slices/s vs private
        # 172/42 at box 64/128; slab needs no extra memory, so it is the default
        return "slab"

    def slices_from_images(self, images, shifts=None) -> np.ndarray:
        """Pad images to ``N×N`` (zero), FFT with a centred origin, undo ``shifts`` (phase ramp).

        Returns
        -------
        ndarray, complex64, (n, N, N//2+1)
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        b = self.box
        if images.shape[1:] != (b, b):
            raise ValueError(f"insert: images must have shape (n, {b}, {b}), got {images.shape}")
        S, ex, ey = self._corner_ft(images, shifts)
        S *= ey[:, :, None]
        S *= ex[:, None, :]
        return S

    def _corner_ft(self, images, shifts):
        """``(S, ex, ey)`` with ``S·ey[:, :, None]·ex[:, None, :]`` = :meth:`slices_from_images`.

        :func:`emflow.fourier.ft` of an image centred in the ``N×N`` zero box: ifftshift puts image
        pixel ``b/2`` at index 0, so it is the FT of the image in the box corner (``rfft2`` with
        ``s=(N, N)``: no padded copy, no roll) times ``exp(+2πi k·(b/2)/N)`` per axis; the shift
        ``t`` (content at ``+t``) is undone by ``exp(+2πi k·t/N)``. Separable ramps, 2N exponentials
        per image: ``ex`` (n, N//2+1), ``ey`` (n, N) complex64; ``S`` complex64 (n, N, N//2+1)."""
        b, N = self.box, self.n_pad
        n = images.shape[0]
        # the padded rows beyond b are zero: transform the b image rows along x (zero-padded to N), then
        # every column along y (zero-padded to N) — half the row transforms of rfft2(s=(N, N)), no padded copy
        S = scipy.fft.rfft(images, n=N, axis=-1, workers=self.workers)
        S = scipy.fft.fft(S, n=N, axis=-2, workers=self.workers, overwrite_x=True).astype(np.complex64, copy=False)
        sh = _as_shifts(shifts, n)
        ex, ey = _undo_shift_ramps(np.full((n, 2), b / 2.0) if sh is None else sh + b / 2.0, N)
        return S, ex, ey

    def insert(self, images, rotations, weights=None, shifts=None, ctf=None, chunk: int = 64) -> None:
        """Insert real-space images (the projections of the map with transforms ``rotations``).

        Parameters
        ----------
        images : ndarray, float, (n, b, b)
        rotations : ndarray, float64, (n, 3, 3)
            ``xform.projection`` rotations ``R`` of the images.
        weights : ndarray, (n,), optional
            Per-image weights ``w`` (default 1).
        shifts : ndarray, (n, 2), optional
            ``(tx, ty)`` pixels by which each image is shifted relative to the centred
            projection (the translation of its ``xform.projection``); it is undone.
        ctf : ndarray, float, (n, N, N//2+1) or (N, N//2+1), optional
            Per-pixel Fourier weights ``c`` in the rfft layout of the *padded* slice
            (:func:`emflow.fourier.ft` of an ``N×N`` image); data get ``c``, weights ``c²``.
        chunk : int
            Images transformed per batch (memory bound).
        """
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        R = _as_rotations(rotations)
        n = images.shape[0]
        if R.shape[0] != n:
            raise ValueError(f"insert: {n} images but {R.shape[0]} rotations")
        sh = _as_shifts(shifts, n)
        w = self._weights(weights, n)
        if images.shape[1:] != (self.box, self.box):
            raise ValueError(f"insert: images must have shape (n, {self.box}, {self.box}), got {images.shape}")
        fold = self._strategy() == "slab" and self.kernel == "trilinear"  # that kernel applies the ramps itself
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            S, ex, ey = self._corner_ft(np.asarray(images[i0:i1], dtype=np.float32),
                                        None if sh is None else sh[i0:i1])
            if not fold:
                S *= ey[:, :, None]
                S *= ex[:, None, :]
            c = None if ctf is None else (ctf if np.ndim(ctf) == 2 else ctf[i0:i1])
            self._insert_slices(S, R[i0:i1], w[i0:i1], c, (ex, ey) if fold else None)

    def _weights(self, weights, n: int) -> np.ndarray:
        if weights is None:
            return np.ones(n, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size == 1:
            w = np.repeat(w, n)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {w.shape}")
        return w

    def insert_ft(self, slices_ft, rotations, weights=None, ctf=None, shifts=None) -> None:
        """Insert slices that are already Fourier transformed.

        Parameters
        ----------
        slices_ft : ndarray, complex, (n, N, N//2+1)
            :func:`emflow.fourier.ft` of zero-padded ``N×N`` images (centred phase origin).
        rotations : ndarray, float64, (n, 3, 3)
        weights : ndarray, (n,), optional
        ctf : ndarray, float, (n, N, N//2+1) or (N, N//2+1), optional
            As in :meth:`insert`.
        shifts : ndarray, (n, 2), optional
            ``(tx, ty)`` pixels by which each slice's image is shifted (as in :meth:`insert`); undone by a
            phase ramp (the slab kernel applies it while inserting: no shifted copy of the slices).
        """
        S = np.ascontiguousarray(slices_ft, dtype=np.complex64)
        if S.ndim == 2:
            S = S[None]
        N = self.n_pad
        if S.shape[1:] != (N, N // 2 + 1):
            raise ValueError(f"insert_ft: slices must have shape (n, {N}, {N // 2 + 1}), got {S.shape}")
        R = _as_rotations(rotations)
        n = S.shape[0]
        if R.shape[0] != n:
            raise ValueError(f"insert_ft: {n} slices but {R.shape[0]} rotations")
        sh = _as_shifts(shifts, n)
        ramps = None
        if sh is not None:
            ramps = _undo_shift_ramps(sh, N)
            if not (self._strategy() == "slab" and self.kernel == "trilinear"):
                S, ramps = S * ramps[1][:, :, None] * ramps[0][:, None, :], None
        self._insert_slices(S, R, self._weights(weights, n), ctf, ramps)

    def _insert_slices(self, S, R, w, ctf, ramps) -> None:
        """Insert complex64 slices S (n, N, N//2+1) under rotations R with weights w; ``ramps``
        ``(ex, ey)`` (trilinear slab kernel only): the slices are ``S·ey[:, :, None]·ex[:, None, :]``."""
        N = self.n_pad
        n = S.shape[0]
        if ctf is not None:
            c = np.asarray(ctf, dtype=np.float32)
            c = np.broadcast_to(c, (n, N, N // 2 + 1)) if c.ndim == 2 else c
            if c.shape != (n, N, N // 2 + 1):
                raise ValueError(f"insert_ft: ctf must have shape ({n}, {N}, {N // 2 + 1}), got {c.shape}")
            # the kernels add wt·v to F and wt to W with one per-pixel wt: wt = w·c² and v = S/c give
            # F += w·c·S, W += w·c² (v = 0 where c = 0, whose wt is 0 anyway)
            wsl = np.ascontiguousarray(w[:, None, None] * (c * c), dtype=np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                S = np.where(c != 0, S / np.where(c != 0, c, 1), 0).astype(np.complex64)
            has = True
        else:
            wsl = np.zeros((1, 1, 1), dtype=np.float32)
            has = False
        nsym = self.sym.shape[0]
        rots = np.ascontiguousarray(np.einsum("nij,sjk->nsik", R, self.sym).reshape(-1, 3, 3))
        img_of = np.repeat(np.arange(n), nsym)
        rmax2 = (N / 2.0 - 1.0) ** 2
        k = KERNELS[self.kernel]
        if self._strategy() == "slab" and self.kernel == "trilinear":
            T = numba.get_num_threads()
            order = _orientation_order(rots)
            ex, ey = ramps if ramps is not None else (np.ones((1, 1), np.complex64), np.ones((1, 1), np.complex64))
            _insert_tri_blocked(self._acc, S, wsl, has, w, rots[order], img_of[order], rmax2, T,
                                np.ascontiguousarray(ex), np.ascontiguousarray(ey), ramps is not None)
        elif self._strategy() == "slab":
            T = numba.get_num_threads()
            _insert_slab(self.F, self.W, S, wsl, has, w, rots, img_of, k, rmax2, T)
        else:
            T = min(numba.get_num_threads(), rots.shape[0])
            Fp = np.zeros((T,) + self.F.shape, dtype=np.complex64)
            Wp = np.zeros((T,) + self.W.shape, dtype=np.float32)
            _insert_private(Fp, Wp, S, wsl, has, w, rots, img_of, k, rmax2)
            _reduce_private(self.F, self.W, Fp, Wp)
        self.n_inserted += n

    def clear(self) -> None:
        """Zero the accumulators (reuse one reconstructor for many particles)."""
        self._acc[...] = 0
        self.n_inserted = 0

    # ------------------------------------------------------------------ merge / save / load
    def _check_compatible(self, other: "Reconstructor") -> None:
        if (other.box, other.n_pad, other.kernel) != (self.box, self.n_pad, self.kernel) or \
                other.sym.shape != self.sym.shape or not np.allclose(other.sym, self.sym):
            raise ValueError("merge: reconstructors differ in box, padding, kernel or symmetry "
                             f"({self.box}/{self.n_pad}/{self.kernel} vs {other.box}/{other.n_pad}/{other.kernel})")

    def merge(self, other: "Reconstructor") -> "Reconstructor":
        """Add another partial reconstruction (same box, pad, kernel, sym) in place; returns self."""
        self._check_compatible(other)
        self.F += other.F
        self.W += other.W
        self.n_inserted += other.n_inserted
        return self

    def save(self, path) -> None:
        """Write the accumulators to an ``.npz`` file at exactly ``path`` (use ``atomic_write``)."""
        with open(os.fspath(path), "wb") as fh:
            np.savez(fh, F=self.F, W=self.W, box=self.box, pad=self.pad, n_pad=self.n_pad,
                     kernel=self.kernel, sym=self.sym, n_inserted=self.n_inserted)

    @classmethod
    def load(cls, path, strategy: str = "auto", workers: int = -1) -> "Reconstructor":
        """Read a reconstructor written by :meth:`save`."""
        with np.load(os.fspath(path), allow_pickle=False) as d:
            r = cls(int(d["box"]), pad=float(d["pad"]), kernel=str(d["kernel"]), sym=d["sym"],
                    strategy=strategy, workers=workers)
            if r.n_pad != int(d["n_pad"]) or d["F"].shape != r.F.shape:
                raise ValueError(f"{path}: accumulator shape {d['F'].shape} does not match box/pad")
            r.F[...] = d["F"]
            r.W[...] = d["W"]
            r.n_inserted = int(d["n_inserted"])
        return r

    # ------------------------------------------------------------------ finish
    def hermitian_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of ``F``, ``W`` with the x=0 plane made Hermitian.

        Every sample was stored once in the x >= 0 half; its Friedel mate's share of the x=0
        plane lands on the partner voxel ``(0, -y, -z)``, so ``F(0,y,z) += conj F(0,-y,-z)`` and
        ``W(0,y,z) += W(0,-y,-z)`` (spec §5.6 "sum of the two partners").
        """
        F = self.F.copy()
        W = self.W.copy()
        N = self.n_pad
        # partner of (z, y) in the shifted layout is (N - z, N - y) mod N (index 0 = -N/2 maps to itself)
        idx = (-np.arange(N)) % N
        F0 = self.F[:, :, 0]
        W0 = self.W[:, :, 0]
        F[:, :, 0] = F0 + np.conj(F0[idx][:, idx])
        W[:, :, 0] = W0 + W0[idx][:, idx]
        return F, W

    def finish(self, wiener: bool = False, gridding_correct: bool = True) -> np.ndarray:
        """The reconstructed map.

        Parameters
        ----------
        wiener : bool
            ``F / (W + 1)`` instead of ``F / W`` (use when the inserted data and weights were
            pre-multiplied by the SNR, e.g. ``weights`` or ``ctf`` scaled by SNR).
        gridding_correct : bool
            Divide by the real-space apodisation of the insertion kernel
            (:func:`emflow.projection.gridding_apodization`).

        Returns
        -------
        ndarray, float32, (b, b, b)
            Voxels where ``W = 0`` contribute 0. The accumulators are not modified.
        """
        F, W = self.hermitian_sums()
        if wiener:
            F /= (W + 1.0)
        else:
            nz = W > 0
            np.divide(F, W, out=F, where=nz)  # in place: no gathered copies of the grid
            F[~nz] = 0
        N, b = self.n_pad, self.box
        F = scipy.fft.ifftshift(F, axes=(0, 1))
        vol = _ift_centre_crop(F, N, b, self.workers)
        if gridding_correct:
            a = gridding_apodization(N, b, self.kernel)
            vol /= (a[:, None, None] * a[None, :, None] * a[None, None, :]).astype(np.float32)
        return vol.astype(np.float32, copy=False)


def reconstruct(images, rotations, weights=None, shifts=None, pad: float = 2, kernel: str = "trilinear",
                sym="c1", wiener: bool = False, ctf=None) -> np.ndarray:
    """One-call reconstruction: ``Reconstructor(...).insert(...)`` then ``finish(wiener)``.

    Returns
    -------
    ndarray, float32, (b, b, b)
    """
    images = np.asarray(images)
    rec = Reconstructor(images.shape[-1], pad=pad, kernel=kernel, sym=sym)
    rec.insert(images, rotations, weights=weights, shifts=shifts, ctf=ctf)
    return rec.finish(wiener=wiener)
