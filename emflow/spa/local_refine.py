"""Local refinement of single-particle poses with marginalisation over the poses (RELION auto-refine's local
searches, Scheres 2012 J. Struct. Biol. 180:519), after the e2refine iterations of the gold standard.

Why: the 2012 e2refine scheme gives every particle one class (a projection on the ``orientgen`` grid) at full
weight. At SNR ≈ 0.08 the FRC score cannot tell neighbouring views apart, and that hard assignment blurs the map
by the angular error of the particles placed near their view (benchmarks/spa_c1_accuracy.py: median 3.3–4.8°
against the true map itself; the refinement stops near 3.6 px at FSC 0.5 where the true poses give 2.3 px).
Here every particle is compared with the reference at a local grid of rotations and shifts around its current
pose, with the Gaussian log-likelihood of its Fourier pixels, and inserted at each of them with its posterior
weight: the map is the expectation over the poses the data allow instead of one guess.

One iteration of one half (:func:`refine_half`):

1. **Scale and noise** at the current poses (one projection per particle): the reference's scale ``a`` (least
   squares of the particles on their CTF-weighted projections over the rings used) and the noise power per
   ring ``σ²(|k|)`` (mean residual power ``|X − a·c·P|²``).
2. **Local poses**: rotations ``R_i·ΔR_j`` with ``ΔR_j`` the rotation vectors of a cubic grid of step ``δ`` within
   ``radius_steps·δ`` (``J = 123`` rotations at ``radius_steps = 3``), × shifts ``t_i + Δt_k`` on a square grid of
   step ``δ_t`` within a disc of ``shift_px`` (``K = 13`` at ``shift_px = 2·δ_t``).
3. **E-step**: ``L_ijk = Σ_k h_k/σ²_k · [Re(conj(X_i·e^{2πi k·t_ik})·c_ik·a·P_ijk) − ½·c_ik²·a²·|P_ijk|²]`` on the
   half-plane pixels ``1 ≤ |k|·b ≤ k_max`` (``h``: 2 for ``kx > 0``, 1 on ``kx = 0``); two batched BLAS products per
   block of particles; posterior ``w_ijk = softmax(L_i··)``.
4. **M-step**: each particle inserted (:class:`emflow.reconstruct.Reconstructor`, pad 2, CTF-weighted:
   ``F += w·|CTF|·X``, ``W += w·CTF²``) at every rotation with ``w_ij = Σ_k w_ijk ≥ min_weight·max_j w_ij``, at the
   posterior-mean shift of that rotation ``Σ_k w_ijk t_ik / w_ij``; the new centre of the local grid is the
   maximum-a-posteriori pose.

The caller (:func:`emflow.spa.gold.run_local`) refines both halves against their own references, measures the
gold-standard FSC between the half maps, weights each half's next reference by ``C_ref`` and narrows the step.

Conventions
-----------
* Particles ``(n, b, b)`` ``[y, x]``: protein white, phase-flipped (``c = |CTF|``) or CTF-free (``c = 1``).
* Poses: ``xform.projection`` rotations ``R`` (:func:`emflow.geometry.eman_to_matrix`; slice pixel ``k`` samples
  the map's FT at ``Rᵀ(kx, ky, 0)``) and shifts ``t = (tx, ty)`` px: the particle is the projection moved by ``+t``
  (:meth:`emflow.projection.VolumeProjector.slices_ft` ``shifts``). :func:`poses_from_classes` turns the e2refine
  result (class projection + 2D alignment) into these.
* The reference is in the particles' units up to the fitted scale ``a``; maps ``[z, y, x]`` float32.

Speed: per particle ``J`` slices of ``m`` pixels (trilinear) and ``2·K·m·J + m·J`` multiply–adds (BLAS), and the
insertion of the rotations with weight; particles in blocks of bounded memory, no Python loop over particles.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from emflow import fourier
from emflow.projection import VolumeProjector
from emflow.reconstruct import Reconstructor

__all__ = ["LocalParams", "LocalHalfResult", "local_rotations", "local_shifts", "poses_from_classes", "refine_half"]

#: bytes of the complex slices of one block of particles (E-step working memory)
BLOCK_BYTES = 64 * 2**20
#: outermost ring of the global search's likelihood, as a fraction of the box (22 rings at box 64: its 7.5° and 5°
#: grids placed 96 % and 100 % of the particles within 30° of their true view on the 80S benchmark)
GLOBAL_KMAX_FRACTION = 0.35


@dataclasses.dataclass
class LocalParams:
    """Parameters of the local refinement (config ``spa.local``).

    Attributes
    ----------
    iterations : int
        Local iterations after the e2refine iterations (0: none; in-process callers that give no ``local``
        section get none, the workflow's default is config/config.yaml's).
    step_deg : float
        Angular step of the first local iteration (degrees); each next iteration multiplies it by ``narrow``
        down to ``min_step_deg``.
    radius_steps : int
        Search radius in steps (``radius_steps·step``): 3 gives 123 rotations per particle.
    shift_step_px : float
        Shift step of the first local iteration (px); narrows with the angular step.
    shift_px : float
        Shift search radius around the current shift in units of the shift step × 2 (``2·shift_step_px``).
    narrow, min_step_deg : float
        Step factor per iteration and the smallest step.
    min_weight : float
        Rotations inserted: posterior weight ≥ ``min_weight`` × the particle's largest.
    global_deg : list of float
        Grid steps (deg) of a global search over SO(3)/G before the local search, one per local iteration from the
        first (``[7.5, 5]``: the first two iterations); ``[]``: local searches only.
    keep : float
        Fraction of each half's particles inserted: those that fit their reference best (:class:`LocalHalfResult`
        ``fit``); 1: all.
    """

    iterations: int = 0
    step_deg: float = 2.0
    radius_steps: int = 3
    shift_step_px: float = 0.5
    narrow: float = 0.6
    min_step_deg: float = 0.5
    min_weight: float = 1e-3
    global_deg: list[float] = dataclasses.field(default_factory=lambda: [7.5, 5.0])
    keep: float = 1.0

    def check(self) -> None:
        """Raise :class:`emflow.errors.InputError` (source ``spa.local.<key>``) on an invalid value."""
        from emflow.errors import InputError

        bad = [k for k, ok in (
            ("iterations", 0 <= self.iterations <= 20), ("step_deg", 0.1 <= self.step_deg <= 10),
            ("radius_steps", 1 <= self.radius_steps <= 5), ("shift_step_px", 0.05 <= self.shift_step_px <= 2),
            ("narrow", 0.2 <= self.narrow <= 1), ("min_step_deg", 0.05 <= self.min_step_deg <= self.step_deg),
            ("min_weight", 0 <= self.min_weight < 1), ("keep", 0.1 <= self.keep <= 1),
            ("global_deg", all(2 <= d <= 30 for d in self.global_deg))) if not ok]
        if bad:
            raise InputError(f"invalid local-refinement parameter {bad[0]} = {getattr(self, bad[0])!r}",
                             source=f"spa.local.{bad[0]}",
                             fix="see config/schema.yaml (section spa.local) for the allowed range")

    def global_step(self, k: int) -> float:
        """Global-search grid step (deg) of 0-based local iteration ``k``; 0: none."""
        return float(self.global_deg[k]) if k < len(self.global_deg) else 0.0

    def step(self, k: int) -> tuple[float, float]:
        """``(angular step deg, shift step px)`` of 0-based local iteration ``k``."""
        f = max(self.narrow ** k, self.min_step_deg / self.step_deg)
        return self.step_deg * f, self.shift_step_px * f


@dataclasses.dataclass
class LocalHalfResult:
    """One local iteration of one half (:func:`refine_half`).

    Attributes
    ----------
    map : ndarray, float32, (b, b, b)
        The reconstruction from the posterior-weighted particles.
    rotations, shifts : ndarray, float64, (n, 3, 3) and (n, 2)
        The maximum-a-posteriori pose of every particle (the next iteration's grid centre).
    fit : ndarray, float64, (n,)
        Each particle's fit to the reference at its best pose in noise units, ``Σ w·Re(X̄·c·P) / sqrt(Σ w·c²·|P|²)``
        (``w = h/σ²``; about N(0, 1) for a particle that holds none of the reference's signal).
    stats : dict
        ``scale`` (reference scale), ``kmax_px``, ``n_rot``/``n_shift`` (grid sizes), ``inserted_per_particle``
        (mean rotations inserted), ``max_posterior`` (mean largest ``w_ijk``), ``moved_deg`` (median angle
        between the old and the new MAP rotation), ``moved_px`` (median shift change).
    """

    map: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    fit: np.ndarray
    stats: dict


# ----------------------------------------------------------------------------- poses
def poses_from_classes(result: np.ndarray, class_rotations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle poses from an e2classaverage result.

    ``result`` ``(7, n, sep)``: the ``cls_result`` of :func:`emflow.spa.classaverage.class_average` (plane 0
    the class, planes 2–5 the particle→average transform ``(tx, ty, alpha, mirror)`` of
    :mod:`emflow.spa.align2d`); the first ``sep`` column (the best class) is used. ``class_rotations``
    ``(n_class, 3, 3)``: the classes' projection rotations.

    The aligned particle ``I(T⁻¹x)`` is the class projection ``P_c(x)``, so ``I(y) = P_c(A·y + a)`` with
    ``T = (A, a)``, ``A = M·R(α)``. With ``A₃ = diag(A, det A)`` (a proper rotation; ``det A = −1`` for a
    mirror: the view from the other side) ``P_c(A·y + a) = ∫V(R_cᵀ·A₃·(y + A⁻¹a, z))dz``: the projection of the
    map at ``R = A₃ᵀ·R_c`` moved by ``t = −A⁻¹·a``. Returns ``(R (n, 3, 3), t (n, 2))`` float64.
    """
    from emflow.spa.align2d import transform_matrix

    res = np.asarray(result, np.float64)[:, :, 0]
    cls = res[0].astype(np.int64)
    T = transform_matrix(res[4], res[2], res[3], res[5])  # (n, 3, 3) homogeneous
    A, a = T[:, :2, :2], T[:, :2, 2]
    A3 = np.zeros((len(cls), 3, 3))
    A3[:, :2, :2] = A
    A3[:, 2, 2] = np.linalg.det(A)
    R = np.einsum("nji,njk->nik", A3, np.asarray(class_rotations, np.float64)[cls])
    t = -np.einsum("nji,nj->ni", A, a)  # A orthogonal: A⁻¹ = Aᵀ
    return R, t


def local_rotations(step_deg: float, radius_steps: int = 3) -> np.ndarray:
    """Small rotations ``(J, 3, 3)`` float64: rotation vectors of the cubic grid of step ``step_deg`` within
    ``radius_steps`` steps (identity first)."""
    from scipy.spatial.transform import Rotation

    r = int(radius_steps)
    g = np.arange(-r, r + 1)
    v = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    v = v[(v * v).sum(1) <= r * r + 1e-9]
    v = v[np.argsort((v * v).sum(1), kind="stable")]
    return Rotation.from_rotvec(np.radians(step_deg) * v).as_matrix()


def local_shifts(step_px: float, radius_px: float | None = None) -> np.ndarray:
    """Shifts ``(K, 2)`` on the square grid of step ``step_px`` within a disc of ``radius_px`` (default two
    steps), ``(0, 0)`` first."""
    radius_px = 2 * step_px if radius_px is None else radius_px
    r = int(np.floor(radius_px / step_px + 1e-9))
    g = np.arange(-r, r + 1) * step_px
    t = np.stack(np.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    t = t[np.hypot(t[:, 0], t[:, 1]) <= radius_px + 1e-9]
    return t[np.argsort(np.hypot(t[:, 0], t[:, 1]), kind="stable")]


# ----------------------------------------------------------------------------- one half, one iteration
def refine_half(reference: np.ndarray, particles: np.ndarray, rotations: np.ndarray, shifts: np.ndarray, *,
                step_deg: float, shift_step_px: float, kmax_px: float, ctfs=None, apix: float | None = None,
                radius_steps: int = 3, min_weight: float = 1e-3, sym: str = "c1", global_deg: float = 0.0,
                keep: float = 1.0) -> LocalHalfResult:
    """One local iteration of one half (module docstring).

    Parameters
    ----------
    reference : ndarray, float32, (b, b, b)
        The half's reference (masked, filtered by its FSC weight).
    particles : ndarray, float32, (n, b, b)
        The half's particles (protein white, phase-flipped or CTF-free).
    rotations, shifts : ndarray, (n, 3, 3) and (n, 2)
        Current poses (grid centres).
    step_deg, shift_step_px : float
        Local grid steps (:func:`local_rotations`, :func:`local_shifts`).
    kmax_px : float
        Outermost Fourier ring (px of the ``b`` box) the likelihood uses.
    ctfs : list of :class:`emflow.ctf.CTF`, optional
        The particles' CTFs (``|CTF|`` is evaluated per block on the box's and on the padded insertion grid, at
        ``apix`` Å/px); None: CTF-free particles.
    sym : str
        Point group of the reconstruction (and of the global grid).
    global_deg : float
        > 0: first a global search (:func:`_global_search`) on a grid of this step over SO(3)/G.
    keep : float
        Fraction of the particles inserted: those of the largest ``fit`` (:class:`LocalHalfResult`).
    """
    X_all = np.asarray(particles, np.float32)
    n, b = X_all.shape[0], X_all.shape[-1]
    R0, t0 = np.asarray(rotations, np.float64), np.asarray(shifts, np.float64)
    dR, dT = local_rotations(step_deg, radius_steps), local_shifts(shift_step_px)
    J, K = len(dR), len(dT)
    proj = VolumeProjector(np.asarray(reference, np.float32), pad=2)
    ring = np.rint(fourier.radius_grid((b, b)) * b).astype(np.int64)
    kmax_px = float(min(kmax_px, b / 2 - 1))
    yy, xx = np.nonzero((ring >= 1) & (ring <= kmax_px))
    m = yy.size
    h = np.where(xx == 0, 1.0, 2.0)
    ky, kx = fourier.freq_grid((b, b))
    kxm, kym = kx[0, xx].astype(np.float64), ky[yy, 0].astype(np.float64)
    rk = ring[yy, xx]
    nring = int(rk.max()) + 1
    block = max(1, min(n, int(BLOCK_BYTES // max(1, J * b * (b // 2 + 1) * 8))))

    if ctfs is not None and apix is None:
        raise ValueError("refine_half: ctfs need apix")

    def ctf_abs(rows, size: int) -> np.ndarray | None:
        """``|CTF|`` ``(B, size, size//2+1)`` float32 of particle rows (None: CTF-free)."""
        from emflow.ctf import ctf_2d_stack

        return None if ctfs is None else np.abs(ctf_2d_stack([ctfs[i] for i in rows], (size, size), apix))

    def data(rows):
        """``(X at the pixels (B, m) complex64, c (B, m) float32)`` of particle rows."""
        X = fourier.ft(X_all[rows], axes=(-2, -1))[:, yy, xx]
        c = ctf_abs(rows, b)
        c = np.ones((len(rows), m), np.float32) if c is None else c[:, yy, xx]
        return X.astype(np.complex64), c.astype(np.float32)

    def moved_back(X, t, sub=slice(None)):
        """``X·exp(+2πi k·t)`` (the particle moved by ``−t``): ``X`` ``(B, m)`` (or given at the pixels ``sub``
        only), ``t`` ``(B, K, 2)`` → ``(B, K, m)``."""
        ph = 2 * np.pi * (t[..., 0, None] * kxm[sub] + t[..., 1, None] * kym[sub])
        return X[:, None, :] * np.exp(1j * ph).astype(np.complex64)

    def noise_model(R, t):
        """``(a, h/σ² (m,) float32)``: the reference's least-squares scale and the likelihood weights, from the
        residual power ``|X − a·c·P|²`` per ring of every particle at the poses ``(R, t)`` (one projection per
        particle)."""
        xx_r, xp_r, pp_r = np.zeros(nring), np.zeros(nring), np.zeros(nring)
        pre = max(1, int(BLOCK_BYTES // (b * (b // 2 + 1) * 8)))
        for a0 in range(0, n, pre):
            rows = np.arange(a0, min(n, a0 + pre))
            X, c = data(rows)
            P = proj.slices_ft(R[rows], size=b)[:, yy, xx] * c
            Xb = moved_back(X, t[rows][:, None, :])[:, 0]
            xx_r += np.bincount(rk, (np.abs(Xb) ** 2).sum(0), nring)
            xp_r += np.bincount(rk, (Xb.real * P.real + Xb.imag * P.imag).sum(0), nring)
            pp_r += np.bincount(rk, (np.abs(P) ** 2).sum(0), nring)
        a = float(xp_r.sum() / pp_r.sum()) if pp_r.sum() > 0 and xp_r.sum() > 0 else 1.0
        sig2 = (xx_r - 2 * a * xp_r + a ** 2 * pp_r) / np.maximum(np.bincount(rk, minlength=nring) * n, 1)
        return a, (h / np.maximum(sig2[rk], 1e-30 + 1e-6 * sig2.max())).astype(np.float32)

    # 1. scale of the reference and noise power per ring at the current poses
    scale, wk = noise_model(R0, t0)
    n_global = 0
    if global_deg > 0:  # 1b. every particle's best pose on a grid over SO(3)/G, kept where it beats the current one
        # its likelihood stops at GLOBAL_KMAX_FRACTION·b: a coarse grid cannot use finer detail, which only costs
        sub = rk <= GLOBAL_KMAX_FRACTION * b
        R0, t0, n_global = _global_search(lambda R: proj.slices_ft(R, size=b)[:, yy[sub], xx[sub]] * np.float32(scale),
                                          lambda rows: tuple(v[:, sub] for v in data(rows)),
                                          lambda X, t: moved_back(X, t, sub), R0, t0, wk[sub],
                                          b * (b // 2 + 1), global_deg, sym)
        scale, wk = noise_model(R0, t0)

    # 2–3. E-step per block: posterior over (shift, rotation), kept compactly as the rotations with weight
    R_new, t_new = R0.copy(), t0.copy()
    pmax, fit = np.zeros(n), np.zeros(n)
    pairs = []  # per block: (particle index, rotation, weight, posterior-mean shift) of every rotation kept
    for a0 in range(0, n, block):
        rows = np.arange(a0, min(n, a0 + block))
        B = len(rows)
        X, c = data(rows)
        Rc = np.einsum("jik,bkl->bjil", dR, R0[rows])  # (B, J, 3, 3): ΔR_j·R_i
        S = proj.slices_ft(Rc.reshape(-1, 3, 3), size=b)[:, yy, xx].reshape(B, J, m) * np.float32(scale)
        P = np.empty((B, J, 2 * m), np.float32)  # [Re S, Im S], C-contiguous (concatenate of the views is not)
        P[..., :m], P[..., m:] = S.real, S.imag
        tk = t0[rows][:, None, :] + dT[None]  # (B, K, 2)
        Xs = moved_back(X, tk)  # (B, K, m)
        cw = c * wk
        A = np.concatenate([Xs.real * cw[:, None], Xs.imag * cw[:, None]], axis=2)  # (B, K, 2m) float32
        # batched products as einsum (measured 6× faster than np.matmul on these small (K × 2m)·(2m × J) stacks)
        cross = np.einsum("bkm,bjm->bkj", A, P, optimize=True)  # (B, K, J)
        power = np.einsum("bm,bjm->bj", c * cw, S.real ** 2 + S.imag ** 2, optimize=True)  # (B, J)
        L = (cross - 0.5 * power[:, None, :]).reshape(B, K * J).astype(np.float64)
        best = np.argmax(L, axis=1)
        bk, bj = best // J, best % J
        # the fit at the best pose in noise units (≈ N(0, 1) for a particle that holds no signal of the reference)
        fit[rows] = cross[np.arange(B), bk, bj] / np.sqrt(np.maximum(power[np.arange(B), bj], 1e-30))
        L -= L[np.arange(B), best][:, None]
        w = np.exp(L)
        w /= w.sum(axis=1, keepdims=True)
        pmax[rows] = w[np.arange(B), best]
        R_new[rows] = Rc[np.arange(B), bj]
        t_new[rows] = tk[np.arange(B), bk]
        w3 = w.reshape(B, K, J)
        wj = w3.sum(axis=1)  # (B, J)
        tbar = np.einsum("bkj,bkd->bjd", w3, tk) / np.maximum(wj, 1e-300)[..., None]  # (B, J, 2)
        kb, kj = np.nonzero(wj >= min_weight * wj.max(axis=1, keepdims=True))
        pairs.append((rows[kb], Rc[kb, kj], wj[kb, kj], tbar[kb, kj]))

    # 4. M-step: the particles (the best-fitting ``keep`` fraction) at every kept rotation, CTF-weighted
    use = np.ones(n, bool) if keep >= 1 else fit >= np.quantile(fit, 1.0 - keep)
    rec = Reconstructor(b, pad=2, kernel="trilinear", sym=sym)
    N = rec.n_pad
    pi = np.concatenate([p[0] for p in pairs])
    sel = use[pi]
    pi, pR = pi[sel], np.concatenate([p[1] for p in pairs])[sel]
    pw, pt = np.concatenate([p[2] for p in pairs])[sel], np.concatenate([p[3] for p in pairs])[sel]
    for a0 in range(0, n, block):
        rows = np.arange(a0, min(n, a0 + block))
        lo, hi = np.searchsorted(pi, [a0, rows[-1] + 1])
        if hi == lo:
            continue
        X2 = rec.slices_from_images(X_all[rows])  # (B, N, N//2+1)
        c2 = ctf_abs(rows, N)
        for p0 in range(lo, hi, 4 * len(rows)):  # bounded gathered copies
            p1 = min(hi, p0 + 4 * len(rows))
            loc = pi[p0:p1] - a0
            rec.insert_ft(X2[loc], pR[p0:p1], weights=pw[p0:p1], shifts=pt[p0:p1], ctf=None if c2 is None else c2[loc])
    vol = rec.finish()
    cosang = np.clip((np.einsum("nij,nij->n", R0, R_new) - 1) / 2, -1, 1)
    stats = {"scale": scale, "global_moved": n_global, "kmax_px": kmax_px, "n_rot": J, "n_shift": K,
             "step_deg": step_deg, "shift_step_px": shift_step_px, "inserted_per_particle": len(pi) / max(int(use.sum()), 1),
             "kept": float(use.mean()), "max_posterior": float(pmax.mean()),
             "moved_deg": float(np.median(np.degrees(np.arccos(cosang)))),
             "moved_px": float(np.median(np.hypot(*(t_new - t0).T)))}
    return LocalHalfResult(map=vol, rotations=R_new, shifts=t_new, fit=fit, stats=stats)


def _global_search(slices, data, moved_back, R0: np.ndarray, t0: np.ndarray, wk: np.ndarray, n_pix: int,
                   delta_deg: float, sym: str, shift_px: float = 1.0, centre_px: float = 2.0):
    """Each particle's maximum-likelihood pose on :func:`emflow.spa.abinitio.pose_grid` ``(delta_deg, sym)`` × the
    integer shifts within ``shift_px`` of its current shift and within ``centre_px`` of the box centre (a wrong view
    often came with a wrong shift), taken where its log-likelihood beats the current pose's. ``slices(R)``: the
    scaled reference slices ``(len(R), m)`` at the likelihood's pixels; ``data(rows)`` and ``moved_back`` as in
    :func:`refine_half`; ``n_pix``: pixels of one full slice (memory sizing).

    Rotations go in chunks whose slices serve every particle block (BLAS products ``(B·K × 2m)·(2m × chunk)``)
    and each particle keeps a running best: memory bounded by the chunk and the block. Returns ``(R, t, n_moved)``."""
    from emflow.spa.abinitio import pose_grid, shift_grid

    Rg = pose_grid(delta_deg, sym)
    near, centre = shift_grid(shift_px), shift_grid(centre_px)
    n, K, m = len(R0), len(near) + len(centre), wk.size
    T = np.concatenate([t0[:, None, :] + near[None], np.broadcast_to(centre, (n,) + centre.shape)], axis=1)
    blk = max(1, min(n, int(BLOCK_BYTES // max(1, K * m * 16))))
    chunk = max(1, int(BLOCK_BYTES // (n_pix * 8)))
    best = np.full(n, -np.inf)
    best_r = np.zeros(n, np.int64)
    best_k = np.zeros(n, np.int64)
    prepared = []
    for a0 in range(0, n, blk):  # per particle block: weighted shifted data and the current pose's log-likelihood
        rows = np.arange(a0, min(n, a0 + blk))
        X, c = data(rows)
        cw = c * wk
        Xs = moved_back(X, T[rows])  # (B, K, m)
        A = np.empty((len(rows), K, 2 * m), np.float32)
        A[..., :m], A[..., m:] = Xs.real * cw[:, None], Xs.imag * cw[:, None]
        S = slices(R0[rows])
        cur = (A[:, 0, :m] * S.real + A[:, 0, m:] * S.imag).sum(1) - 0.5 * (c * cw * (S.real ** 2 + S.imag ** 2)).sum(1)
        best[rows] = cur
        prepared.append((rows, A.reshape(-1, 2 * m), (c * cw).astype(np.float32)))
    current = best.copy()
    for r0 in range(0, len(Rg), chunk):
        S = slices(Rg[r0:r0 + chunk])  # (nr, m)
        P = np.empty((len(S), 2 * m), np.float32)
        P[:, :m], P[:, m:] = S.real, S.imag
        P2 = (S.real ** 2 + S.imag ** 2).astype(np.float32)
        for rows, A, c2w in prepared:
            L = (A @ P.T).reshape(len(rows), K, len(S)) - 0.5 * (c2w @ P2.T)[:, None, :]
            L = L.reshape(len(rows), -1)
            j = np.argmax(L, axis=1)
            v = L[np.arange(len(rows)), j]
            better = v > best[rows]
            best[rows[better]] = v[better]
            best_k[rows[better]] = j[better] // len(S)
            best_r[rows[better]] = r0 + j[better] % len(S)
    moved = best > current
    R, t = R0.copy(), t0.copy()
    R[moved] = Rg[best_r[moved]]
    t[moved] = T[moved, best_k[moved]]
    return R, t, int(moved.sum())
