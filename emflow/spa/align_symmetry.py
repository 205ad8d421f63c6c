"""Symmetry axes of a map built without symmetry (RELION's ``relion_align_symmetry`` idea).

An ab-initio map of a symmetric particle is best built in c1 and symmetrised afterwards (RELION 4's
initial-model advice; imposing the group on a random start can lock it into a wrong symmetric
blob). The map then sits at an arbitrary orientation; refinement imposes the group in its own frame
(EMAN's: the n-fold along z, a 2-fold of Dn along x; :func:`emflow.geometry.get_symmetry`). This
module finds the rotation ``Q`` that brings the map into that frame and symmetrises it.

Convention: ``rotate_volume(V, M)(r) = V(M⁻¹r)`` (:func:`emflow.rotate.rotate_volume`, column vectors
``(x, y, z)``); ``V`` is invariant under ``M`` when ``rotate_volume(V, M) = V``. ``U = rotate_volume(V, Q)``
is invariant under every group operator ``S`` exactly when ``V`` is invariant under ``Qᵀ S Q``, so
the score of ``Q`` is the mean correlation of ``V`` with ``rotate_volume(V, Qᵀ S Q)`` over ``S ≠ I``.
``Q`` and ``S·Q`` give the same score, so the search runs over the cosets ``G·Q``: the transposes of
the pose grid over SO(3)/G (:func:`emflow.spa.abinitio.pose_grid`), then a local refinement.
"""

from __future__ import annotations

import numba
import numpy as np

from emflow import fourier
from emflow._interp import trilinear
from emflow._numba import pjit
from emflow.geometry import get_symmetry, rotvec_to_matrix
from emflow.rotate import rotate_volume

__all__ = ["symmetry_frame", "symmetrize", "align_symmetry"]


def _ops(sym: str) -> np.ndarray:
    return np.asarray(get_symmetry(sym).reconstruction_matrices, np.float64)


@pjit
def _self_correlations(v, M, out):
    """``out[m] = Σ_r v(r)·v(M[m]ᵀ r)`` (trilinear, zero outside; ``r`` about ``n//2``, ``(x, y, z)`` order),
    i.e. the dot product of ``v`` with ``rotate_volume(v, M[m])``. ``v`` (n, n, n) float32, ``M`` (m, 3, 3)."""
    n = v.shape[0]
    c = n // 2
    for m in numba.prange(M.shape[0]):
        R = M[m]
        s = 0.0
        for z in range(n):
            rz = z - c
            for y in range(n):
                ry = y - c
                bx = R[1, 0] * ry + R[2, 0] * rz + c
                by = R[1, 1] * ry + R[2, 1] * rz + c
                bz = R[1, 2] * ry + R[2, 2] * rz + c
                for x in range(n):
                    vv = v[z, y, x]
                    if vv == 0.0:
                        continue
                    rx = x - c
                    px = R[0, 0] * rx + bx
                    py = R[0, 1] * rx + by
                    pz = R[0, 2] * rx + bz
                    if px < -1.0 or py < -1.0 or pz < -1.0 or px >= n or py >= n or pz >= n:
                        continue
                    s += vv * trilinear(v, px, py, pz)
        out[m] = s


def _scores(v: np.ndarray, cands: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """Mean correlation ``(len(cands),)`` of ``v`` (zero-mean, unit-norm) with its copies under ``Qᵀ S Q``,
    ``S ≠ I``, for every candidate ``Q``."""
    M = np.einsum("qji,sjk,qkl->qsil", cands, ops[1:], cands).reshape(-1, 3, 3)
    out = np.empty(len(M))
    _self_correlations(v, np.ascontiguousarray(M), out)
    return out.reshape(len(cands), len(ops) - 1).mean(axis=1)


def _local_rotations(step_deg: float, nstep: int) -> np.ndarray:
    """Small rotations ``(m, 3, 3)``: rotation vectors on a cubic grid of ``±nstep·step_deg`` degrees
    (:func:`emflow.geometry.rotvec_to_matrix`), identity first."""
    a = step_deg * np.arange(-nstep, nstep + 1)
    v = np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)
    v = v[np.argsort(np.linalg.norm(v, axis=1), kind="stable")]
    return np.stack([rotvec_to_matrix(w) for w in v])


def symmetry_frame(vol: np.ndarray, sym: str, coarse_deg: float = 10.0, search_box: int = 24
                   ) -> tuple[np.ndarray, float]:
    """Rotation ``Q`` (3, 3) such that ``rotate_volume(vol, Q)`` is closest to invariant under ``sym``, and its
    score (mean correlation with the symmetry copies, 1 = exactly symmetric).

    ``vol`` ``(n, n, n)`` centred on ``n//2`` (the symmetry axes pass through the centre; centre the map on
    its centre of mass first), best low-passed to the resolution it is trusted at. Coarse search over
    SO(3)/G at ``coarse_deg``, then local grids at 1/3 and 1/9 of it, on the map Fourier-cropped to
    ``search_box`` (a 10° search needs no finer sampling). c1: the identity.
    """
    ops = _ops(sym)
    if len(ops) == 1:
        return np.eye(3), 1.0
    from emflow.spa.abinitio import pose_grid

    v = np.asarray(vol, np.float32)
    if v.shape[0] > search_box:
        v = fourier.fourier_crop(v, search_box)
    v = v - np.float32(v.mean())
    v = np.ascontiguousarray(v / np.float32(np.linalg.norm(v) or 1.0), np.float32)
    cands = np.ascontiguousarray(np.transpose(pose_grid(coarse_deg, sym), (0, 2, 1)))
    scores = _scores(v, cands, ops)
    best, score = cands[int(np.argmax(scores))], float(scores.max())
    for step in (coarse_deg / 3.0, coarse_deg / 9.0):
        trial = _local_rotations(step, 2) @ best
        sc = _scores(v, trial, ops)
        if sc.max() > score:
            best, score = trial[int(np.argmax(sc))], float(sc.max())
    return best, score


def symmetrize(vol: np.ndarray, sym: str) -> np.ndarray:
    """Average of ``vol`` over the group's operators (float32; ``vol`` in the group's frame)."""
    ops = _ops(sym)
    v = np.asarray(vol, np.float32)
    out = v.copy()
    buf = np.empty_like(v)
    for S in ops[1:]:
        out += rotate_volume(v, S, out=buf)
    return out / np.float32(len(ops))


def align_symmetry(vol: np.ndarray, sym: str, coarse_deg: float = 10.0) -> tuple[np.ndarray, float]:
    """``vol`` rotated into the frame of ``sym`` (:func:`symmetry_frame`) and symmetrised; returns the map and
    the frame's score (before symmetrisation)."""
    Q, score = symmetry_frame(vol, sym, coarse_deg)
    return symmetrize(rotate_volume(vol, Q), sym), score
