"""Classification of particles from a similarity matrix (EMAN ``e2classify``, spec §4.3).

``classmx`` layout (spec §6.4): a ``(7, n_ptcl, sep)`` float32 array (EMAN: 7 images of
``sep × n_ptcl``), planes ``class, weight, dx, dy, dalpha, mirror, scale``. A particle whose row
holds no computed entry (all ``+inf``) gets class −1 and weight 0.
"""

from __future__ import annotations

import numpy as np

from emflow.errors import InputError

CLASSMX_PLANES = ("class", "weight", "dx", "dy", "dalpha", "mirror", "scale")


def classify(simmx: np.ndarray, sep: int = 1) -> np.ndarray:
    """Assign every particle to its ``sep`` best projections.

    Each pass takes ``argmin`` of the score row, records the class and the alignment of that
    column, then replaces the entry by the row maximum so the next pass takes the next best
    (EMAN's rule, spec §4.3).

    Parameters
    ----------
    simmx : (6, n_ptcl, n_proj) float32
        Planes score, dx, dy, dalpha, mirror, scale (:mod:`emflow.spa.simmx`).
    sep : int
        Number of classes each particle contributes to (1 … n_proj).
    """
    simmx = np.asarray(simmx, np.float32)
    if simmx.ndim != 3 or simmx.shape[0] < 5:
        raise ValueError(f"simmx must be (6, n_ptcl, n_proj), got {simmx.shape}")
    npt, npr = simmx.shape[1:]
    if not 1 <= int(sep) <= npr:
        raise InputError(f"sep={sep} must be between 1 and the number of projections ({npr})", source="spa.sep")
    score = simmx[0].astype(np.float64).copy()
    rows = np.arange(npt)
    out = np.zeros((7, npt, int(sep)), np.float32)
    for s in range(int(sep)):  # sep is small (1–3); each pass is vectorised over particles
        best = np.argmin(score, axis=1)
        valid = np.isfinite(score[rows, best])
        out[0, :, s] = np.where(valid, best, -1)
        out[1, :, s] = valid
        for plane in range(1, 5):
            out[plane + 1, :, s] = np.where(valid, simmx[plane, rows, best], 0)
        out[6, :, s] = np.where(valid, simmx[5, rows, best] if simmx.shape[0] > 5 else 1.0, 0)
        # EMAN replaces the taken entry by the row maximum so the next pass takes the next best.
        # We remove it (+inf) instead: the same ranking, except that EMAN can re-pick a class
        # when every remaining entry equals the row maximum (e.g. one computed entry).
        score[rows, best] = np.inf
    return out


def class_members(classmx: np.ndarray, n_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened membership ``(particle_index, class_index)`` of all entries with weight > 0, sorted by class."""
    cls = np.asarray(classmx[0]).astype(np.int64)
    w = np.asarray(classmx[1])
    p, s = np.nonzero((w > 0) & (cls >= 0) & (cls < n_class))
    c = cls[p, s]
    order = np.lexsort((p, c))
    return p[order], c[order]
