"""Single-particle initial model from the data by stochastic gradient descent (EMAN ``e2initialmodel_sgd``).

Algorithm (EMAN2 ``programs/e2initialmodel_sgd.py``, Muyuan Chen 2017; one *start* = one thread
of its ``--ntry``):

1. **Working sampling.** Particles are Fourier-cropped to a working box ``bw`` whose pixel is at
   most ``res_a/2.5`` (Nyquist ≤ ``res_a/1.25``; :func:`working_box`), Gaussian low-passed at ``res_a`` and edge-mean
   normalised (EMAN: ``filter.lowpass.gauss`` + ``normalize.edgemean`` of every batch particle).
2. **Start.** The Fourier accumulators ``F, W`` (:class:`emflow.reconstruct.Reconstructor`) of
   ``ninit`` random particles inserted at random orientations: after the low-pass, a noisy blob
   whose details are random (EMAN: 32 particles at random orientations, low-passed,
   phase-randomised beyond 20 px).
3. **Each iteration** projects the current map at the orientations of an ``eman`` grid of step
   ``δ = min(15°, delta_deg·res/res_a)`` over the asymmetric unit of ``sym`` (perturbed, EMAN
   ``perturb=True``; no mirror: the 2D alignment flips), where ``res`` is the iteration's
   resolution (``res_start_a`` → ``res_a``, :func:`resolution_schedule`), and assigns each of
   ``batch`` random particles its best projections by
   ``rotate_translate_flip`` alignment and the ``frc`` score over ``minres_a … res``
   (:func:`emflow.spa.simmx.simmx`, the Fourier-space fast path; images and projections
   Fourier-cropped to the box that ``res`` needs, at least 16 px). Soft assignment (not in EMAN,
   which takes the best projection only): each of the best ``keep`` fraction of the batch is
   brought into the frames of its ``ntop`` best projections
   (:func:`emflow.spa.align2d.transform_images`) and inserted at their orientations into a fresh
   reconstructor with weights ``exp(−(s_k − s_1)/(softness·σ))`` summing to 1 (``s_k``: its sorted
   scores, ``σ``: their spread over all projections) — at low SNR hard assignments lock a random
   start into its own noise (measured on 400 ribosome images, box 32, SNR 1: hard assignment
   reached FSC 0.15 at 40 Å after 16 iterations, soft assignment 0.72 after 20 at the same lr 0.3);
   the accumulators
   are then mixed ``F ← (1−lr)·F + lr·F_new`` (and ``W`` likewise; ``lr`` decays by ``lrdecay``
   per iteration). Mixing the accumulators rather than the maps is EMAN's ``mask.wedgefill``:
   Fourier voxels the batch did not reach keep the current map's values.
4. **Map** (every iteration): ``F/W`` → real space; Gaussian low-pass at the next iteration's
   resolution (``res_a`` at the end); centred on its
   centre of mass along the axes the symmetry leaves free (all for c1, z for cn, none otherwise;
   EMAN ``xform.centerofmass``; the accumulators are shifted with it); edge-mean normalised;
   soft spherical mask of radius ``mask_radius_a``.
5. **Several starts** (``ntry``) run independently; each final map is scored by the agreement of
   its re-projections with a common subset of ``n_score`` particles: the mean best ``frc`` score
   (lower is better; EMAN sorts its ``ntry`` models by the mean score of the last batch). The
   best map, Fourier-padded back to the particle box, is the result; all maps are returned.

**2D classes first** (:func:`spa_initial_model_from_classes`, config
``spa_initial_model.classify2d.enabled``): the images given to the SGD are then the reference-free
class averages of :mod:`emflow.spa.classify2d` (EMAN runs ``e2initialmodel`` on ``e2refine2d``'s
averages), each weighted in the update and in the ranking by its particle count (``weights``).
Measured (70S ribosome, c1, box 32, SNR 1, 1,000 images, 40 classes, 2 starts × 30 iterations):
FSC at 40 Å 0.83 against one hand, 0.34 against the other. It does not rescue SNR 0.08 yet: the
classes are at chance there.

Conventions
-----------
* Particles ``(n, b, b)`` ``[y, x]`` are **protein white** (EMAN/RELION particle convention,
  :func:`emflow.spa.refine_loop.phase_flip_particles`), phase-flipped (or CTF-free), centred on
  pixel ``b//2``. The map is protein white too, on the same grid (``[z, y, x]``, centre ``b//2``).
* Orientations are EMAN ``xform.projection`` rotations (:func:`emflow.geometry.eman_to_matrix`);
  the map comes out in an arbitrary orientation and position.
* **Hand.** Projections of a map ``V`` at rotation ``R`` equal those of its mirror image
  ``V(x, y, −z)`` at ``M R M`` (``M = diag(1, 1, −1)``): the projection integrates along z, so
  single-particle images without tilt pairs cannot tell the hands apart. Every start converges to
  either hand with the same score; the result's hand is undetermined (a coin toss per start), and
  so is the hand of any map refined from it. It has to be fixed by other knowledge (tilt pairs,
  a known fold, or α-helix handedness at ≲ 4 Å).

Speed: per iteration one projection set (``O(n_proj·bw²·log bw)``), one simmx of
``batch × n_proj`` pairs (numba, parallel) and one batched insertion; no Python loop over
particles.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np

from emflow import filters, fourier, masks
from emflow.errors import InputError
from emflow.geometry import eman_to_matrix, get_symmetry, orientations, random_rotations
from emflow.projection import VolumeProjector
from emflow.reconstruct import Reconstructor
from emflow.spa import align2d
from emflow.spa.align_symmetry import align_symmetry
from emflow.spa.classify2d import Classify2DParams, Classify2DResult, classify2d
from emflow.spa.simmx import SimmxOptions, simmx

__all__ = [
    "SPAInitParams",
    "SPAInitResult",
    "blob_model",
    "preprocess_particles",
    "reprojection_score",
    "resolution_schedule",
    "spa_initial_model",
    "spa_initial_model_em",
    "spa_initial_model_from_classes",
    "initial_model_run",
    "working_box",
]


@dataclasses.dataclass
class SPAInitParams:
    """Parameters of :func:`spa_initial_model` (EMAN ``e2initialmodel_sgd`` option in brackets).

    Attributes
    ----------
    res_a : float
        Target resolution (Å): low-pass of particles and maps, upper end of the ``frc`` band.
    res_start_a : float or None
        Resolution (Å) of the first iteration; it goes geometrically to ``res_a`` over the first
        two thirds of the iterations (coarse to fine: fewer false minima early). None: ``res_a``
        throughout.
    minres_a : float
        Lower end (Å) of the ``frc`` band used to score particle–projection pairs.
    cmp : str
        Particle–projection score of the SGD iterations: ``frc`` (EMAN's, every ring of the band
        weighted by its pixel count) or ``ccc`` (cross-correlation of the low-passed images:
        rings weighted by their power, a matched filter at low SNR). The starts are always
        ranked by ``frc``.
    ntry : int
        Independent starts (``--ntry``); the best-scoring map is the result.
    niter : int
        SGD iterations per start (``--niter``).
    batch : int
        Particles aligned per iteration (``--batchsize``; EMAN's default 5 is for class averages).
    keep : float
        Fraction of each batch (best ``frc`` scores) inserted into the update (0 < keep ≤ 1).
    ntop : int
        Each kept particle is inserted at its ``ntop`` best projections (soft assignment), with
        weights ``exp(−(s_k − s_1)/(softness·σ_i))`` where ``s_k`` are its sorted ``frc`` scores and
        ``σ_i`` the spread of its scores over all projections. 1: hard assignment (EMAN).
    softness : float
        Width of the soft assignment in units of ``σ_i`` (> 0).
    lr : float
        Learning rate of ``F ← (1−lr)·F + lr·F_new`` (``--learnrate``; 0 < lr ≤ 1).
    lrdecay : float
        ``lr`` is multiplied by this after every iteration (``--lrdecay``).
    delta_deg : float
        Angular step (deg) of the projection directions (EMAN: 9°, perturbed).
    sym : str
        Point-group symmetry (``--sym``): projection directions cover its asymmetric unit and the
        reconstruction is symmetrised.
    ninit : int
        Particles inserted at random orientations to form each start (EMAN: 32).
    mask_radius_a : float or None
        Soft spherical mask radius (Å) of the maps; None: ``0.4·b·apix`` (a Gaussian fall-off of
        ``0.06·b`` px outside).
    maxshift_px : float or None
        Largest 2D shift (px at the working box ``bw``) of the alignment; None: a fifth of the box (EMAN).
    n_score : int
        Particles (a fixed random subset) used to score the final maps of the starts.
    """

    res_a: float = 30.0
    res_start_a: float | None = 45.0
    minres_a: float = 200.0
    cmp: str = "frc"
    ntry: int = 4
    niter: int = 30
    batch: int = 100
    keep: float = 0.8
    ntop: int = 8
    softness: float = 1.0
    lr: float = 0.7
    lrdecay: float = 1.0
    delta_deg: float = 12.0
    sym: str = "c1"
    ninit: int = 32
    mask_radius_a: float | None = None
    maxshift_px: float | None = None
    n_score: int = 300

    def check(self) -> None:
        """Raise :class:`InputError` (source ``spa_initial_model.<key>``) on an invalid value."""
        bad = [(k, v) for k, v, ok in (
            ("res_a", self.res_a, self.res_a > 0), ("minres_a", self.minres_a, self.minres_a > self.res_a),
            ("res_start_a", self.res_start_a, self.res_start_a is None or self.res_start_a >= self.res_a),
            ("cmp", self.cmp, self.cmp in ("frc", "ccc")), ("ntry", self.ntry, self.ntry >= 1), ("niter", self.niter, self.niter >= 1),
            ("batch", self.batch, self.batch >= 2), ("keep", self.keep, 0 < self.keep <= 1),
            ("ntop", self.ntop, self.ntop >= 1), ("softness", self.softness, self.softness > 0),
            ("lr", self.lr, 0 < self.lr <= 1), ("lrdecay", self.lrdecay, 0 < self.lrdecay <= 1),
            ("delta_deg", self.delta_deg, 0.5 <= self.delta_deg <= 45), ("ninit", self.ninit, self.ninit >= 1),
            ("n_score", self.n_score, self.n_score >= 1),
            ("mask_radius_a", self.mask_radius_a, self.mask_radius_a is None or self.mask_radius_a > 0),
            ("maxshift_px", self.maxshift_px, self.maxshift_px is None or self.maxshift_px >= 0)) if not ok]
        if bad:
            k, v = bad[0]
            raise InputError(f"invalid initial-model parameter {k} = {v!r}", source=f"spa_initial_model.{k}",
                             fix="see config/schema.yaml (section spa_initial_model) for the allowed range")
        get_symmetry(self.sym)


@dataclasses.dataclass
class SPAInitResult:
    """Output of :func:`spa_initial_model`.

    Attributes
    ----------
    map : ndarray, float32, (b, b, b)
        The best start's map at the particle box and pixel size (protein white, soft-masked).
    maps : ndarray, float32, (ntry, b, b, b)
        Every start's final map, best first (same order as ``scores``).
    scores : ndarray, float64, (ntry,)
        Re-projection score of each map (mean best ``frc`` score of the scoring subset; lower is
        better; −1 would be perfect agreement), ascending.
    start_index : ndarray, int, (ntry,)
        Which start (0-based, in run order) each entry of ``maps`` came from.
    batch_scores : ndarray, float64, (ntry, niter)
        Mean best ``frc`` score of each iteration's batch, per start in run order (convergence).
    map_change : ndarray, float64, (ntry, niter)
        ``1 − CC`` of each start's working map before and after each iteration.
    working_box : int
        ``bw``; ``working_apix`` : float — the sampling the SGD ran at (Å/px).
    frame_scores : ndarray, float64, (ntry,) or None
        Stochastic EM with a point group: how well each map matched its own symmetry copies in the frame
        it was rotated into (:func:`emflow.spa.align_symmetry.symmetry_frame`; 1 = exactly symmetric).
    """

    map: np.ndarray
    maps: np.ndarray
    scores: np.ndarray
    start_index: np.ndarray
    batch_scores: np.ndarray
    map_change: np.ndarray
    working_box: int
    working_apix: float
    frame_scores: np.ndarray | None = None


# ----------------------------------------------------------------------------- helpers
def particle_stack(particles) -> np.ndarray:
    """``particles`` as float32 ``(n, b, b)`` with an even box, else an :class:`InputError`."""
    particles = np.asarray(particles, np.float32)
    if particles.ndim != 3 or particles.shape[1] != particles.shape[2] or particles.shape[-1] % 2:
        raise InputError(f"particles must be a stack of even square images (n, b, b), got {particles.shape}",
                         source="spa particles", fix="use a particle stack with an even box size")
    return particles


def working_box(box: int, apix: float, res_a: float, min_box: int = 24) -> tuple[int, float]:
    """``(bw, apix_w)``: the even box whose pixel is about ``res_a/2.5`` (never larger than ``box``,
    never smaller than ``min(box, min_box)``), and its pixel size ``box·apix/bw`` (Å/px)."""
    bw = math.ceil(box * apix / (res_a / 2.5))
    bw = min(box, max(min(box, min_box), bw + bw % 2))
    return bw, box * apix / bw


def preprocess_particles(particles: np.ndarray, bw: int, apix_w: float, res_a: float) -> np.ndarray:
    """Fourier-crop ``(n, b, b)`` to ``(n, bw, bw)``, Gaussian low-pass ``res_a`` (Å), edge-mean
    normalise each image. Returns float32 C-contiguous."""
    p = np.asarray(particles, np.float32)
    if p.shape[-1] != bw:
        p = fourier.fourier_crop(p, (len(p), bw, bw))
    p = filters.lowpass_gauss(p, apix_w, res_a, ndim=2)
    return np.ascontiguousarray(filters.normalize_edgemean(p, ndim=2), np.float32)


def blob_model(box: int, apix: float, radius_a: float | None = None, width_a: float | None = None) -> np.ndarray:
    """A soft sphere ``(box, box, box)`` float32 (1 inside, Gaussian fall-off), radius ``radius_a`` Å
    (None: ``0.3·box`` px, emflow's former fixed blob) and fall-off width ``width_a`` Å (None:
    ``0.05·box`` px), centred on voxel ``box//2``. The ``startingmodel: blob`` start."""
    r = 0.3 * box if radius_a is None else radius_a / apix
    w = 0.05 * box if width_a is None else width_a / apix
    if not 0 < r < box / 2:
        raise InputError(f"blob radius {r * apix:.1f} Å is not inside the box ({box / 2 * apix:.1f} Å half-width)",
                         source="spa.blob_radius_a", fix="give a radius between 0 and half the box in Å (or null)")
    return masks.soft_sphere(box, r, w).astype(np.float32)


def _free_axes(sym: str) -> np.ndarray:
    """Axes ``[z, y, x]`` along which a map of symmetry ``sym`` may be re-centred."""
    s = str(sym).strip().lower()
    if s == "c1":
        return np.ones(3, bool)
    if s.startswith("c"):
        return np.array([True, False, False])  # cn: the axis (z) only
    return np.zeros(3, bool)


def _centre_of_mass_shift(vol: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Shift ``[dz, dy, dx]`` (px) that moves the positive density's centre of mass to ``n//2``."""
    if not free.any():
        return np.zeros(3)
    w = np.maximum(vol, 0.0).astype(np.float64)
    tot = w.sum()
    if tot <= 0:
        return np.zeros(3)
    n = vol.shape[0]
    idx = np.arange(n, dtype=np.float64)
    com = np.array([(w.sum(axis=(1, 2)) * idx).sum(), (w.sum(axis=(0, 2)) * idx).sum(),
                    (w.sum(axis=(0, 1)) * idx).sum()]) / tot
    return np.where(free, n // 2 - com, 0.0)


def _shift_accumulator(F: np.ndarray, n_pad: int, shift_zyx: np.ndarray) -> None:
    """Move the accumulated map by ``+shift`` px (in place): phase ramp on ``F`` (z, y fftshifted)."""
    k = np.arange(n_pad) - n_pad // 2
    kx = np.arange(n_pad // 2 + 1)
    dz, dy, dx = (float(v) / n_pad for v in shift_zyx)
    ramp = (np.exp(-2j * np.pi * dz * k)[:, None, None] * np.exp(-2j * np.pi * dy * k)[None, :, None]
            * np.exp(-2j * np.pi * dx * kx)[None, None, :])
    F *= ramp.astype(np.complex64)


def _mask(bw: int, apix_w: float, radius_a: float | None) -> np.ndarray:
    r = 0.4 * bw if radius_a is None else min(radius_a / apix_w, bw / 2 - 1)
    return masks.soft_sphere(bw, r, 0.06 * bw).astype(np.float32)


def _orientation_set(sym: str, delta: float, rng: np.random.Generator | None) -> np.ndarray:
    """Rotations ``(n, 3, 3)`` of an ``eman`` grid over the asymmetric unit (no mirror), perturbed
    when ``rng`` is given."""
    eul = orientations("eman", sym=sym, delta=float(delta), inc_mirror=False, perturb=rng is not None, rng=rng)
    return eman_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2])


def _projections(vol: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Central-section projections, circle mean 0 and σ 1 (EMAN ``normalize.circlemean``)."""
    proj = VolumeProjector(vol, pad=2).project(R)
    b = proj.shape[-1]
    yy, xx = np.indices((b, b))
    ring = np.abs(np.hypot(yy - b // 2, xx - b // 2) - (b // 2 - 1)) < 1.0
    proj -= proj[:, ring].mean(axis=1)[:, None, None]
    sd = proj.reshape(len(proj), -1).std(axis=1)
    return (proj / np.where(sd > 0, sd, 1)[:, None, None]).astype(np.float32)


def _assign(particles: np.ndarray, proj: np.ndarray, opts: SimmxOptions, ntop: int = 1, softness: float = 1.0):
    """The ``ntop`` best projections of every particle.

    Returns ``(best (n, ntop) int, score (n, ntop), weight (n, ntop), params)`` with ``params``
    ``(alpha, tx, ty, mirror)`` each ``(n, ntop)``: the transform that brings the particle into
    that projection's frame (simmx planes 1–4). ``weight`` is 1 for the best projection and
    ``exp(−(s_k − s_1)/(softness·σ))`` for the others (σ: std of the particle's scores).
    """
    mx = simmx(particles, proj, opts)
    k = min(int(ntop), proj.shape[0])
    sc = mx[0].astype(np.float64)
    best = np.argsort(sc, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(particles))[:, None]
    score = sc[rows, best]
    sd = np.where(np.isfinite(sc), sc, np.nan)
    sd = np.nanstd(sd, axis=1)[:, None]
    weight = np.exp(-(score - score[:, :1]) / np.maximum(softness * sd, 1e-12))
    params = (mx[3][rows, best], mx[1][rows, best], mx[2][rows, best], mx[4][rows, best])
    return best, score, weight, params


def reprojection_score(vol: np.ndarray, particles: np.ndarray, apix: float, res_a: float, minres_a: float,
                       sym: str = "c1", delta_deg: float = 9.0, maxshift_px: float | None = None,
                       weights: np.ndarray | None = None) -> float:
    """Mean best ``frc`` score (lower is better) of preprocessed ``particles`` ``(n, b, b)`` against the
    projections of ``vol`` ``(b, b, b)`` at an unperturbed ``delta_deg`` grid of the asymmetric unit
    (weighted by ``weights`` ``(n,)`` when given, e.g. the particle counts of class averages).

    Both must be at the same sampling ``apix`` (Å/px). This is how the starts are ranked.
    """
    opts = _simmx_options(vol.shape[0], apix, res_a, minres_a, maxshift_px)
    _, score, _, _ = _assign(particles, _projections(vol, _orientation_set(sym, delta_deg, None)), opts)
    return float(np.average(score[:, 0], weights=weights))


def _simmx_options(bw, apix_w, res_a, minres_a, maxshift_px, cmp="frc"):
    ms = bw / 5.0 if maxshift_px is None else maxshift_px
    cmp = f"frc:minres={minres_a:g}:maxres={res_a:g}" if cmp == "frc" else "ccc"
    return SimmxOptions(align="rotate_translate_flip", aligncmp="ccc", cmp=cmp, apix=apix_w, maxshift=math.ceil(ms))


def _new_reconstructor(bw: int, sym: str) -> Reconstructor:
    return Reconstructor(bw, pad=2, kernel="trilinear", sym=sym)


def _map_from(F, W, bw, sym, apix_w, res_a, mask, free):
    """Working map from the accumulators (step 4) low-passed at ``res_a``; re-centres ``F`` in place."""
    rec = _new_reconstructor(bw, sym)
    rec.F, rec.W = F, W
    v = filters.lowpass_gauss(rec.finish(), apix_w, res_a)
    sh = _centre_of_mass_shift(v * mask, free)
    if np.abs(sh).max() > 0.25:
        _shift_accumulator(F, rec.n_pad, sh)
        v = fourier.shift(v, sh[::-1])
    return (filters.normalize_edgemean(v) * mask).astype(np.float32)


def resolution_schedule(p: SPAInitParams) -> np.ndarray:
    """Resolution (Å) of each iteration: geometric from ``res_start_a`` to ``res_a`` over the first
    two thirds of the ``niter`` iterations, then ``res_a``."""
    r0 = p.res_a if p.res_start_a is None else p.res_start_a
    ramp = max(1, round(2 * p.niter / 3))
    t = np.minimum(np.arange(p.niter) / max(1, ramp - 1), 1.0) if ramp > 1 else np.ones(p.niter)
    return r0 * (p.res_a / r0) ** t


def _cc(a, b) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum() + 1e-30))


def _one_start(pp, bw, apix_w, p: SPAInitParams, rng, mask, free, tick, monitor=None, weights=None):
    """One SGD start on preprocessed particles ``pp`` (image weights ``weights`` ``(n,)``, mean 1, or
    None); returns ``(map, batch_scores, map_change)``."""
    n = len(pp)
    sched = resolution_schedule(p)
    rec = _new_reconstructor(bw, p.sym)
    ids = rng.choice(n, min(p.ninit, n), replace=False)
    rec.insert(pp[ids], random_rotations(len(ids), rng))
    F, W = rec.F, rec.W
    vol = _map_from(F, W, bw, p.sym, apix_w, sched[0], mask, free)
    batch = min(p.batch, n)
    nkeep = max(1, round(p.keep * batch))
    lr = p.lr
    scores, change = [], []
    for it, res in enumerate(sched):
        # alignment at the box this iteration's resolution needs (Fourier crop; shifts scaled back)
        ba, apix_a = working_box(bw, apix_w, res, min_box=16)
        maxshift = None if p.maxshift_px is None else p.maxshift_px * ba / bw
        opts = _simmx_options(ba, apix_a, res, p.minres_a, maxshift, p.cmp)
        # the angular step follows the resolution: δ·res/res_a, at most 15°
        R = _orientation_set(p.sym, min(15.0, p.delta_deg * res / p.res_a), rng)
        proj = _projections(vol if ba == bw else fourier.fourier_crop(vol, ba), R)
        ids = rng.choice(n, batch, replace=False)
        ptcl = pp[ids] if ba == bw else fourier.fourier_crop(pp[ids], (batch, ba, ba))
        best, score, weight, (alpha, tx, ty, mirror) = _assign(ptcl, proj, opts, p.ntop, p.softness)
        tx, ty = tx * (bw / ba), ty * (bw / ba)
        sel = np.argsort(score[:, 0], kind="stable")[:nkeep]
        w = weight[sel]
        use = w > 0.01
        r, c = np.nonzero(use)
        aligned = align2d.transform_images(pp, alpha[sel][r, c], tx[sel][r, c], ty[sel][r, c], mirror[sel][r, c],
                                           index=ids[sel][r])
        new = _new_reconstructor(bw, p.sym)
        # each particle's weights sum to 1 over its projections (times its image weight: class counts)
        w = w / w.sum(axis=1, keepdims=True)
        if weights is not None:
            w = w * weights[ids[sel]][:, None]
        new.insert(aligned, R[best[sel][r, c]], weights=w[r, c])
        F *= np.float32(1 - lr)
        F += np.complex64(lr) * new.F
        W *= np.float32(1 - lr)
        W += np.float32(lr) * new.W
        lr *= p.lrdecay
        prev, vol = vol, _map_from(F, W, bw, p.sym, apix_w, sched[min(it + 1, len(sched) - 1)], mask, free)
        scores.append(float(np.average(score[:, 0], weights=None if weights is None else weights[ids])))
        change.append(1.0 - _cc(prev, vol))
        tick()
        if monitor is not None:  # diagnostics (tests, benchmarks): monitor(iteration, map, batch score)
            monitor(it, vol, scores[-1])
    return vol, scores, change


def spa_initial_model(particles: np.ndarray, apix: float, params: SPAInitParams | None = None,
                      rng: np.random.Generator | None = None,
                      progress: Callable[[float], None] | None = None,
                      weights: np.ndarray | None = None) -> SPAInitResult:
    """Initial 3D map from single-particle images by SGD with several scored starts (module docstring).

    Parameters
    ----------
    particles : ndarray, float32, (n, b, b)
        Phase-flipped (or CTF-free) particles, **protein white**, centred on pixel ``b//2``,
        ``b`` even, ``n ≥ 2``.
    apix : float
        Pixel size of the particles (Å/px).
    params : SPAInitParams, optional
    rng : numpy Generator, optional
        Drives the starts, batches and perturbed orientation grids (reproducible runs); default
        ``default_rng(0)``.
    progress : callable, optional
        Called with the fraction done after every iteration.
    weights : ndarray, (n,), optional
        Weight of each image in the updates and the start ranking (class averages: their particle
        counts, :func:`spa_initial_model_from_classes`); None: all equal.

    Returns
    -------
    SPAInitResult
        ``map`` ``(b, b, b)`` float32 at ``apix``, protein white, in an arbitrary orientation and
        of undetermined hand (module docstring).
    """
    p = params or SPAInitParams()
    p.check()
    rng = np.random.default_rng(0) if rng is None else rng
    particles = particle_stack(particles)
    n, b = len(particles), particles.shape[-1]
    if n < 2:
        raise InputError(f"an initial model needs at least 2 particles, got {n}", source="spa particles")
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if weights.shape != (n,) or not np.all(weights >= 0) or weights.sum() <= 0:
            raise InputError(f"image weights must be {n} non-negative numbers, not all 0", source="spa particles")
        weights = weights / weights.mean()
    if p.res_a < 2 * apix:
        raise InputError(f"res_a = {p.res_a} Å is finer than Nyquist ({2 * apix:.2f} Å)",
                         source="spa_initial_model.res_a", fix=f"set res_a ≥ {2 * apix:.1f} (typically 20–40 Å)")
    bw, apix_w = working_box(b, apix, p.res_a)
    pp = preprocess_particles(particles, bw, apix_w, p.res_a)
    mask = _mask(bw, apix_w, p.mask_radius_a)
    free = _free_axes(p.sym)
    score_ids = rng.choice(n, min(p.n_score, n), replace=False)
    total, done = p.ntry * p.niter, [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0] / total)

    maps, scores, batch_scores, change = [], [], [], []
    for _ in range(p.ntry):
        vol, bs, ch = _one_start(pp, bw, apix_w, p, rng, mask, free, tick, weights=weights)
        maps.append(vol)
        batch_scores.append(bs)
        change.append(ch)
        scores.append(reprojection_score(vol, pp[score_ids], apix_w, p.res_a, p.minres_a, p.sym, p.delta_deg,
                                         p.maxshift_px, None if weights is None else weights[score_ids]))
    order = np.argsort(scores, kind="stable")
    full = np.stack([_to_box(maps[i], b, apix, p) for i in order])
    return SPAInitResult(map=full[0], maps=full, scores=np.asarray(scores, np.float64)[order],
                         start_index=order, batch_scores=np.asarray(batch_scores), map_change=np.asarray(change),
                         working_box=bw, working_apix=apix_w)


def _to_box(vol: np.ndarray, b: int, apix: float, p: SPAInitParams) -> np.ndarray:
    """Working map → particle box (Fourier pad), normalised, soft-masked at the particle sampling."""
    v = fourier.fourier_crop(vol, b) if vol.shape[0] != b else vol
    v = filters.normalize_edgemean(v)
    return (v * _mask(b, apix, p.mask_radius_a)).astype(np.float32)


def spa_initial_model_from_classes(particles: np.ndarray, apix: float, params: SPAInitParams | None = None,
                                   classify: Classify2DParams | None = None,
                                   rng: np.random.Generator | None = None,
                                   progress: Callable[[float], None] | None = None
                                   ) -> tuple[SPAInitResult, Classify2DResult]:
    """Reference-free 2D classes first (:func:`emflow.spa.classify2d.classify2d`, EMAN ``e2refine2d``),
    then the SGD on the class averages weighted by their particle counts (EMAN runs
    ``e2initialmodel`` on class averages). Same inputs as :func:`spa_initial_model`; returns the SGD
    result (maps at the particles' box) and the classification.

    At low SNR (≈ 0.1) single particles carry too little signal each for the SGD's view
    assignment; averages of ~100 aligned particles do."""
    rng = np.random.default_rng(0) if rng is None else rng

    def part(lo, hi):
        return None if progress is None else (lambda f: progress(lo + (hi - lo) * f))

    cls = classify2d(particles, apix, classify, rng, progress=part(0.0, 0.5))
    if len(cls.averages) < 2:
        raise InputError(f"2D classification left {len(cls.averages)} class(es); the SGD needs at least 2",
                         source="spa_initial_model.classify2d.ncls", fix="use more particles or more classes")
    res = spa_initial_model(cls.averages, apix, params, rng, progress=part(0.5, 1.0), weights=cls.counts)
    return res, cls


def spa_initial_model_em(particles: np.ndarray, apix: float, params: SPAInitParams | None = None,
                         em: dict | None = None, ctfs=None, rng: np.random.Generator | None = None,
                         progress: Callable[[float], None] | None = None) -> SPAInitResult:
    """Initial model by stochastic EM with a Gaussian likelihood and full pose marginalisation
    (:func:`emflow.spa.abinitio.stochastic_em`; config ``spa_initial_model.method: stochastic_em``).

    ``particles`` ``(n, b, b)`` phase-flipped, protein white (as :func:`spa_initial_model`); ``ctfs``: their
    :class:`emflow.ctf.CTF` list (the likelihood then models ``|CTF|·P``) or None (CTF-free). ``em``:
    keyword arguments of :class:`emflow.spa.abinitio.EMParams` (config ``spa_initial_model.em``);
    ``params.ntry``, ``params.sym`` and ``params.mask_radius_a`` apply: the EM runs in c1 and each map is
    then rotated into the frame of ``params.sym`` and symmetrised
    (:func:`emflow.spa.align_symmetry.align_symmetry`). The working box is the one whose pixel is about
    ``em.res_a/2.5`` (:func:`working_box`). Returns an :class:`SPAInitResult` whose ``scores`` are the
    negated mean marginal log-likelihoods (lower is better, as the SGD's), ``batch_scores`` the negated
    per-minibatch log-likelihoods and ``map_change`` the posterior widths (effective poses per particle).
    """
    from emflow.spa import abinitio

    p = params or SPAInitParams()
    p.check()
    rng = np.random.default_rng(0) if rng is None else rng
    particles = particle_stack(particles)
    n, b = len(particles), particles.shape[-1]
    emp = abinitio.EMParams(**(em or {}))
    emp.ntry = p.ntry
    emp.check()
    if n < 2:
        raise InputError(f"an initial model needs at least 2 particles, got {n}", source="spa particles")
    if emp.res_a < 2 * apix:
        raise InputError(f"em.res_a = {emp.res_a} Å is finer than Nyquist ({2 * apix:.2f} Å)",
                         source="spa_initial_model.em.res_a", fix=f"set res_a ≥ {2 * apix:.1f} (typically 20–30 Å)")
    bw, apix_w = working_box(b, apix, emp.res_a)
    if p.mask_radius_a is not None:
        emp.mask_radius_px = min(p.mask_radius_a / apix_w, bw / 2 - 1)
    pw = particles if bw == b else fourier.fourier_crop(particles, (n, bw, bw))
    X = fourier.ft(np.ascontiguousarray(pw, np.float32), axes=(-2, -1)).astype(np.complex64)
    C = None
    if ctfs is not None:
        from emflow.ctf import ctf_2d_stack

        if len(ctfs) != n:
            raise InputError(f"{len(ctfs)} CTFs for {n} particles", source="spa particles")
        C = np.abs(ctf_2d_stack(list(ctfs), (bw, bw), apix_w)).astype(np.float32)
    r = abinitio.stochastic_em(X, bw, apix_w, emp, ctf=C, rng=rng, progress=progress)
    # in c1, then into the group's frame (RELION's advice: a random start with the group imposed can lock
    # into a wrong symmetric map; measured on D7, tests/test_spa_align_symmetry.py)
    framed = [align_symmetry(v, p.sym) for v in r.maps]
    full = np.stack([_to_box(v, b, apix, p) for v, _ in framed])
    return SPAInitResult(map=full[0], maps=full, scores=-r.scores, start_index=r.start_index,
                         batch_scores=-r.loglik, map_change=r.neff, working_box=bw, working_apix=apix_w,
                         frame_scores=np.array([sc for _, sc in framed]))


def initial_model_run(particles: np.ndarray, apix: float, params: SPAInitParams, classify: dict,
                      rng: np.random.Generator, progress: Callable[[float], None] | None = None,
                      method: str = "stochastic_em", em: dict | None = None, ctfs=None
                      ) -> tuple[SPAInitResult, Classify2DResult | None, dict]:
    """The ``spa_initial_model`` rule's work. ``method`` ``stochastic_em``: :func:`spa_initial_model_em` on
    the particles (with their ``ctfs`` when given; ``classify`` is not used); ``sgd``: with
    ``classify["enabled"]`` the 2D classes and the SGD on their averages
    (:func:`spa_initial_model_from_classes`), else the SGD on the particles. Returns the result, the
    classification (or None) and a JSON-ready summary (scores, timings, classes)."""
    if method not in ("stochastic_em", "sgd"):
        raise InputError(f"unknown initial-model method {method!r}", source="spa_initial_model.method",
                         fix="use stochastic_em or sgd")
    cfg = dict(classify)
    enabled = bool(cfg.pop("enabled", False)) and method == "sgd"
    t0 = time.perf_counter()
    if method == "stochastic_em":
        res, cls = spa_initial_model_em(particles, apix, params, em, ctfs, rng, progress), None
    elif enabled:
        res, cls = spa_initial_model_from_classes(particles, apix, params, Classify2DParams(**cfg), rng, progress)
    else:
        res, cls = spa_initial_model(particles, apix, params, rng, progress), None
    summary = {"method": method, "seconds": time.perf_counter() - t0, "working_box": res.working_box,
               "working_apix": res.working_apix,
               "scores": res.scores.tolist(), "start_index": res.start_index.tolist(),
               "batch_scores": res.batch_scores.tolist(), "map_change": res.map_change.tolist(),
               "hand": "undetermined: projections of a map and of its mirror image are identical",
               "symmetry_frame_scores": None if res.frame_scores is None else res.frame_scores.tolist(),
               "classify2d": None if cls is None else {
                   "n_classes": len(cls.counts), "counts": cls.counts.tolist(), "history": cls.history,
                   "working_box": cls.working_box, "working_apix": cls.working_apix,
                   "excluded": int((cls.classes < 0).sum())}}
    return res, cls, summary
