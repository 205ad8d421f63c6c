"""Initial model by stochastic gradient descent on subtilts (EMAN e2spt_sgd_new, spec §3.5).

Algorithm (per class ``ic`` of ``ncls``):

1. Start: Fourier reconstruction (trilinear, padded box ``good_size(1.4·b)``) of the subtilts of
   ``batch`` random particles, each given a random orientation ``R`` (subtilt transforms
   ``P_k·R``).
2. Each iteration draws ``nptcl = ceil(batch·ncls/keep)`` random particles and aligns every
   one globally (:func:`emflow.align3d.align_global`) to every class's current map, using the
   shells up to ``1/res_a``. The ``batch`` best-scoring particles of each class (or, with
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
import math
from typing import Callable, Sequence

import numpy as np

from emflow import align3d, filters, fourier, masks
from emflow.geometry import random_rotations
from emflow.projection import VolumeProjector
from emflow.reconstruct import Reconstructor

__all__ = ["SGDParams", "SGDResult", "sgd_initial_model", "postprocess_map"]


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
        Global search step (deg); None: the EMAN ``astep`` of the coarsest crop (7.5°).
    npos : int
        Candidates refined after the global grid.
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
    delta_deg: float | None = None
    npos: int = 8
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
                row.append(align3d.align_global(proj, particles[i], sym=p.sym, minp=minp, maxp=maxp,
                                                delta=p.delta_deg, maxshift=p.maxshift_px, npos=p.npos))
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
