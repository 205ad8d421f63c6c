"""Initial model by stochastic gradient descent on subtilts (EMAN e2spt_sgd_new, spec §3.5).

Algorithm (per class ``ic`` of ``ncls``):

1. Start: Fourier reconstruction (trilinear, padded box ``good_size(1.4·b)``) of the subtilts of
   ``batch`` random particles, each given a random orientation ``R`` (subtilt transforms
   ``P_k·R``).
2. Each iteration draws ``nptcl = ceil(batch·ncls/keep)`` random particles and aligns every
   one globally to every class's current map, using the shells up to ``1/res_a``
   (:func:`align_coarse_to_fine`: a coarse orientation grid, then a batched pattern search of
   rotation and 3D shift around the best few grid points). The ``batch`` best-scoring particles of each class (or, with
   ``classify``, those whose best class it is) are reconstructed with their new transforms
   ``P_k·T``, and the class's **un-normalised padded accumulators** are updated
   ``F ← (1−lr)·F + lr·F_new`` (and the weights ``W`` likewise).
3. Post-processing of every map: ``F/W`` → real space, clip to ``b``, Gaussian low-pass
   ``1/res_a``, Gaussian high-pass at 2 Fourier pixels, edge-mean normalisation, soft
   spherical mask.

The result is a map in an arbitrary orientation (and position), with the hand fixed by the
tilt geometry of the subtilts.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable, Sequence

import numpy as np

from emflow import filters, fourier, masks
from emflow.geometry import eman_to_matrix, get_symmetry, orientations, random_rotations
from emflow.projection import VolumeProjector
from emflow.reconstruct import Reconstructor
from emflow.sta import align3d

__all__ = ["SGDParams", "SGDResult", "sgd_initial_model", "postprocess_map", "align_coarse_to_fine"]


@dataclasses.dataclass
class SGDParams:
    """Parameters of :func:`sgd_initial_model` (names follow e2spt_sgd_new options).

    Attributes
    ----------
    res_a : float
        Alignment and filter resolution (Å).
    batch : int
        Particles reconstructed per class and iteration.
    keep : float
        Fraction kept: ``batch·ncls/keep`` particles are aligned per iteration.
    niter : int
        Iterations.
    lr : float
        Learning rate of the Fourier update (0 < lr ≤ 1).
    ncls : int
        Number of classes (maps).
    classify : bool
        Each particle goes to its best class only (else the best ``batch`` per class).
    sym : str
        Point-group symmetry (alignment search and reconstruction).
    delta_deg : float or None
        Coarse global grid step (deg, also the phi step); None: 22.5°.
    npos : int
        Best grid points (mutually ≥ 1.5·delta apart) refined by the local pattern search.
    fine_deg : float
        Smallest rotation step (deg) of the local pattern search.
    maxshift_px : float or None
        Largest particle translation (px); None: box/6.
    mask_radius_px, mask_width_px : float or None
        Soft spherical mask (flat radius, Gaussian width); None: 0.35·b and 0.1·b.
    """

    res_a: float = 50.0
    batch: int = 12
    keep: float = 0.7
    niter: int = 10
    lr: float = 0.2
    ncls: int = 1
    classify: bool = False
    sym: str = "c1"
    delta_deg: float | None = 22.5  # config initial_model.delta_deg (None: 22.5 too)
    npos: int = 4
    fine_deg: float = 1.5
    maxshift_px: float | None = None
    mask_radius_px: float | None = None
    mask_width_px: float | None = None


@dataclasses.dataclass
class SGDResult:
    """Output of :func:`sgd_initial_model`.

    Attributes
    ----------
    maps : ndarray, float32, (ncls, b, b, b)
        Final post-processed maps.
    history : ndarray, float32, (niter + 1, ncls, b, b, b)
        Post-processed maps after initialisation and after every iteration.
    scores : list of ndarray, float64, (ncls, nptcl)
        Alignment score matrix of every iteration (lower is better).
    particle_ids : list of ndarray, int, (nptcl,)
        Particles aligned in every iteration.
    mean_score : ndarray, float64, (niter, ncls)
        Mean score of the particles each class selected.
    map_change : ndarray, float64, (niter, ncls)
        ``1 − CC`` between a class's maps before and after each iteration (convergence).
    alignments : list of list of Alignment
        Last iteration's alignments, ``[ic][j]`` for particle ``particle_ids[-1][j]``.
    """

    maps: np.ndarray
    history: np.ndarray
    scores: list
    particle_ids: list
    mean_score: np.ndarray
    map_change: np.ndarray
    alignments: list


def postprocess_map(vol: np.ndarray, apix: float, res_a: float, mask_radius_px=None,
                    mask_width_px=None) -> np.ndarray:
    """Low-pass 1/res (Gaussian), high-pass at 2 Fourier px, edge-mean normalise, soft mask.

    Returns float32 (b, b, b).
    """
    b = vol.shape[0]
    v = filters.lowpass_gauss(vol, apix, res_a)
    v = filters.highpass_gauss(v, apix, b * apix / 2.0)
    v = filters.normalize_edgemean(v)
    r = 0.35 * b if mask_radius_px is None else mask_radius_px
    w = 0.1 * b if mask_width_px is None else mask_width_px
    return (v * masks.soft_sphere(b, r, w)).astype(np.float32)


# ----------------------------------------------------------------------------- search
# the 27 points of the {-1, 0, 1}³ stencil; index 13 is the centre (no move)
_STENCIL = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))
_CENTRE = 13
# shift moves: the centre and ±1 along x, y, z (index 0 is the centre)
_SHIFT_STENCIL = np.vstack([np.zeros(3), np.eye(3), -np.eye(3)])


@functools.lru_cache(maxsize=8)
def _coarse_grid(sym: str, delta: float) -> np.ndarray:
    """Rotations (n, 3, 3) of the asymmetric unit (with mirror) at step ``delta`` (phi too)."""
    eul = orientations("eman", sym=sym, delta=delta, phitoo=delta, inc_mirror=True)
    R = eman_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2])
    R.setflags(write=False)
    return R


def _stencil_rotations(step_deg: float) -> np.ndarray:
    """Rodrigues rotations (27, 3, 3) by the vectors ``step_deg·s`` for s in the 3×3×3 stencil."""
    w = np.radians(step_deg) * _STENCIL
    a = np.linalg.norm(w, axis=1)
    k = w / np.where(a > 0, a, 1.0)[:, None]
    K = np.zeros((27, 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K -= K.transpose(0, 2, 1)
    return np.eye(3) + np.sin(a)[:, None, None] * K + (1 - np.cos(a))[:, None, None] * (K @ K)


def _pattern_level(projector, particle, R, t, minp, maxp, step_deg, shift_px, maxshift, max_moves=3):
    """One level of a batched pattern search: score the 27 rotations × 7 shifts stencil around
    ``(R, t)`` in one kernel call, move to the best, repeat (≤ ``max_moves``) until the centre wins.
    Returns ``(R, t, score)``."""
    dR = _stencil_rotations(step_deg)
    score = math.inf
    for _ in range(max_moves):
        rots = dR @ R
        shifts = t + shift_px * _SHIFT_STENCIL
        shifts = shifts[(np.linalg.norm(shifts, axis=1) <= maxshift + 1e-9) | (np.arange(7) == 0)]
        sc = align3d.score_orientations(projector, particle, rots, shifts, minp, maxp)
        i, j = np.unravel_index(int(np.argmin(sc)), sc.shape)
        R, t, score = rots[i], shifts[j], float(sc[i, j])
        if i == _CENTRE and j == 0:
            break
    return R, t, score


def align_coarse_to_fine(projector: VolumeProjector, particle: align3d.SubtiltParticle, sym: str = "c1",
                         minp: int = 2, maxp: int | None = None, delta: float = 22.5, npos: int = 4,
                         fine_deg: float = 1.5, maxshift: float | None = None,
                         shift_step: float = 1.0) -> align3d.Alignment:
    """Global subtilt alignment for SGD at low resolution: coarse grid, then local pattern search.

    The score is :func:`emflow.sta.align3d.score_orientations` (``−mean_k FRC_k`` over shells
    ``minp ≤ |k| < maxp``; lower is better). 1. Every orientation of the asymmetric unit (with
    mirror) on a ``delta`` grid (phi step ``delta``) is scored at ``t = 0`` in one parallel
    kernel call, on the shells up to ``min(maxp, 2/δ)`` (δ in radians) that the grid resolves.
    2. The ``npos`` best grid points, mutually ≥ 1.5·``delta`` apart, are refined by a pattern
    search (:func:`_pattern_level`) with rotation steps ``delta/2, delta/4, …, fine_deg`` (about
    x, y, z and their diagonals) jointly with 3D shift steps ``shift_step, shift_step/2, …`` px,
    every stencil of 27 × 7 trials in one kernel call; after each level only the better half of
    the candidates goes on. Much cheaper than the Nelder–Mead
    refinement of :func:`emflow.sta.align3d.align_global` (hundreds of single-trial calls).

    Parameters
    ----------
    projector : VolumeProjector
        Reference, same box ``b`` as ``particle``.
    particle : SubtiltParticle
    sym : str
        Point group: the grid covers its asymmetric unit.
    minp, maxp : int
        Fourier shells (px of ``b``); ``maxp`` default ``0.4·b``.
    delta : float
        Coarse grid step (deg).
    npos : int
        Grid points refined.
    fine_deg : float
        Final rotation step (deg), also the angular precision.
    maxshift : float, optional
        Largest |t| (px); default ``b/6``.
    shift_step : float
        First shift step (px) of the pattern search.

    Returns
    -------
    emflow.sta.align3d.Alignment
        ``rotation`` R, ``shift`` t (reference → particle), score, per-tilt scores.
    """
    b = particle.box
    maxp = int(0.4 * b) if maxp is None else int(min(maxp, b // 2))
    maxshift = b / 6.0 if maxshift is None else float(maxshift)
    sym_mats = get_symmetry(sym).matrices
    R = _coarse_grid(sym, float(delta))
    # the grid only resolves shells whose arc per step is ≲ 2 px: finer shells would just add noise
    maxp_grid = min(maxp, max(minp + 2, int(round(2.0 / math.radians(delta)))))
    sc = align3d.score_orientations(projector, particle, R, None, minp, maxp_grid)[:, 0]
    keep = align3d._select_separated(R, None, sc, npos, 1.5 * delta, sym_mats)
    cands = [(R[i], np.zeros(3)) for i in keep]
    step, sstep = delta / 2, float(shift_step)
    while True:  # levels: halve the steps and the number of candidates (as EMAN halves npos)
        out = sorted((_pattern_level(projector, particle, Ri, ti, minp, maxp, step, sstep, maxshift)
                      for Ri, ti in cands), key=lambda o: o[2])
        if step <= fine_deg * 1.0001:
            break
        cands = [(Ri, ti) for Ri, ti, _ in out[:max(1, len(out) // 2)]]
        step, sstep = max(fine_deg, step / 2), sstep / 2
    Rb, tb, _ = out[0]
    c = align3d.tilt_frc(projector, particle, Rb, tb[None], minp, maxp)[0, 0].astype(np.float64)
    return align3d.Alignment(Rb, tb, float(-c.mean()), -c)


def _new_reconstructor(box: int, sym: str) -> Reconstructor:
    n_pad = fourier.good_size(int(math.ceil(1.4 * box)))
    n_pad += n_pad % 2
    return Reconstructor(box, pad=n_pad / box, kernel="trilinear", sym=sym)


def _insert(rec: Reconstructor, particle: align3d.SubtiltParticle, R, t) -> None:
    rots = particle.proj @ R
    shifts = particle.proj[:, :2, :] @ t + particle.proj_shifts
    rec.insert(particle.images, rots, shifts=shifts)


def _finish(F, W, box, sym, apix, p: SGDParams) -> np.ndarray:
    rec = _new_reconstructor(box, sym)
    rec.F[...] = F
    rec.W[...] = W
    return postprocess_map(rec.finish(), apix, p.res_a, p.mask_radius_px, p.mask_width_px)


def _cc(a, b) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum() + 1e-30))


def sgd_initial_model(particles: Sequence[align3d.SubtiltParticle], apix: float, params: SGDParams,
                      rng: np.random.Generator,
                      progress: Callable[[float], None] | None = None) -> SGDResult:
    """Build ``ncls`` initial maps from particles' subtilts by SGD (module docstring).

    Parameters
    ----------
    particles : sequence of SubtiltParticle
        All with the same box ``b`` (Å/px ``apix``).
    apix : float
        Pixel size of the particles (Å/px).
    params : SGDParams
    rng : numpy Generator
        Drives the random initial orientations and batches (reproducible runs).
    progress : callable, optional
        Called with the fraction done after every aligned particle.

    Returns
    -------
    SGDResult
    """
    p = params
    n = len(particles)
    if n < 2:
        raise ValueError("sgd_initial_model needs at least 2 particles")
    if not 0 < p.lr <= 1 or not 0 < p.keep <= 1 or p.batch < 1 or p.ncls < 1:
        raise ValueError(f"invalid SGD parameters: {p}")
    b = particles[0].box
    if any(q.box != b for q in particles):
        raise ValueError("all particles must have the same box")
    batch = min(p.batch, n)
    nptcl = min(n, int(math.ceil(batch * p.ncls / p.keep)))
    minp, maxp = align3d.shells_for_resolution(b, apix, p.res_a)

    F, W, maps = [], [], []
    for _ in range(p.ncls):
        rec = _new_reconstructor(b, p.sym)
        ids = rng.choice(n, batch, replace=False)
        for i, R in zip(ids, random_rotations(batch, rng)):
            _insert(rec, particles[i], R, np.zeros(3))
        F.append(rec.F.copy())
        W.append(rec.W.copy())
        maps.append(_finish(rec.F, rec.W, b, p.sym, apix, p))
    history = [np.stack(maps)]
    scores, pids, mean_score, change, last_ali = [], [], [], [], []
    total = max(1, p.niter * nptcl * p.ncls)
    done = 0
    for _it in range(p.niter):
        ids = rng.choice(n, nptcl, replace=False)
        ali = []
        for ic in range(p.ncls):
            proj = VolumeProjector(maps[ic], pad=2)
            row = []
            for i in ids:
                row.append(align_coarse_to_fine(proj, particles[i], sym=p.sym, minp=minp, maxp=maxp,
                                                delta=22.5 if p.delta_deg is None else p.delta_deg,
                                                npos=p.npos, fine_deg=p.fine_deg,
                                                maxshift=p.maxshift_px))
                done += 1
                if progress is not None:
                    progress(done / total)
            ali.append(row)
        sc = np.array([[a.score for a in row] for row in ali])
        best_cls = sc.argmin(axis=0)
        ms, ch = [], []
        for ic in range(p.ncls):
            if p.classify:
                sel = np.nonzero(best_cls == ic)[0]
            else:
                sel = np.argsort(sc[ic], kind="stable")[:batch]
            ms.append(float(sc[ic, sel].mean()) if len(sel) else np.nan)
            if len(sel) == 0:  # an empty class keeps its map
                ch.append(0.0)
                continue
            rec = _new_reconstructor(b, p.sym)
            for j in sel:
                _insert(rec, particles[ids[j]], ali[ic][j].rotation, ali[ic][j].shift)
            F[ic] = (1 - p.lr) * F[ic] + p.lr * rec.F
            W[ic] = (1 - p.lr) * W[ic] + p.lr * rec.W
            new = _finish(F[ic], W[ic], b, p.sym, apix, p)
            ch.append(1.0 - _cc(new, maps[ic]))
            maps[ic] = new
        history.append(np.stack(maps))
        scores.append(sc)
        pids.append(ids)
        mean_score.append(ms)
        change.append(ch)
        last_ali = ali
    return SGDResult(np.stack(maps), np.stack(history), scores, pids, np.array(mean_score),
                     np.array(change), last_ali)
