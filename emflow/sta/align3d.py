"""Subtilt-based 3D alignment of one particle against a reference (spec §3.7, §7 items 9–10).

Conventions (``docs/CONVENTIONS.md``)
-------------------------------------
* A particle with orientation ``R`` and 3D shift ``t`` (px, particle/tomogram frame) is the
  reference transformed by ``T = (R, t)``: ``particle(r) = ref(R⁻¹ (r − t))``.
* Subtilt ``k`` of the particle has projection transform ``P_k`` (rotation, float64 3×3) and its
  own 2D shift ``d_k`` (the sub-pixel residual of extraction, EMAN ``xform.projection`` tx, ty).
  It is the projection of the reference with ``P_k · T``: rotation ``P_k R``, 2D shift
  ``(P_k t)_xy + d_k``. In Fourier space it is the central slice of the reference FT at
  ``(P_k R)ᵀ (kx, ky, 0)`` times ``exp(−2πi k·s_k / b)``.
* EMAN's ``xform.align3d`` (particle → reference) is ``T⁻¹ = (Rᵀ, −Rᵀ t)``
  (:attr:`Alignment.xform_align3d`).
* Score (lower is better, as EMAN): ``−mean_k c_k`` where ``c_k`` is the FRC between subtilt
  ``k`` and the reference slice, averaged over the Fourier shells ``minp ≤ |k| < maxp``
  (shell ``i`` holds ``i − 0.5 ≤ |k| < i + 0.5``; Fourier pixels of the ``b×b`` box).

Speed: EMAN crops the Fourier volumes to growing sizes ``ss`` (24, 48, 64, 128, …); here the
crop is implicit — the fused kernel visits only the Fourier pixels of the annulus
``minp ≤ |k| < min(maxp, ss/2)`` and samples the padded reference FT there directly, for all
(orientation, tilt) pairs in one ``prange`` loop; translations are phase factors precomputed
once per call. No FFT is done per trial orientation.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Callable

import numba
import numpy as np
import scipy.optimize

from emflow import fourier
from emflow._numba import jit, pjit
from emflow.geometry import eman_to_matrix, get_symmetry, orientations, rotvec_to_matrix
from emflow.projection import VolumeProjector

__all__ = ["SubtiltParticle", "Alignment", "score_orientations", "align_global", "align_local",
           "align_particles", "crop_ladder", "angular_step", "shells_for_resolution"]


# ----------------------------------------------------------------------------- particle data
@dataclasses.dataclass
class SubtiltParticle:
    """The subtilts of one particle, ready for alignment and reconstruction.

    Attributes
    ----------
    images : ndarray, float32, (K, b, b)
        Subtilts clipped (real space, about the centre) to the particle box ``b``.
    ft : ndarray, complex64, (K, b, b//2+1)
        :func:`emflow.fourier.ft` of ``images`` (centred phase origin).
    proj : ndarray, float64, (K, 3, 3)
        Projection rotations ``P_k`` (EMAN ``xform.projection`` without the particle).
    proj_shifts : ndarray, float64, (K, 2)
        ``d_k = (tx, ty)`` px of each subtilt's ``xform.projection``.
    model_weights : ndarray, float32, (K, b, b//2+1) or None
        Optional Fourier weights applied to the reference slices before comparison (e.g. |CTF|
        for phase-flipped subtilts). None: 1.
    """

    images: np.ndarray
    ft: np.ndarray
    proj: np.ndarray
    proj_shifts: np.ndarray
    model_weights: np.ndarray | None = None
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_images(cls, images, proj, proj_shifts=None, box: int | None = None, shrink: int = 1,
                    model_weights=None) -> "SubtiltParticle":
        """Build from real-space subtilts (any even size ≥ ``box``; padding is clipped off).

        Parameters
        ----------
        images : ndarray, (K, m, m)
        proj : ndarray, (K, 3, 3)
        proj_shifts : ndarray, (K, 2), optional
            px at the input sampling (divided by ``shrink``).
        box : int, optional
            Particle box ``b`` at the input sampling (default ``m``).
        shrink : int
            Integer down-sampling (mean binning) applied after clipping.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"SubtiltParticle: images must be (K, m, m), got {images.shape}")
        K, m = images.shape[0], images.shape[1]
        proj = np.ascontiguousarray(np.asarray(proj, dtype=np.float64).reshape(K, 3, 3))
        d = np.zeros((K, 2)) if proj_shifts is None else np.asarray(proj_shifts, np.float64).reshape(K, 2)
        b = m if box is None else int(box)
        if b > m or b % 2:
            raise ValueError(f"SubtiltParticle: box must be even and <= {m}, got {b}")
        img = fourier.crop(images, (K, b, b)) if b != m else images
        if shrink > 1:
            img = fourier.bin_mean(img, (1, shrink, shrink))
            d = d / shrink
        img = np.ascontiguousarray(img, dtype=np.float32)
        F = fourier.ft(img, axes=(-2, -1)).astype(np.complex64)
        return cls(img, F, proj, d, model_weights)

    @property
    def box(self) -> int:
        return self.images.shape[-1]

    @property
    def ntilt(self) -> int:
        return self.images.shape[0]

    def annulus(self, minp: int, maxp: int):
        """Unique (half-plane) Fourier pixels with ``minp ≤ round(|k|) < maxp`` (cached).

        Returns ``(qx, qy, shell, D, dpow, w)``: int arrays (npix,), shell index − minp,
        data ``D`` complex64 (K, npix), Σ|D|² per shell float64 (K, nshell), weights (K, npix).
        """
        key = (int(minp), int(maxp))
        if key in self._cache:
            return self._cache[key]
        b = self.box
        ky, kx = np.meshgrid(np.fft.fftfreq(b, 1.0 / b), np.arange(b // 2 + 1), indexing="ij")
        r = np.rint(fourier.radius_grid((b, b)) * b).astype(int)  # |k| in Fourier px (never at a .5 tie)
        keep = (r >= minp) & (r < maxp) & ~((kx == 0) & (ky < 0))
        rows, cols = np.nonzero(keep)
        shell = (r[rows, cols] - minp).astype(np.int32)
        D = np.ascontiguousarray(self.ft[:, rows, cols])
        w = (np.ones(D.shape, np.float32) if self.model_weights is None
             else np.ascontiguousarray(self.model_weights[:, rows, cols], dtype=np.float32))
        nsh = maxp - minp
        dpow = np.zeros((self.ntilt, nsh))
        for k in range(self.ntilt):
            dpow[k] = np.bincount(shell, np.abs(D[k]) ** 2, minlength=nsh)
        out = (kx[rows, cols].astype(np.float64), ky[rows, cols].astype(np.float64), shell, D, dpow, w)
        self._cache[key] = out
        return out


# ----------------------------------------------------------------------------- kernel
def _frc_body(vft, scale, proj, rots, qx, qy, shell, nshell, w, pdat, dpow, out):
    """out[i, j, k] = mean over shells of FRC(slice of vft at P_k R_i (shift j), subtilt k).

    pdat : complex64 (K, nt, npix) = conj(D_k) · exp(−2πi q·s_kj / b) (shift folded into data).
    """
    nrot = rots.shape[0]
    K = proj.shape[0]
    nt = pdat.shape[1]
    npix = qx.shape[0]
    N = vft.shape[0]
    c = N // 2
    nxh = vft.shape[2]
    for job in numba.prange(nrot * K):
        i = job // K
        k = job % K
        M = np.empty((3, 3))
        for a in range(3):
            for bb in range(3):
                M[a, bb] = proj[k, a, 0] * rots[i, 0, bb] + proj[k, a, 1] * rots[i, 1, bb] + \
                    proj[k, a, 2] * rots[i, 2, bb]
        spow = np.zeros(nshell)
        cross = np.zeros((nt, nshell))
        for p in range(npix):
            kx = qx[p]
            ky = qy[p]
            px = (M[0, 0] * kx + M[1, 0] * ky) * scale
            py = (M[0, 1] * kx + M[1, 1] * ky) * scale
            pz = (M[0, 2] * kx + M[1, 2] * ky) * scale
            conj = px < 0.0
            if conj:  # Friedel: F(-p) = conj F(p)
                px, py, pz = -px, -py, -pz
            fx0 = math.floor(px)
            fy0 = math.floor(py)
            fz0 = math.floor(pz)
            x0 = int(fx0)
            y0 = int(fy0) + c
            z0 = int(fz0) + c
            fx, fy, fz = px - fx0, py - fy0, pz - fz0
            ar = 0.0
            ai = 0.0
            for dz in range(2):
                wz = fz if dz else 1.0 - fz
                zz = z0 + dz
                if zz >= N:  # the DFT is periodic: +N/2 is -N/2
                    zz -= N
                for dy in range(2):
                    wzy = wz * (fy if dy else 1.0 - fy)
                    yy = y0 + dy
                    if yy >= N:
                        yy -= N
                    for dx in range(2):
                        xx = x0 + dx
                        if xx >= nxh:
                            continue
                        ww = wzy * (fx if dx else 1.0 - fx)
                        v = vft[zz, yy, xx]
                        ar += ww * v.real
                        ai += ww * v.imag
            if conj:
                ai = -ai
            ar *= w[k, p]
            ai *= w[k, p]
            sh = shell[p]
            spow[sh] += ar * ar + ai * ai
            for j in range(nt):
                d = pdat[k, j, p]
                cross[j, sh] += ar * d.real - ai * d.imag
        for j in range(nt):
            acc = 0.0
            cnt = 0
            for s in range(nshell):
                den = spow[s] * dpow[k, s]
                if den > 0.0:
                    acc += cross[j, s] / math.sqrt(den)
                    cnt += 1
            out[i, j, k] = acc / cnt if cnt > 0 else 0.0


# parallel over (orientation, tilt) for searches; serial for the single trials of Nelder–Mead,
# where waking a thread pool costs more than the work
# Two distinct function objects: numba's on-disk cache is keyed by qualified name and line, not by
# the ``parallel`` flag, so jitting one function twice made the serial kernel load the parallel one
# from the cache (a thread-pool wake-up per Nelder–Mead trial, ~20× slower on a busy machine).
def _renamed(func, name: str):
    f = types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__, func.__closure__)
    f.__qualname__ = name
    return f


_frc_parallel = pjit(_frc_body)
_frc_serial = jit(_renamed(_frc_body, "_frc_body_serial"))


def _as_rotations(rotations) -> np.ndarray:
    R = np.asarray(rotations, dtype=np.float64)
    if R.shape == (3, 3):
        R = R[None]
    if R.ndim != 3 or R.shape[1:] != (3, 3):
        raise ValueError(f"rotations must have shape (n, 3, 3), got {R.shape}")
    return np.ascontiguousarray(R)


def tilt_frc(projector: VolumeProjector, particle: SubtiltParticle, rotations, shifts=None,
             minp: int = 2, maxp: int | None = None, chunk: int = 4096) -> np.ndarray:
    """Per-tilt shell-averaged FRC ``c_k`` for every (rotation, 3D shift) trial.

    Parameters
    ----------
    projector : VolumeProjector
        Of the reference, same box ``b`` as the particle.
    particle : SubtiltParticle
    rotations : ndarray, float64, (n, 3, 3)
        Trial particle orientations ``R`` (reference → particle).
    shifts : ndarray, (m, 3), optional
        Trial 3D shifts ``t`` (x, y, z) px, particle frame (default: one zero shift).
    minp, maxp : int
        Shell range (Fourier px of the ``b`` box); ``maxp`` default ``0.4·b``.

    Returns
    -------
    ndarray, float32, (n, m, K)
    """
    b = particle.box
    if projector.box != b:
        raise ValueError(f"reference box {projector.box} != particle box {b}")
    maxp = int(0.4 * b) if maxp is None else int(min(maxp, b // 2))
    minp = int(max(1, minp))
    if maxp <= minp:
        raise ValueError(f"need minp < maxp, got {minp}, {maxp}")
    R = _as_rotations(rotations)
    t = np.zeros((1, 3)) if shifts is None else np.asarray(shifts, np.float64).reshape(-1, 3)
    qx, qy, shell, D, dpow, w = particle.annulus(minp, maxp)
    s2 = np.einsum("kij,mj->kmi", particle.proj[:, :2, :], t) + particle.proj_shifts[:, None, :]
    phase = np.exp(-2j * np.pi * (s2[..., 0, None] * qx + s2[..., 1, None] * qy) / b)
    pdat = np.ascontiguousarray((np.conj(D)[:, None, :] * phase).astype(np.complex64))
    out = np.empty((R.shape[0], t.shape[0], particle.ntilt), dtype=np.float32)
    scale = projector.n_pad / b
    for i0 in range(0, R.shape[0], chunk):
        i1 = min(i0 + chunk, R.shape[0])
        kernel = _frc_serial if (i1 - i0) * particle.ntilt < 64 else _frc_parallel
        kernel(projector.vft, scale, particle.proj, R[i0:i1], qx, qy, shell, maxp - minp, w, pdat,
                    dpow, out[i0:i1])
    return out


def score_orientations(projector: VolumeProjector, particle: SubtiltParticle, rotations, shifts=None,
                       minp: int = 2, maxp: int | None = None) -> np.ndarray:
    """EMAN score ``−mean_k c_k`` (lower is better) of each (rotation, shift) trial.

    Same arguments as :func:`tilt_frc`. Returns float64 ``(n, m)``.
    """
    return -tilt_frc(projector, particle, rotations, shifts, minp, maxp).astype(np.float64).mean(axis=2)


# ----------------------------------------------------------------------------- search helpers
def shells_for_resolution(box: int, apix: float, maxres_a: float, minres_a: float | None = None):
    """EMAN ``minp = ceil(b·apix/minres)`` (default 2) and ``maxp = ceil(b·apix/maxres)`` (≤ b/2)."""
    minp = 2 if not minres_a else max(1, int(math.ceil(box * apix / minres_a)))
    maxp = min(box // 2, int(math.ceil(box * apix / maxres_a)))
    return minp, max(maxp, minp + 1)


def crop_ladder(box: int, maxp: int, fromscratch: bool = True) -> list[int]:
    """Fourier-crop sizes ``ss`` of the coarse-to-fine levels (spec §3.7): 24, 48, 64, 128, …
    below ``maxy = min(b, good_size(3·maxp))``, then ``maxy`` (twice if it is the only one)."""
    maxy = min(box, fourier.good_size(3 * maxp))
    ladder = [s for s in [24, 48] + [2 ** k for k in range(6, 14)] if s < maxy] + [maxy]
    if fromscratch and len(ladder) == 1:
        ladder.append(maxy)
    return ladder


def angular_step(ss: int) -> float:
    """``astep = 89.999 / floor(π / (3·atan(2/ss)))`` degrees: a Fourier pixel at radius ss/2."""
    return 89.999 / math.floor(math.pi / (3.0 * math.atan(2.0 / ss)))


def _angle_deg(R1, R2, sym_mats) -> np.ndarray:
    """Smallest angle (deg) between R1 (..., 3, 3) and R2·S for any symmetry operator S."""
    R2S = np.einsum("...ij,sjk->...sik", R2, sym_mats)
    tr = np.einsum("...ji,...sji->...s", R1, R2S)
    return np.degrees(np.arccos(np.clip((tr.max(axis=-1) - 1.0) / 2.0, -1.0, 1.0)))


def _select_separated(R, t, scores, npos, min_sep_deg, sym_mats, max_scan=5000):
    """Indices of up to ``npos`` best-scoring trials mutually ≥ ``min_sep_deg`` apart."""
    order = np.argsort(scores, kind="stable")[:max_scan]
    kept: list[int] = []
    for i in order:
        if kept and _angle_deg(R[kept], R[i], sym_mats).min() < min_sep_deg:
            continue
        kept.append(int(i))
        if len(kept) >= npos:
            break
    return kept


@dataclasses.dataclass
class Alignment:
    """Best transform of one particle.

    Attributes
    ----------
    rotation : ndarray, float64, (3, 3)
        ``R``: the particle is the reference rotated by ``R`` (``xform.projection`` sense).
    shift : ndarray, float64, (3,)
        ``t`` px (x, y, z), particle frame, applied after the rotation.
    score : float
        ``−mean_k c_k`` at the last level (lower is better).
    tilt_scores : ndarray, float64, (K,)
        ``−c_k`` per subtilt.
    """

    rotation: np.ndarray
    shift: np.ndarray
    score: float
    tilt_scores: np.ndarray

    @property
    def xform_align3d(self) -> tuple[np.ndarray, np.ndarray]:
        """EMAN ``xform.align3d`` = ``T⁻¹`` (particle → reference): ``(Rᵀ, −Rᵀ t)``."""
        return self.rotation.T.copy(), -self.rotation.T @ self.shift

    def subtilt_transforms(self, particle: SubtiltParticle) -> tuple[np.ndarray, np.ndarray]:
        """New ``xform.projection`` of every subtilt: rotations ``P_k R`` (K,3,3) and 2D
        shifts ``(P_k t)_xy + d_k`` (K, 2)."""
        rots = particle.proj @ self.rotation
        shifts = particle.proj[:, :2, :] @ self.shift + particle.proj_shifts
        return rots, shifts


def _refine(projector, particle, R0, t0, minp, maxp, astep, maxshift, maxiter, Rstart=None, maxang=None):
    """Nelder–Mead over (tx, ty, tz px, rotation vector deg) around ``(R0, t0)``."""

    def unpack(x):
        return rotvec_to_matrix(x[3:]) @ R0, t0 + x[:3]

    def objective(x):
        R, t = unpack(x)
        if float(np.linalg.norm(t)) > maxshift:
            return 1.0
        if Rstart is not None and maxang is not None and \
                _angle_deg(R[None], Rstart, np.eye(3)[None]).min() > maxang:
            return 1.0
        return float(score_orientations(projector, particle, R, t[None], minp, maxp)[0, 0])

    # one restart with a half-size simplex: Nelder–Mead stalls on collapsed simplices
    x = np.zeros(6)
    for size in (1.0, 0.5):
        simplex = np.tile(x, (7, 1))
        for i in range(6):
            simplex[i + 1, i] += size * (1.0 if i < 3 else astep)
        res = scipy.optimize.minimize(objective, x, method="Nelder-Mead",
                                      options={"maxiter": maxiter, "initial_simplex": simplex,
                                               "xatol": 0.05, "fatol": 1e-5})
        x = res.x
    R, t = unpack(x)
    return R, t, float(res.fun)


def _levels(projector, particle, cands, ladder, minp, maxp, maxshift, npos, maxiter, sym_mats,
            Rstart=None, maxang=None) -> Alignment:
    """Refine candidates level by level, pruning to ``npos`` separated best, halving ``npos``."""
    for ss in ladder:
        astep = angular_step(ss)
        mp = int(min(maxp, ss // 2))
        out = [_refine(projector, particle, R, t, minp, mp, astep, maxshift, maxiter, Rstart, maxang)
               for R, t in cands]
        Rs = np.array([o[0] for o in out])
        sc = np.array([o[2] for o in out])
        keep = _select_separated(Rs, None, sc, npos, 4 * astep, sym_mats)
        cands = [(out[i][0], out[i][1]) for i in keep]
        npos = max(1, npos // 2)
    R, t = cands[0]
    c = tilt_frc(projector, particle, R, t[None], minp, min(maxp, ladder[-1] // 2))[0, 0].astype(np.float64)
    return Alignment(R, t, float(-c.mean()), -c)


def align_global(projector: VolumeProjector, particle: SubtiltParticle, sym="c1", minp: int = 2,
                 maxp: int | None = None, delta: float | None = None, maxshift: float | None = None,
                 shift_step: float | None = None, npos: int = 32, maxiter: int = 50,
                 ladder: list[int] | None = None) -> Alignment:
    """Search all orientations (asymmetric unit) then refine locally (e2spt_align_subtlt --fromscratch).

    Parameters
    ----------
    projector : VolumeProjector
        Reference (box ``b`` = particle box).
    particle : SubtiltParticle
    sym : str
        Point group; orientations cover its asymmetric unit (with mirror).
    minp, maxp : int
        Shells used (Fourier px of ``b``); see :func:`shells_for_resolution`. ``maxp`` default 0.4·b.
    delta : float, optional
        Coarse angular step (deg) of the global grid (``phitoo = delta``); default
        :func:`angular_step` of the first crop size (7.5° for ss = 24).
    maxshift : float, optional
        Largest accepted |t| (px); default ``b/6``.
    shift_step : float, optional
        If given, the global grid also tries 3D shifts on a cubic grid of this step (px) within
        ``maxshift``; otherwise only ``t = 0`` (translations are then found by the local
        refinement, fine for particles centred to within ~``b·apix/(4·res)`` px).
    npos : int
        Candidates kept after the global level (mutually ≥ 4·astep apart); halved per level.
    maxiter : int
        Nelder–Mead iterations per candidate and level.
    ladder : list of int, optional
        Crop sizes (default :func:`crop_ladder`).

    Returns
    -------
    Alignment
    """
    b = particle.box
    maxp = int(0.4 * b) if maxp is None else int(min(maxp, b // 2))
    maxshift = b / 6.0 if maxshift is None else float(maxshift)
    ladder = crop_ladder(b, maxp) if ladder is None else list(ladder)
    sym_mats = get_symmetry(sym).matrices
    d = angular_step(ladder[0]) if delta is None else float(delta)
    eul = orientations("eman", sym=sym, delta=d, phitoo=d, inc_mirror=True)
    R = eman_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2])
    if shift_step:
        g = np.arange(-maxshift, maxshift + 1e-9, shift_step)
        g = g - g[np.argmin(np.abs(g))]  # grid through 0
        T = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        T = T[np.linalg.norm(T, axis=1) <= maxshift + 1e-9]
    else:
        T = np.zeros((1, 3))
    mp0 = int(min(maxp, ladder[0] // 2))
    sc = score_orientations(projector, particle, R, T, minp, mp0)
    best_t = sc.argmin(axis=1)
    sc1 = sc[np.arange(len(R)), best_t]
    keep = _select_separated(R, None, sc1, npos, 4 * d, sym_mats)
    cands = [(R[i], T[best_t[i]].copy()) for i in keep]
    return _levels(projector, particle, cands, ladder[1:], minp, maxp, maxshift, max(1, npos // 2),
                   maxiter, sym_mats)


def align_local(projector: VolumeProjector, particle: SubtiltParticle, rotation, shift=None, sym="c1",
                minp: int = 2, maxp: int | None = None, maxang: float = 30.0,
                maxshift: float | None = None, breaksym: bool = False, maxiter: int = 50) -> Alignment:
    """Refine from a previous orientation (e2spt_align_subtlt without --fromscratch).

    Only the last crop level is used; trials farther than ``maxang`` degrees from the start
    (or |t| > ``maxshift``) are rejected. ``breaksym`` starts from every symmetry copy ``R·S``.
    ``rotation``/``shift`` are ``R``, ``t`` (reference → particle); for an EMAN ``xform.align3d``
    pass its inverse.
    """
    b = particle.box
    maxp = int(0.4 * b) if maxp is None else int(min(maxp, b // 2))
    maxshift = b / 6.0 if maxshift is None else float(maxshift)
    R0 = np.asarray(rotation, np.float64).reshape(3, 3)
    t0 = np.zeros(3) if shift is None else np.asarray(shift, np.float64).reshape(3)
    sym_mats = get_symmetry(sym).matrices
    starts = [R0 @ S for S in sym_mats] if breaksym else [R0]
    ss = crop_ladder(b, maxp, fromscratch=False)[-1]
    best = None
    for Rs in starts:
        a = _levels(projector, particle, [(Rs, t0.copy())], [ss], minp, maxp, maxshift, 1, maxiter,
                    sym_mats if not breaksym else np.eye(3)[None], Rstart=Rs, maxang=maxang)
        if best is None or a.score < best.score:
            best = a
    return best


def align_particles(projector: VolumeProjector, particles, mode: str = "global",
                    starts=None, progress: Callable[[float], None] | None = None, **kw) -> list[Alignment]:
    """Align many particles to one reference (global, or local from ``starts`` = [(R, t), …])."""
    out = []
    for i, p in enumerate(particles):
        if mode == "global":
            out.append(align_global(projector, p, **kw))
        elif mode == "local":
            R, t = starts[i]
            out.append(align_local(projector, p, R, t, **kw))
        else:
            raise ValueError(f"mode must be 'global' or 'local', got {mode!r}")
        if progress is not None:
            progress((i + 1) / len(particles))
    return out
