"""EMAN2's ``refine`` 2D aligner (spec §5.2): Nelder–Mead on (α, tx, ty) from a given alignment.

Every pair runs its own simplex (initial steps 5°, 1 px, 1 px; stop when the simplex is smaller
than 0.04 step; one step of one pair is :func:`_nm_step`). The objective is any comparator of
:mod:`emflow.spa.cmp` with EMAN semantics:

* ``ccc``, ``dot`` and option-free ``sqeuclidean``: a numba real-space kernel (bilinear sampling
  of the moving image, sums against the target; no image is stored). Each pair's whole simplex
  runs inside one parallel kernel (:func:`refine_kernel`): about 47 evaluations per pair, with no
  Python round trip between them (the lockstep form below took one batched call per simplex move:
  at 4000 particles about 1000 calls, whose thread start-up and Python work cost as much as the
  objective on a loaded 2-core machine);
* everything else, in *lockstep*: each round every unfinished pair has one pending point, and the
  objective is evaluated for all of them in one batched call (:func:`nm_minimize`). The
  comparators ``frc``, ``phase``, ``sqeuclidean:normto=1``, …: the moving images are transformed
  (:func:`emflow.spa.align2d.transform_images`, zero outside, so EMAN's ``zeromask`` sees the same
  zero corners as EMAN's ``xform`` processor does) and scored with
  :func:`emflow.spa.cmp.compare` — batched FFTs and ring sums, the same code that scores the
  final alignment in simmx and class averaging, so refine never makes that score worse.

As in EMAN's ``refalifn`` the comparator's *image* is the transformed moving image and *with*
the target; ``snr`` (for ``snrweight``) is the particle's, whichever side it is on.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from emflow._numba import jit, pjit
from emflow.spa import align2d
from emflow.spa import cmp as cmpmod

#: Comparators with a real-space kernel, as ``kind`` codes of :func:`_objective`.
_KERNEL_KINDS = {"ccc": 0, "dot": 1, "sqeuclidean": 2}

#: Nelder–Mead phases (``state[:, 0]``): the pending point is a simplex vertex (INIT, SHRINK),
#: the reflected, expanded or contracted point, or there is none (DONE).
INIT, REFLECT, EXPAND, CONTRACT, SHRINK, DONE = range(6)
_STEPS = (5.0, 1.0, 1.0)  # EMAN's initial simplex steps: 5°, 1 px, 1 px
_PRECISION = 0.04  # stop when every vertex is within 0.04 step of the best


def kernel_kind(name: str, opts: dict) -> int | None:
    """Kind code of the real-space kernel for a parsed comparator, or ``None`` when the kernel
    does not implement it exactly (other comparators, ``negative=0``, sqeuclidean options)."""
    if name == "sqeuclidean" and (opts.get("normto") or opts.get("zeromask")):
        return None
    if opts.get("negative", 1) != 1:
        return None
    return _KERNEL_KINDS.get(name)


@jit
def _objective(moving, target, p, kind, normalize, s2, s22):  # pragma: no cover - numba
    """``ccc`` (0), ``dot`` (1) or ``sqeuclidean`` (2) of ``moving`` transformed by
    ``p = (α°, tx, ty)`` against ``target`` (both ``(ny, nx)``); lower is better.

    ``s2``, ``s22``: Σ target and Σ target² over the box (:func:`target_sums`). The moving image is
    sampled bilinearly at ``R(−α)·(x − t)`` (zero outside), the sample position advanced along each
    row; pixels that sample outside add nothing to the moving sums, so only the others are visited
    with their target value.
    """
    ny, nx = moving.shape
    cy, cx = ny // 2, nx // 2
    a = p[0] * math.pi / 180.0
    ca, sa = math.cos(a), math.sin(a)
    s1 = s11 = s12 = 0.0
    xmax, ymax = nx - 1.0, ny - 1.0
    for row in range(ny):
        y = float(row - cy) - p[2]
        x = float(-cx) - p[1]
        sx = ca * x + sa * y + cx
        sy = -sa * x + ca * y + cy
        trow = target[row]
        for col in range(nx):
            if 0.0 <= sx and sx < xmax and 0.0 <= sy and sy < ymax:
                x0, y0 = int(sx), int(sy)  # floor: both are ≥ 0 here
                fx, fy = sx - x0, sy - y0
                m0, m1 = moving[y0], moving[y0 + 1]
                v = ((1 - fy) * ((1 - fx) * m0[x0] + fx * m0[x0 + 1])
                     + fy * ((1 - fx) * m1[x0] + fx * m1[x0 + 1]))
                t = trow[col]
                s1 += v
                s11 += v * v
                s12 += v * t
            sx += ca
            sy -= sa
    npx = ny * nx
    if kind == 0:
        den = math.sqrt(max(s11 - s1 * s1 / npx, 0.0) * max(s22 - s2 * s2 / npx, 0.0))
        return -(s12 - s1 * s2 / npx) / den if den > 0 else 2.0
    if kind == 1:
        if normalize:
            den = math.sqrt(s11 * s22)
            return -s12 / den if den > 0 else 2.0
        return -s12 / npx
    return (s11 - 2 * s12 + s22) / npx


def target_sums(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ x and Σ x² of each image ``(n, ny, nx)`` (float64), the target terms of :func:`_objective`."""
    t = np.asarray(targets, np.float64).reshape(len(targets), -1)
    return t.sum(axis=1), (t * t).sum(axis=1)


@pjit
def _objective_batch(moving, targets, tsum, tsq, mi, ti, points, kind, normalize, out):  # pragma: no cover - numba
    """``out[j] = _objective(moving[mi[j]], targets[ti[j]], points[j])`` for all ``j`` (``tsum``, ``tsq``
    from :func:`target_sums`)."""
    for j in numba.prange(len(mi)):
        out[j] = _objective(moving[mi[j]], targets[ti[j]], points[j], kind, normalize, tsum[ti[j]], tsq[ti[j]])


@jit
def _begin_iteration(p, f, s, max_iter):  # pragma: no cover - numba
    """Sort the simplex, test convergence, else propose the reflected point (see :func:`nm_advance`)."""
    if s[2] >= max_iter:
        s[0] = DONE
        return
    order = np.argsort(f[:4])
    p[:4] = p[:4][order]
    f[:4] = f[:4][order]
    if max(abs(p[3, 0] - p[0, 0]) / _STEPS[0], abs(p[3, 1] - p[0, 1]) / _STEPS[1],
           abs(p[3, 2] - p[0, 2]) / _STEPS[2]) < _PRECISION:
        s[0] = DONE
        return
    p[4] = (p[0] + p[1] + p[2]) / 3.0
    p[5] = p[4] + (p[4] - p[3])
    p[6] = p[5]
    s[0] = REFLECT


@jit
def _nm_step(p, f, s, fn, max_iter):  # pragma: no cover - numba
    """One Nelder–Mead step of one pair given ``fn``, the objective at its pending point ``p[6]``
    (layout of ``p``, ``f``, ``s`` as in :func:`nm_advance`)."""
    phase = s[0]
    if phase == INIT:
        f[s[1]] = fn
        s[1] += 1
        if s[1] < 4:
            p[6] = p[s[1]]
        else:
            f[5] = f[0]
            _begin_iteration(p, f, s, max_iter)
    elif phase == REFLECT:
        if fn < f[0]:  # better than the best: try going twice as far
            f[4] = fn
            p[6] = p[4] + 2.0 * (p[4] - p[3])
            s[0] = EXPAND
        elif fn < f[2]:
            p[3], f[3] = p[5], fn
            s[2] += 1
            _begin_iteration(p, f, s, max_iter)
        else:
            p[6] = p[4] + 0.5 * (p[3] - p[4])
            s[0] = CONTRACT
    elif phase == EXPAND:
        if fn < f[4]:
            p[3], f[3] = p[6], fn
        else:
            p[3], f[3] = p[5], f[4]
        s[2] += 1
        _begin_iteration(p, f, s, max_iter)
    elif phase == CONTRACT:
        if fn < f[3]:
            p[3], f[3] = p[6], fn
            s[2] += 1
            _begin_iteration(p, f, s, max_iter)
        else:  # shrink every vertex halfway towards the best one
            s[0], s[1] = SHRINK, 1
            p[1] = p[0] + 0.5 * (p[1] - p[0])
            p[6] = p[1]
    elif phase == SHRINK:
        v = s[1]
        f[v] = fn
        s[1] = v + 1
        if v + 1 < 4:
            p[v + 1] = p[0] + 0.5 * (p[v + 1] - p[0])
            p[6] = p[v + 1]
        else:
            s[2] += 1
            _begin_iteration(p, f, s, max_iter)


@jit
def _nm_init(start, p, f, s):  # pragma: no cover - numba
    """Initial simplex at ``start`` (α°, tx, ty) with EMAN's steps; the pending point is vertex 0."""
    for v in range(4):
        p[v] = start
    for j in range(3):
        p[j + 1, j] += _STEPS[j]
    p[6] = start
    f[:] = 0.0
    s[:] = 0


@pjit
def nm_advance(pts, vals, state, idx, fnew, max_iter):  # pragma: no cover - numba
    """One Nelder–Mead step of pairs ``idx`` given ``fnew[j]``, the objective at their pending point.

    Per pair ``k``: ``pts[k]`` ``(7, 3)`` holds simplex vertices 0–3, the centroid (4), the
    reflected point (5) and the pending point (6), each ``(α°, tx, ty)``; ``vals[k]`` ``(6,)`` the
    vertex scores (0–3), the reflected score (4) and the start score (5); ``state[k]`` = (phase,
    vertex counter, iterations done). On return each pair has a new pending point or is DONE.
    """
    for j in numba.prange(len(idx)):
        k = idx[j]
        _nm_step(pts[k], vals[k], state[k], fnew[j], max_iter)


@pjit
def _nm_kernel(moving, targets, tsum, tsq, mi, ti, start, kind, normalize, max_iter, best, fbest, fstart,
               nevals):  # pragma: no cover - numba
    """Nelder–Mead of every pair to convergence in one call, with the real-space objective
    (:func:`_objective`): the same steps as the lockstep :func:`nm_minimize` (:func:`_nm_step`),
    so the same result, without one batched round trip per simplex move."""
    for k in numba.prange(len(mi)):
        p = np.empty((7, 3))
        f = np.empty(6)
        s = np.empty(3, np.int64)
        _nm_init(start[k], p, f, s)
        m, t = moving[mi[k]], targets[ti[k]]
        ne = 0
        while s[0] != DONE:
            fn = _objective(m, t, p[6], kind, normalize, tsum[ti[k]], tsq[ti[k]])
            ne += 1
            _nm_step(p, f, s, fn, max_iter)
        b = 0
        for v in range(1, 4):
            if f[v] < f[b]:
                b = v
        best[k] = p[b]
        fbest[k] = f[b]
        fstart[k] = f[5]
        nevals[k] = ne


def nm_minimize(objective, start: np.ndarray, max_iter: int):
    """Lockstep Nelder–Mead from ``start`` ``(n, 3)`` (α°, tx, ty).

    ``objective(idx, points)`` scores the pending ``points`` ``(m, 3)`` of pairs ``idx`` ``(m,)``
    (one batched call per round). Returns the best vertex ``(n, 3)``, its score ``(n,)`` and the
    score at ``start`` ``(n,)``.
    """
    n = len(start)
    pts = np.zeros((n, 7, 3))
    pts[:, :4] = start[:, None, :]
    for j in range(3):
        pts[:, j + 1, j] += _STEPS[j]
    pts[:, 6] = start
    vals = np.zeros((n, 6))
    state = np.zeros((n, 3), np.int64)
    while True:
        idx = np.nonzero(state[:, 0] != DONE)[0]
        if not len(idx):
            break
        fnew = np.asarray(objective(idx, pts[idx, 6]), np.float64)
        nm_advance(pts, vals, state, idx, fnew, int(max_iter))
    best = np.argmin(vals[:, :4], axis=1)
    rows = np.arange(n)
    return pts[rows, best], vals[rows, best], vals[:, 5]


def refine_kernel(moving, targets, mi, ti, start, kind: int, normalize: int, max_iter: int):
    """Nelder–Mead of pairs ``(moving[mi[k]], targets[ti[k]])`` from ``start`` ``(n, 3)`` (α°, tx, ty)
    with a real-space comparator (``kind`` of :func:`kernel_kind`), every pair run to convergence
    inside one parallel kernel. The same steps as :func:`nm_minimize` with :func:`_objective_batch`
    (tests/test_spa_align.py checks that the two agree exactly). Returns the best vertex ``(n, 3)``, its score
    ``(n,)``, the score at ``start`` ``(n,)`` and the objective evaluations per pair ``(n,)``.
    """
    n = len(mi)
    best, fbest, fstart = np.empty((n, 3)), np.empty(n), np.empty(n)
    nevals = np.zeros(n, np.int64)
    targets = np.ascontiguousarray(targets, np.float32)
    tsum, tsq = target_sums(targets)
    _nm_kernel(np.ascontiguousarray(moving, np.float32), targets, tsum, tsq, np.ascontiguousarray(mi, np.int64),
               np.ascontiguousarray(ti, np.int64), np.ascontiguousarray(start, np.float64), int(kind), int(normalize),
               int(max_iter), best, fbest, fstart, nevals)
    return best, fbest, fstart, nevals


def refine(moving, targets, mi, ti, init: dict, *, cmp="ccc", maxshift=None, max_iter=60, snr=None,
           apix=None, block=256):
    """EMAN ``refine`` of the 2D alignments ``init`` of pairs ``(moving[mi[k]], targets[ti[k]])``.

    Parameters
    ----------
    moving : (m, ny, nx) float32
    targets : (t, ny, nx) float32 or :class:`emflow.spa.align2d.PreparedTargets`
    mi, ti : (n,) int
    init : dict of (n,) arrays ``alpha`` (deg), ``tx``, ``ty`` (px), ``mirror`` (0/1), e.g. from
        :func:`emflow.spa.align2d.rotate_translate_flip`; the mirror flag is kept.
    cmp : comparator string (``"frc:zeromask=1:snrweight=1"``) or parsed ``(name, options)``.
    maxshift : px; solutions with ``|tx|`` or ``|ty|`` above it (default ``ny/4``), or scoring worse
        than the start, keep the start.
    snr : optional (n, ny//2) ring SNR of each pair's particle, or one (ny//2,) curve for all
        (``frc``/``phase`` ``snrweight``).
    apix : Å/px of these images (``minres``/``maxres`` band of ``frc``/``phase``).
    block : pairs refined together (bounds the memory of the batched comparator path).

    Returns
    -------
    dict like ``init``: ``alpha`` (deg, [0, 360)), ``tx``, ``ty``, ``mirror``, ``score`` (cmp, lower better).
    """
    name, opts = cmpmod.parse_cmp(cmp, "raligncmp") if isinstance(cmp, str) else cmp
    moving = np.ascontiguousarray(moving, np.float32)
    tgt = targets if isinstance(targets, align2d.PreparedTargets) else align2d.PreparedTargets(targets, True)
    maxshift = moving.shape[-2] / 4 if maxshift is None else float(maxshift)
    mi, ti = np.asarray(mi, np.int64), np.asarray(ti, np.int64)
    mirror = np.asarray(init["mirror"], np.float64) > 0.5
    start = np.stack([init["alpha"], init["tx"], init["ty"]], axis=1).astype(np.float64)
    if snr is not None:
        snr = np.broadcast_to(np.asarray(snr, np.float64), (len(mi), np.shape(snr)[-1]))
    kind = kernel_kind(name, opts)
    result, score = np.empty_like(start), np.empty(len(mi))
    if kind is not None:
        # T = M·(R, t): a mirrored pair refines (R, t) against the mirrored target instead
        stacked = np.concatenate([tgt.images, tgt.mirrored if tgt.flip else tgt.images])
        tsel = np.where(mirror, ti + len(tgt.images), ti)
        best, fbest, fstart, _ = refine_kernel(moving, stacked, mi, tsel, start, kind,
                                               int(opts.get("normalize", 0)), max_iter)
        ok = (np.abs(best[:, 1]) <= maxshift) & (np.abs(best[:, 2]) <= maxshift) & (fbest <= fstart)
        result[:] = np.where(ok[:, None], best, start)
        score[:] = np.where(ok, fbest, fstart)
    else:
        def objective(sel, idx, pts):
            k = np.arange(len(mi))[sel][idx]
            img = align2d.transform_images(moving, pts[:, 0], pts[:, 1], pts[:, 2], mirror[k], index=mi[k])
            return cmpmod.compare(img, tgt.images[ti[k]], (name, opts), snr=None if snr is None else snr[k],
                                  apix=apix)

        for s0 in range(0, len(mi), block):
            sel = slice(s0, min(len(mi), s0 + block))
            best, fbest, fstart = nm_minimize(lambda idx, pts: objective(sel, idx, pts), start[sel], max_iter)
            ok = (np.abs(best[:, 1]) <= maxshift) & (np.abs(best[:, 2]) <= maxshift) & (fbest <= fstart)
            result[sel] = np.where(ok[:, None], best, start[sel])
            score[sel] = np.where(ok, fbest, fstart)
    return {"alpha": result[:, 0] % 360.0, "tx": result[:, 1], "ty": result[:, 2],
            "mirror": mirror.astype(np.float64), "score": score}
