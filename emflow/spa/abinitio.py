"""Single-particle ab-initio model by stochastic expectation–maximisation (cryoSPARC / RELION style).

Why not the SGD of :mod:`emflow.spa.initial_model` at low SNR: it assigns each particle its best
projections by the per-ring normalised ``frc`` score, which weights every ring equally whatever its
signal; at SNR ≈ 0.08 the high rings are pure noise and the assignments are at chance. Here each
particle is scored against *every* pose of a grid with the Gaussian log-likelihood of its Fourier
pixels (RELION's ``−||X − CTF·P||²/(2σ²)``, Scheres 2012 J. Struct. Biol. 180:519 eq. 3; cryoSPARC
ab-initio, Punjani et al. 2017 Nat. Methods 14:290), which weights every pixel by its SNR, and the
map is updated from the posterior-weighted particles (full marginalisation over poses).

Algorithm (one *start*):

1. **Working sampling** (done by the caller, :func:`prepare`): particles Fourier-cropped to a box
   ``bw`` (pixel ``apix_w``), their 2D FTs kept on the half-plane pixels ``0 < |k| ≤ k_max`` of
   the current resolution. The noise power ``σ²(|k|)`` per ring starts as the particles' mean
   power (an upper bound: signal included) and is then re-estimated from the residuals at the
   best poses (running mean).
2. **Poses**: a grid over SO(3) — EMAN directions over the full sphere at step ``δ`` × in-plane
   angles at the same step (``≈ 8π²/δ³·…``: 4,400 at 15°, 15,000 at 10°) — turned by a random
   rotation for every minibatch (no grid artefacts in the average), × a few 2D shifts.
3. **E-step** for a minibatch of ``batch`` particles: for every particle ``i``, shift ``s`` and
   rotation ``r``

       L_isr = Σ_k h_k/σ²_k · [Re(conj(X_isk)·c_ik·P_rk) − ½·c_ik²·|P_rk|²]

   (``P_r``: the central slice of the current map, ``c_i``: the particle's CTF amplitude or 1,
   ``h_k``: 2 on the half-plane's ``kx > 0``, 1 on ``kx = 0`` — the full-plane sum). Both terms are
   BLAS matrix products ``(n·n_s × 2m)·(2m × n_rot)`` and ``(n × m)·(m × n_rot)``. The posterior
   is ``softmax(β·L)`` over ``(s, r)`` per particle; ``β`` (inverse temperature) rises from
   ``beta0`` to 1 over the first half of the iterations (annealing: a random start cannot lock
   into its own noise at once).
4. **M-step** (online EM): per rotation ``r`` the posterior-weighted sums ``S_r = Σ_is w_isr·c_i·X_is``
   and ``V_r = Σ_is w_isr·c_i²`` (matrix products again), inserted as ``n_rot`` slices into a
   :class:`emflow.reconstruct.Reconstructor` (``pad = 1``, the working box; only rotations with
   weight); accumulators mixed ``F ← (1−η)F + η·F_batch``, ``W`` likewise, ``η`` decaying from
   ``eta0`` to ``eta_min``.
5. **Map**: ``F/(W + λ)`` (``λ``: a small fraction of the mean weight, a Wiener-like floor),
   soft spherical mask, re-centred on its centre of mass (c1), projected for the next minibatch.

Several starts (``ntry``) are ranked by the mean marginal log-likelihood ``log Σ_sr exp(L_isr)``
of a fixed scoring subset of particles at ``β = 1`` (higher is better).

Conventions
-----------
* Particles ``(n, b, b)`` ``[y, x]``: protein white, phase-flipped (then ``c = |CTF|``) or CTF-free
  (``c = 1``), centred on pixel ``b//2``. FTs in the layout of :func:`emflow.fourier.ft`
  (centred phase origin, rfft half-plane).
* Rotations are ``xform.projection`` matrices (:func:`emflow.geometry.eman_to_matrix`): slice
  pixel ``k`` of ``P_r`` samples the map's FT at ``Rᵀ(kx, ky, 0)`` (:class:`emflow.projection.VolumeProjector`,
  the insertion of :class:`emflow.reconstruct.Reconstructor` uses the same convention).
* Shifts ``t = (tx, ty)`` (working px): the particle is modelled as the projection moved by
  ``+t``; ``X_is = X_i·exp(+2πi k·t_s)`` is the particle moved back.
* The result's hand is undetermined (projections of a map and of its mirror image agree; see
  :mod:`emflow.spa.initial_model`), and so is its orientation: the EM runs in c1 and a symmetric
  particle's map is brought into its group's frame afterwards (:mod:`emflow.spa.align_symmetry`).

Speed: per minibatch two projections of the map (``O(n_rot·bw²)``), three matrix products of
``O(batch·n_s·m·n_rot)`` flops (BLAS, float32) and one insertion of ``≤ n_rot`` slices of ``bw²``; no
Python loop over particles or poses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from emflow import fourier, masks
from emflow.geometry import eman_to_matrix, orientations, random_rotations
from emflow.projection import VolumeProjector
from emflow.reconstruct import Reconstructor

__all__ = ["EMParams", "EMResult", "background_power", "best_poses", "pose_grid", "shift_grid", "ring_index", "noise_power", "stochastic_em"]


@dataclasses.dataclass
class EMParams:
    """Parameters of :func:`stochastic_em` (config ``spa_initial_model.em``).

    Attributes
    ----------
    res_start_a, res_a : float
        Resolution (Å) of the first and of the last iterations (``k_max = apix_w/res``), geometric in
        between over the first two thirds of the iterations.
    niter : int
        Minibatches per start.
    batch : int
        Particles per minibatch.
    delta_start_deg, delta_deg : float
        Angular step (deg) of the pose grid at ``res_start_a`` and at ``res_a`` (linear in between).
    shift_px : float
        Largest 2D shift (working px) of the shift grid (step 1 px, disc); 0: no shifts.
    beta0 : float
        Inverse temperature of the first iteration (→ 1 over the first half of the iterations).
    eta0, eta_min : float
        Online-EM step of the first iteration and its floor (``η_t = max(eta_min, eta0/(1+t/10))``).
    ntry : int
        Independent random starts.
    n_score : int
        Particles (fixed subset) that rank the starts by marginal log-likelihood.
    mask_radius_px : float or None
        Soft spherical mask radius (working px); None: ``0.4·bw``.
    ninit : int
        Particles inserted at random orientations to form a random start.
    noise_update : bool
        Re-estimate ``σ²`` per ring from the residuals at the best poses (never above the mean power).
    noise_init : str
        First ``σ²``: ``power`` (mean power per ring) or ``background`` (:func:`background_power`).
    """

    res_start_a: float = 60.0
    res_a: float = 40.0
    niter: int = 500
    batch: int = 200
    delta_start_deg: float = 20.0
    delta_deg: float = 15.0
    shift_px: float = 1.0
    beta0: float = 0.125
    eta0: float = 0.5
    eta_min: float = 0.1
    ntry: int = 2
    n_score: int = 300
    mask_radius_px: float | None = None
    ninit: int = 8
    noise_update: bool = True
    noise_init: str = "power"

    def check(self) -> None:
        """Raise :class:`emflow.errors.InputError` (source ``spa_initial_model.em.<key>``) on an invalid value."""
        from emflow.errors import InputError

        bad = [k for k, ok in (
            ("res_a", self.res_a > 0), ("res_start_a", self.res_start_a >= self.res_a), ("niter", self.niter >= 1),
            ("batch", self.batch >= 2), ("delta_deg", 3 <= self.delta_deg <= 30),
            ("delta_start_deg", 3 <= self.delta_start_deg <= 30), ("shift_px", 0 <= self.shift_px <= 5),
            ("beta0", 0 < self.beta0 <= 1), ("eta0", 0 < self.eta0 <= 1), ("eta_min", 0 < self.eta_min <= self.eta0),
            ("ntry", self.ntry >= 1), ("n_score", self.n_score >= 1), ("ninit", self.ninit >= 1),
            ("mask_radius_px", self.mask_radius_px is None or self.mask_radius_px > 0),
            ("noise_init", self.noise_init in ("power", "background"))) if not ok]
        if bad:
            raise InputError(f"invalid stochastic-EM parameter {bad[0]} = {getattr(self, bad[0])!r}",
                             source=f"spa_initial_model.em.{bad[0]}",
                             fix="see config/schema.yaml (section spa_initial_model.em) for the allowed range")


@dataclasses.dataclass
class EMResult:
    """Output of :func:`stochastic_em` (maps at the working box ``bw``).

    Attributes
    ----------
    maps : ndarray, float32, (ntry, bw, bw, bw)
        Every start's final map, best first.
    scores : ndarray, float64, (ntry,)
        Mean marginal log-likelihood per scoring particle (higher is better), descending.
    start_index : ndarray, int, (ntry,)
        Run order of each entry of ``maps``.
    loglik : ndarray, float64, (ntry, niter)
        Mean marginal log-likelihood (at β = 1) of each minibatch, per start in run order.
    neff : ndarray, float64, (ntry, niter)
        Mean effective number of poses ``1/Σw²`` per particle, per minibatch (posterior width).
    """

    maps: np.ndarray
    scores: np.ndarray
    start_index: np.ndarray
    loglik: np.ndarray
    neff: np.ndarray


# ----------------------------------------------------------------------------- grids
def pose_grid(delta_deg: float, sym: str = "c1") -> np.ndarray:
    """Rotations ``(n, 3, 3)`` float64 covering SO(3) at about ``delta_deg`` (modulo the point group ``sym``:
    the cosets ``R·G``): EMAN directions over the full sphere (the asymmetric unit of ``sym`` with its
    mirror half) × in-plane angles ``0, δ', 2δ', …`` (``δ' = 360/round(360/δ)``)."""
    e = orientations("eman", sym=sym, delta=float(delta_deg), inc_mirror=True)
    nphi = max(1, round(360.0 / delta_deg))
    phi = np.arange(nphi) * (360.0 / nphi)
    return eman_to_matrix(e[:, 0][:, None], e[:, 1][:, None], phi[None, :]).reshape(-1, 3, 3)


def shift_grid(shift_px: float) -> np.ndarray:
    """Integer shifts ``(n_s, 2)`` ``(tx, ty)`` within a disc of radius ``shift_px`` (px), (0, 0) first."""
    r = int(math.floor(shift_px))
    t = np.array([(x, y) for y in range(-r, r + 1) for x in range(-r, r + 1) if x * x + y * y <= shift_px ** 2 + 1e-9],
                 np.float64).reshape(-1, 2)
    return t[np.argsort(np.hypot(t[:, 0], t[:, 1]), kind="stable")]


def ring_index(bw: int) -> np.ndarray:
    """Integer ring ``round(|k|·bw)`` of every half-plane pixel ``(bw, bw//2+1)``."""
    return np.rint(fourier.radius_grid((bw, bw)) * bw).astype(np.int64)


def noise_power(ft: np.ndarray, bw: int) -> np.ndarray:
    """Mean power per ring ``(bw//2+2,)`` float64 of half-plane FTs ``(n, bw, bw//2+1)`` (the full-plane
    mean: ``kx = 0`` and ``kx > 0`` pixels weighted alike)."""
    ring = ring_index(bw)
    p = (np.abs(ft) ** 2).mean(axis=0)
    nr = bw // 2 + 2
    s = np.bincount(np.minimum(ring, nr - 1).ravel(), p.ravel(), nr)
    c = np.bincount(np.minimum(ring, nr - 1).ravel(), minlength=nr)
    return s / np.maximum(c, 1)


def background_power(ft: np.ndarray, bw: int, rfrac: float = 0.48) -> np.ndarray:
    """White-noise power per ring ``(bw//2+2,)``: the variance of the real-space pixels farther than
    ``rfrac·bw`` from the centre (the corners, outside the particle) times ``bw²``, for every ring."""
    img = fourier.ift(ft, (bw, bw))
    yy, xx = np.indices((bw, bw))
    out = np.hypot(yy - bw // 2, xx - bw // 2) > rfrac * bw
    v = float(img[:, out].var(axis=1).mean())
    return np.full(bw // 2 + 2, v * bw * bw)


# ----------------------------------------------------------------------------- kernels
def _log_softmax_rows(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(w, lse)``: row-wise softmax of ``L`` ``(n, p)`` (float32, in place) and log-sum-exp ``(n,)``."""
    mx = L.max(axis=1, keepdims=True)
    L -= mx
    np.exp(L, out=L)
    s = L.sum(axis=1, keepdims=True)
    L /= s
    return L, (mx + np.log(s))[:, 0].astype(np.float64)


def _scores(A: np.ndarray, C2: np.ndarray | None, P: np.ndarray, P2: np.ndarray, n: int, ns: int) -> np.ndarray:
    """``L`` ``(n, ns·n_rot)`` float32: ``A`` ``(n·ns, 2m)`` weighted data, ``C2`` ``(n, m)`` weighted CTF² (None:
    CTF-free, then ``P2`` is ``(n_rot,)`` already weighted), ``P`` ``(2m, n_rot)`` slices, ``P2`` ``(m, n_rot)`` |P|²."""
    L = A @ P  # (n·ns, n_rot)
    nrot = P.shape[1]
    L = L.reshape(n, ns, nrot)
    if C2 is None:
        L -= 0.5 * P2[None, None, :]
    else:
        L -= 0.5 * (C2 @ P2)[:, None, :]
    return L.reshape(n, ns * nrot)


def stochastic_em(particles_ft: np.ndarray, bw: int, apix_w: float, params: EMParams | None = None,
                  ctf: np.ndarray | None = None, rng: np.random.Generator | None = None,
                  progress: Callable[[float], None] | None = None,
                  monitor: Callable[[int, int, np.ndarray], None] | None = None,
                  init: np.ndarray | None = None) -> EMResult:
    """Ab-initio maps from single-particle FTs by stochastic EM with several starts (module docstring).

    Parameters
    ----------
    particles_ft : ndarray, complex64, (n, bw, bw//2+1)
        :func:`emflow.fourier.ft` of the working-box particles (protein white, phase-flipped or
        CTF-free, centred).
    bw : int
        Working box (even); ``apix_w`` its pixel size (Å/px).
    params : EMParams, optional
    ctf : ndarray, float32, (n, bw, bw//2+1), optional
        CTF amplitude ``c`` of every particle on the same grid (``|CTF|`` for phase-flipped
        particles); None: ``c = 1``.
    rng : numpy Generator, optional
        Drives the starts, minibatches and grid rotations; default ``default_rng(0)``.
    progress : callable, optional
        Called with the fraction done after every minibatch.
    monitor : callable, optional
        ``monitor(start, iteration, map)`` after every minibatch (diagnostics).
    init : ndarray, float32, (bw, bw, bw), optional
        A starting map (in the particles' units) instead of the random starts (diagnostics: is the
        truth a fixed point?).

    Returns
    -------
    EMResult
        Maps ``(ntry, bw, bw, bw)`` float32 at ``apix_w``, best first, arbitrary orientation and hand.
    """
    p = params or EMParams()
    rng = np.random.default_rng(0) if rng is None else rng
    X = np.ascontiguousarray(particles_ft, np.complex64)
    n = X.shape[0]
    if X.shape[1:] != (bw, bw // 2 + 1):
        raise ValueError(f"stochastic_em: particles_ft must be (n, {bw}, {bw // 2 + 1}), got {X.shape}")
    C = None if ctf is None else np.ascontiguousarray(ctf, np.float32)
    ring = ring_index(bw)
    sig2_cap = noise_power(X, bw)  # upper bound of the noise power (signal included)
    sig2_0 = np.minimum(sig2_cap, background_power(X[rng.choice(n, min(n, 1000), replace=False)], bw)) \
        if p.noise_init == "background" else sig2_cap.copy()
    mask = masks.soft_sphere(bw, 0.4 * bw if p.mask_radius_px is None else p.mask_radius_px,
                             0.06 * bw).astype(np.float32)
    T = shift_grid(p.shift_px)
    ky, kx = fourier.freq_grid((bw, bw))
    ramps = np.exp(2j * np.pi * (kx[None] * T[:, 0, None, None] + ky[None] * T[:, 1, None, None])).astype(np.complex64)
    score_ids = rng.choice(n, min(p.n_score, n), replace=False)
    total = p.ntry * p.niter
    t_ramp = max(1, round(2 * p.niter / 3) - 1)
    maps, lls, neffs = [], [], []
    for start in range(p.ntry):
        sig2 = sig2_0.copy()
        # start: random particles at random orientations, low-passed (a noisy blob)
        rec = Reconstructor(bw, pad=1, kernel="trilinear")
        ids0 = rng.choice(n, min(n, p.ninit), replace=False)
        if init is None:
            rec.insert_ft(X[ids0], random_rotations(len(ids0), rng))
        else:
            Ri = random_rotations(1000, rng)
            rec.insert_ft(VolumeProjector(init, pad=2).slices_ft(Ri, size=bw), Ri, weights=len(ids0) / 1000)
        # the start counts as much as one minibatch in the running accumulators
        g = np.float32(min(p.batch, n) / len(ids0))
        F, W = rec.F * g, rec.W * g
        vol = _map(F, W, bw, mask, apix_w, p.res_start_a)
        ll_hist, neff_hist = [], []
        for it in range(p.niter):
            f = min(1.0, it / t_ramp)
            res = p.res_start_a * (p.res_a / p.res_start_a) ** f
            delta = p.delta_start_deg + (p.delta_deg - p.delta_start_deg) * f
            beta = min(1.0, p.beta0 * (1.0 / p.beta0) ** min(1.0, it / max(1, p.niter // 2 - 1)))
            eta = max(p.eta_min, p.eta0 / (1.0 + it / 10.0))
            ids = rng.choice(n, min(p.batch, n), replace=False)
            R = pose_grid(delta) @ random_rotations(1, rng)[0]
            out = _em_step(vol, X[ids], None if C is None else C[ids], R, T, ramps, ring, sig2, bw,
                           apix_w / res, beta)
            Fb, Wb, ll, neff, resid = out
            F *= np.float32(1 - eta)
            F += np.complex64(eta) * Fb
            W *= np.float32(1 - eta)
            W += np.float32(eta) * Wb
            good = np.isfinite(resid) & (resid > 0)
            if p.noise_update:
                sig2[good] = np.minimum(sig2_cap[good], 0.7 * sig2[good] + 0.3 * resid[good])
            vol = _map(F, W, bw, mask, apix_w, res)
            ll_hist.append(ll)
            neff_hist.append(neff)
            if progress is not None:
                progress((start * p.niter + it + 1) / total)
            if monitor is not None:
                monitor(start, it, vol)
        maps.append(vol)
        lls.append(ll_hist)
        neffs.append(neff_hist)
    kmax = apix_w / p.res_a
    R = pose_grid(p.delta_deg)
    scores = [_em_step(v, X[score_ids], None if C is None else C[score_ids], R, T, ramps, ring, sig2_0, bw, kmax,
                       1.0, update=False)[2] for v in maps]
    order = np.argsort(scores, kind="stable")[::-1]
    return EMResult(maps=np.stack([maps[i] for i in order]), scores=np.asarray(scores, np.float64)[order],
                    start_index=order, loglik=np.asarray(lls), neff=np.asarray(neffs))


def best_poses(vol: np.ndarray, particles_ft: np.ndarray, bw: int, apix_w: float, res_a: float, R: np.ndarray,
               shift_px: float = 1.0, ctf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """The E-step alone: for every particle the rotation index into ``R`` ``(n_rot, 3, 3)`` and the shift
    (``(n, 2)`` working px, :func:`shift_grid`) of its largest likelihood against the map ``vol``
    ``(bw, bw, bw)`` (in the particles' units), Fourier pixels up to ``res_a`` Å, noise power = the
    particles' mean power per ring. Returns ``(rotation index (n,), shifts (n, 2), mean n_eff)``."""
    X = np.ascontiguousarray(particles_ft, np.complex64)
    T = shift_grid(shift_px)
    ky, kx = fourier.freq_grid((bw, bw))
    ramps = np.exp(2j * np.pi * (kx[None] * T[:, 0, None, None] + ky[None] * T[:, 1, None, None])).astype(np.complex64)
    br, bs, _, neff, _ = _em_step(vol, X, ctf, R, T, ramps, ring_index(bw), noise_power(X, bw), bw, apix_w / res_a,
                                  1.0, update="best")
    return br, T[bs], neff


def _map(F: np.ndarray, W: np.ndarray, bw: int, mask: np.ndarray, apix_w: float, res_a: float) -> np.ndarray:
    """Masked, centred working map from the accumulators (``F/(W + λ)``, ``λ = 0.01·mean W>0``); re-centres F."""
    rec = Reconstructor(bw, pad=1, kernel="trilinear")
    lam = 0.01 * float(W[W > 0].mean()) if np.any(W > 0) else 1.0
    rec.F[...] = F / np.float32(lam)
    rec.W[...] = W / np.float32(lam)
    v = rec.finish(wiener=True)
    v -= v[mask < 0.01].mean() if np.any(mask < 0.01) else 0.0
    # the re-centring of emflow.spa.initial_model (c1: every axis free), one computation for both starts
    from emflow.spa.initial_model import _centre_of_mass_shift, _shift_accumulator

    sh = _centre_of_mass_shift(v * mask, np.ones(3, bool))
    if np.abs(sh).max() > 0.25:
        _shift_accumulator(F, bw, sh)
        v = fourier.shift(v, sh[::-1])
    return (v * mask).astype(np.float32)


def _em_step(vol, X, C, R, T, ramps, ring, sig2, bw, kmax, beta, update=True):
    """One E-step (and the M-step sums): returns ``(F, W, mean log-lik, mean n_eff, residual power per ring)``."""
    n, ns, nrot = X.shape[0], T.shape[0], R.shape[0]
    sel = (ring >= 1) & (ring <= kmax * bw)
    yy, xx = np.nonzero(sel)
    m = yy.size
    h = np.where(xx == 0, 1.0, 2.0)
    wk = (h / sig2[ring[yy, xx]]).astype(np.float32)  # (m,)
    S = VolumeProjector(vol, pad=2).slices_ft(R, size=bw)[:, yy, xx]  # (nrot, m)
    P = np.concatenate([S.real, S.imag], axis=1).T.astype(np.float32)  # (2m, nrot)
    Pabs2 = (np.abs(S) ** 2).T.astype(np.float32)  # (m, nrot)
    Xs = (X[:, None, yy, xx] * ramps[None, :, yy, xx]).reshape(n * ns, m)  # particles moved back
    Cm = None if C is None else C[:, yy, xx]
    if Cm is None:
        A = np.concatenate([Xs.real * wk, Xs.imag * wk], axis=1).astype(np.float32)
        L = _scores(A, None, P, wk @ Pabs2, n, ns)
    else:
        Cs = np.repeat(Cm, ns, axis=0)
        A = np.concatenate([Xs.real * Cs * wk, Xs.imag * Cs * wk], axis=1).astype(np.float32)
        L = _scores(A, (Cm * Cm * wk).astype(np.float32), P, Pabs2, n, ns)
    # marginal log-likelihood at β = 1 (constant terms dropped) and the β-tempered posterior
    best = np.argmax(L, axis=1)
    mx = L[np.arange(n), best].astype(np.float64)
    ll = float(np.mean(mx + np.log(np.exp(L - L[np.arange(n), best][:, None]).sum(axis=1))))
    w, _ = _log_softmax_rows(L * np.float32(beta))
    neff = float(np.mean(1.0 / np.maximum((w * w).sum(axis=1), 1e-30)))
    # residual power per ring at the best pose (noise re-estimate)
    bs, br = best // nrot, best % nrot
    Xb = Xs.reshape(n, ns, m)[np.arange(n), bs]
    Pb = S[br] * (1.0 if Cm is None else Cm)
    r2 = np.abs(Xb - Pb) ** 2  # (n, m)
    nr = sig2.size
    rk = ring[yy, xx]
    resid = np.bincount(rk, r2.mean(axis=0), nr) / np.maximum(np.bincount(rk, minlength=nr), 1)
    resid[np.bincount(rk, minlength=nr) == 0] = np.nan
    if update == "best":
        return br, bs, ll, neff, resid
    if not update:
        return None, None, ll, neff, resid
    # M-step sums per rotation: S_r = Σ w c X, V_r = Σ w c²
    w3 = w.reshape(n, ns, nrot)
    wr = w3.sum(axis=(0, 1))
    keep = np.nonzero(wr > 1e-3 * wr.max())[0]
    wk_ = w3[:, :, keep].reshape(n * ns, keep.size)
    Xc = Xs if Cm is None else Xs * np.repeat(Cm, ns, axis=0)
    Sr = (wk_.T @ Xc.real.astype(np.float32)) + 1j * (wk_.T @ Xc.imag.astype(np.float32))  # (nk, m)
    if Cm is None:
        Vr = np.broadcast_to(wr[keep][:, None], (keep.size, m))
    else:
        Vr = w3[:, :, keep].sum(axis=1).T @ (Cm * Cm).astype(np.float32)  # (nk, m)
    full_S = np.zeros((keep.size, bw, bw // 2 + 1), np.complex64)
    full_S[:, yy, xx] = Sr
    rec = Reconstructor(bw, pad=1, kernel="trilinear")
    rec.insert_ft(full_S, R[keep])  # F += Σ K·S_r
    # per-pixel weights V_r deposited as the real data of a second pass (W = Σ K·V_r); the weights of
    # Reconstructor's ctf path are not used: they need one CTF per slice, and Σ K·V_r is all we need
    full_S[:] = 0
    full_S[:, yy, xx] = Vr
    rw = Reconstructor(bw, pad=1, kernel="trilinear")
    rw.insert_ft(full_S, R[keep])
    rec.W[...] = rw.F.real
    return rec.F, rec.W, ll, neff, resid
