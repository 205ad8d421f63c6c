"""Particle sets ``sets/<label>.lst`` (spec §3.3, e2spt_buildsets) and the even/odd split.

One LSX record per 3D particle: ``index <TAB> particles3d/<tomo>__<label>.hdf <TAB> {"class": 0|1}``.
With ``spliteo`` the gold-standard halves are a *spatial* split per tomogram: ``class = 1`` for the
half of the particles with the smallest x (EMAN: ``x < median + tiny jitter``). Ties at the median
are broken by particle order instead of a random jitter, so the split is reproducible: with ``n``
particles exactly ``n // 2`` get class 1. Without ``spliteo`` records carry no metadata and later
programs split by index parity (EMAN's default).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from emflow.io import LstEntry, write_lst

__all__ = ["spatial_split", "set_entries", "write_set"]


def spatial_split(x: Sequence[float]) -> np.ndarray:
    """Even/odd ``class`` (int64, (n,)) of the particles of one tomogram from their x coordinates.

    The ``n // 2`` particles with the smallest x get 1, the rest 0 (stable order for ties).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    cls = np.zeros(x.size, dtype=np.int64)
    cls[np.argsort(x, kind="stable")[: x.size // 2]] = 1
    return cls


def set_entries(groups: Iterable[tuple[str, Sequence[Sequence[float]]]], spliteo: bool = True) -> list[LstEntry]:
    """Records of a set built from several per-tomogram particle files.

    Parameters
    ----------
    groups : iterable of (path, coords)
        ``path`` of a ``particles3d/<tomo>__<label>.hdf`` file (as written into the .lst, relative
        to the project folder) and the coordinates ``(n, 3)`` of its particles in file order.
    spliteo : bool
        Add ``{"class": 0|1}`` from :func:`spatial_split` (per file = per tomogram).

    Returns
    -------
    list of LstEntry
    """
    entries = []
    for path, coords in groups:
        c = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
        cls = spatial_split(c[:, 0]) if spliteo else None
        for i in range(c.shape[0]):
            entries.append(LstEntry(i, os.fspath(path), {"class": int(cls[i])} if spliteo else {}))
    return entries


def write_set(path: str | os.PathLike, entries: Sequence[LstEntry]) -> None:
    """Write the set as an EMAN2 LSX ``.lst`` (atomically)."""
    write_lst(path, entries)
