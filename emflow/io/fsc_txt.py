"""EMAN2 FSC curve text files (spec §6.3): two tab-separated columns, spatial frequency (1/Å)
and FSC, after the header line ``#Spatial Freq (1/A); FSC``.

The one frequency convention of every ``fsc_*.txt`` emflow writes (:func:`write_fsc_curve`): one row
per shell ``r = 1 … nx/2`` of the :class:`emflow.fsc.FSCCurve` (no DC row), frequency ``r / (nx·apix)``
in 1/Å (``curve.freq / apix``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from emflow.errors import InputError
from emflow.io._atomic import atomic_write
from emflow.io._text import read_numeric_rows

if TYPE_CHECKING:  # not imported at run time: emflow.io stays free of numba imports
    from emflow.fsc import FSCCurve

FSC_HEADER = "#Spatial Freq (1/A); FSC"


def write_fsc_curve(path: str | os.PathLike, curve: FSCCurve, apix: float) -> None:
    """Write an :class:`emflow.fsc.FSCCurve` in the one convention of emflow's ``fsc_*.txt`` files.

    Rows: every shell of the curve, ``r = 1 … nx/2`` (the DC term is not a shell, so there is no
    row for it), in order; first column the spatial frequency ``r / (nx·apix)`` in 1/Å
    (``curve.freq / apix``), second the FSC (spec §6.3).
    """
    if not apix > 0:
        raise ValueError(f"write_fsc_curve: apix must be > 0, got {apix}")
    write_fsc_txt(path, curve.freq / float(apix), curve.fsc)


def write_fsc_txt(path: str | os.PathLike, freq_inv_a, fsc) -> None:
    """Write an FSC curve (atomically).

    Parameters
    ----------
    freq_inv_a : array_like (n,)
        Spatial frequency in 1/Å (row r of a box n: ``r / (n * apix)``). Write FSC curves with
        :func:`write_fsc_curve`, which fixes the rows (shells ``r = 1 … n/2``).
    fsc : array_like (n,)
    """
    freq = np.asarray(freq_inv_a, dtype=np.float64).ravel()
    fsc = np.asarray(fsc, dtype=np.float64).ravel()
    if freq.shape != fsc.shape:
        raise ValueError(f"freq_inv_a has {freq.size} values, fsc {fsc.size}")
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        f.write(FSC_HEADER + "\n")
        f.write("".join(f"{a:.6g}\t{b:.6f}\n" for a, b in zip(freq, fsc)))


def read_fsc_txt(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an FSC text file -> ``(freq_inv_a, fsc)``, float64 ``(n,)`` each."""
    rows, lines = read_numeric_rows(path, "FSC text file", ncols=2)
    arr = np.array(rows, dtype=np.float64)
    if not np.isfinite(arr[:, 0]).all() or np.any(arr[:, 0] < 0):
        raise InputError("spatial frequencies must be finite and >= 0", source=path)
    return arr[:, 0].copy(), arr[:, 1].copy()
