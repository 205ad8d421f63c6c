"""IMOD tilt-series text files (``.tlt``, ``.xf``) and plain-text coordinate lists.

``.tlt``: one tilt angle (degrees) per line. ``.xf``: one line per tilt,
``A11 A12 A21 A22 DX DY`` -- the 2x2 in-plane transform and shift (pixels of the stack the
alignment was computed on) that map raw to aligned images: ``x' = A x + d`` about the image centre.
"""

from __future__ import annotations

import os

import numpy as np

from emflow.errors import InputError
from emflow.io._atomic import atomic_write
from emflow.io._text import read_numeric_rows


def _finite(arr: np.ndarray, lines, path, what) -> None:
    bad = ~np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
    if bad.any():
        raise InputError(f"line {lines[int(np.argmax(bad))]} of the {what} contains NaN or Inf", source=path)


def read_tlt(path: str | os.PathLike) -> np.ndarray:
    """Tilt angles in degrees, float64 ``(n,)``, in file (= image) order."""
    rows, lines = read_numeric_rows(path, "IMOD .tlt file", ncols=1)
    angles = np.array(rows, dtype=np.float64).ravel()
    _finite(angles, lines, path, ".tlt file")
    if np.any(np.abs(angles) > 90):
        k = int(np.argmax(np.abs(angles) > 90))
        raise InputError(f"line {lines[k]}: tilt angle {angles[k]} is outside [-90, 90] degrees", source=path,
                         fix="check that this is a tilt-angle file (.tlt/.rawtlt)")
    return angles


def write_tlt(path: str | os.PathLike, angles) -> None:
    """Write tilt angles (degrees), one per line, atomically."""
    angles = np.asarray(angles, dtype=np.float64).ravel()
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        f.write("".join(f"{a:9.4f}\n" for a in angles))


def read_xf(path: str | os.PathLike) -> np.ndarray:
    """IMOD ``.xf`` transforms as float64 ``(n, 2, 3)``: ``[[A11, A12, DX], [A21, A22, DY]]``."""
    rows, lines = read_numeric_rows(path, "IMOD .xf file", ncols=6)
    v = np.array(rows, dtype=np.float64)
    _finite(v, lines, path, ".xf file")
    out = np.empty((len(v), 2, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = v[:, 0], v[:, 1], v[:, 2], v[:, 3]
    out[:, 0, 2], out[:, 1, 2] = v[:, 4], v[:, 5]
    return out


def write_xf(path: str | os.PathLike, xf) -> None:
    """Write ``(n, 2, 3)`` transforms in IMOD's fixed-width ``.xf`` format, atomically."""
    xf = np.asarray(xf, dtype=np.float64)
    if xf.ndim != 3 or xf.shape[1:] != (2, 3):
        raise ValueError(f"xf must have shape (n, 2, 3), got {xf.shape}")
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        for m in xf:
            f.write(f"{m[0, 0]:12.7f}{m[0, 1]:12.7f}{m[1, 0]:12.7f}{m[1, 1]:12.7f}"
                    f"{m[0, 2]:12.3f}{m[1, 2]:12.3f}\n")


def read_coords_txt(path: str | os.PathLike, columns=None) -> np.ndarray:
    """Particle coordinates from a plain text file, float64 ``(n, 3)`` (x, y, z).

    Whitespace- or comma-separated numbers, ``#`` comments. With ``columns=None`` each line must
    have exactly 3 numbers; otherwise ``columns`` gives the 0-based x, y, z column indices
    (e.g. ``(2, 3, 4)`` for IMOD ``model2point -object -contour`` output).
    """
    if columns is None:
        rows, lines = read_numeric_rows(path, "coordinate file", ncols=None, min_cols=3, sep_comma=True)
        if len(rows[0]) != 3:
            raise InputError(f"coordinate lines have {len(rows[0])} values, expected 3 (x y z)", source=path,
                             fix="give the x, y, z column numbers (columns=...) in the config")
        cols = (0, 1, 2)
    else:
        cols = tuple(int(c) for c in columns)
        rows, lines = read_numeric_rows(path, "coordinate file", ncols=None, min_cols=max(cols) + 1,
                                        sep_comma=True)
    coords = np.array(rows, dtype=np.float64)[:, cols]
    _finite(coords, lines, path, "coordinate file")
    return coords
