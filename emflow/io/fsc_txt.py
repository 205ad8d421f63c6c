"""EMAN2 FSC curve text files (spec §6.3): two tab-separated columns, spatial frequency (1/Å)
and FSC, after the header line ``#Spatial Freq (1/A); FSC``."""

from __future__ import annotations

import os

import numpy as np

from emflow.errors import InputError
from emflow.io._atomic import atomic_write
from emflow.io._text import read_numeric_rows

FSC_HEADER = "#Spatial Freq (1/A); FSC"


def write_fsc_txt(path: str | os.PathLike, freq_inv_a, fsc) -> None:
    """Write an FSC curve (atomically).

    Parameters
    ----------
    freq_inv_a : array_like (n,)
        Spatial frequency in 1/Å (row r of a box n: ``r / (n * apix)``).
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
