"""IMOD tilt-series text files (``.tlt``, ``.xf``, ctfplotter ``.defocus``, ``tilt.com``) and
plain-text coordinate lists.

These functions only *read* the files (values exactly as IMOD writes them, IMOD's units); the
conversion to emflow's EMAN2 conventions is done in one place, :mod:`emflow.sta.importer`
(``docs/CONVENTIONS.md``, "IMOD ↔ EMAN2").

* ``.tlt``: one tilt angle (degrees, IMOD's sign) per line (``tilt`` man page, TILTFILE).
* ``.xf``: one line per tilt, ``A11 A12 A21 A22 DX DY`` -- the 2x2 in-plane transform and shift
  (pixels of the stack the alignment was computed on) that map raw to aligned images:
  ``X' = A11 (X - Xci) + A12 (Y - Yci) + DX + Xco`` (``newstack`` man page, "transform file").
* ``.defocus`` (ctfplotter, read by ctfphaseflip): version 2 -- ``startView endView startAngle
  endAngle defocus_nm`` per line, the first line ending with the version number 2 (IMOD 4.6
  ``ctfplotter/myapp.cpp`` L1164-1172 writes it, ``ctfplotter/ctfutils.cpp`` L65-100 reads it);
  version 3 -- a first line ``flags 0 0. 0. 0 3`` and then ``startView endView startAngle endAngle
  defocus1_nm [defocus2_nm astigAngle] [phase] [cutOn]``, the optional columns present according
  to ``flags`` = sum of 1 (astigmatism), 2 (astigmatism angle in radians), 4 (phase shift), 8 (phase
  in radians), 16 (tilt angles inverted), 32 (cut-on frequency) (``ctfphaseflip`` man page,
  "Defocus file format"). Views are numbered from 1.
* ``tilt.com``: the command file of IMOD's ``tilt`` -- one ``KEYWORD values`` entry per line,
  keywords case-insensitive, lines starting with ``$`` (commands) or ``#`` (comments) ignored
  (``tilt`` man page, OPTIONS).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from emflow.errors import InputError
from emflow.io._atomic import atomic_write
from emflow.io._text import read_numeric_rows, read_text


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


@dataclasses.dataclass(frozen=True)
class DefocusTable:
    """Rows of a ctfplotter ``.defocus`` file, in IMOD's units (see the module docstring).

    ``view_start``/``view_end`` int ``(m,)`` (numbered from 1, inclusive); ``angle_start``/``angle_end``
    degrees; ``defocus1_nm``/``defocus2_nm`` (nm, underfocus positive; equal without astigmatism);
    ``astig_angle_deg`` (degrees, 0 without astigmatism); ``phase_deg`` (degrees, 0 without phase);
    ``cut_on`` (cycles/px or None); ``version`` (1, 2 or 3); ``flags`` (the version-3 flag sum, 0 before).
    """

    view_start: np.ndarray
    view_end: np.ndarray
    angle_start: np.ndarray
    angle_end: np.ndarray
    defocus1_nm: np.ndarray
    defocus2_nm: np.ndarray
    astig_angle_deg: np.ndarray
    phase_deg: np.ndarray
    cut_on: np.ndarray | None
    version: int
    flags: int


DEFOCUS_FLAGS_KNOWN = 1 | 2 | 4 | 8 | 16 | 32


def read_defocus(path: str | os.PathLike) -> DefocusTable:
    """Read a ctfplotter ``.defocus`` file (versions 1-3, module docstring) without converting units."""
    text = read_text(path, "IMOD .defocus file")
    rows: list[tuple[int, list[float]]] = []
    for k, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            rows.append((k, [float(v) for v in s.split()]))
        except ValueError:
            raise InputError(f"line {k} of the .defocus file is not numeric: {s[:60]!r}", source=path,
                             fix="give the .defocus file written by ctfplotter") from None
    if not rows:
        raise InputError("the .defocus file is empty", source=path, fix="save the defocus values in ctfplotter")
    first_line, first = rows[0]
    version, flags = 1, 0
    if len(first) == 6 and int(first[5]) == 3 and first[1] == 0 and first[2] == 0 and first[3] == 0:
        version, flags = 3, int(first[0])
        data = rows[1:]
    elif len(first) == 6:
        version = int(first[5])
        if version != 2:
            raise InputError(f"line {first_line}: unknown .defocus version {first[5]:g}", source=path,
                             fix="save the file with ctfplotter from IMOD 4.x (versions 2 and 3 are read)")
        data = [(first_line, first[:5])] + rows[1:]
    elif len(first) == 5:
        data = rows
    else:
        raise InputError(f"line {first_line} has {len(first)} values; a .defocus file starts with 5 or 6",
                         source=path, fix="give the .defocus file written by ctfplotter")
    if flags & ~DEFOCUS_FLAGS_KNOWN:
        raise InputError(f"unknown flags {flags} in the first line", source=path,
                         fix="flags must be a sum of 1, 2, 4, 8, 16, 32 (ctfphaseflip man page)")
    astig, phase, cuton = bool(flags & 1), bool(flags & 4), bool(flags & 32)
    ncols = 5 + 2 * astig + phase + cuton
    if not data:
        raise InputError("the .defocus file has no defocus rows", source=path,
                         fix="save the defocus values in ctfplotter")
    for k, v in data:
        if len(v) != ncols:
            raise InputError(f"line {k} has {len(v)} values, expected {ncols} for version {version} "
                             f"with flags {flags}", source=path, fix="give the .defocus file written by ctfplotter")
    arr = np.array([v for _, v in data], dtype=np.float64)
    _finite(arr, [k for k, _ in data], path, ".defocus file")
    col = 5
    df2, ang = arr[:, 4].copy(), np.zeros(len(arr))
    if astig:
        df2, ang = arr[:, 5], arr[:, 6]
        if flags & 2:
            ang = np.degrees(ang)
        col = 7
    ph = np.zeros(len(arr))
    if phase:
        ph = np.degrees(arr[:, col]) if flags & 8 else arr[:, col]
        col += 1
    co = arr[:, col] if cuton else None
    vs, ve = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    if np.any(vs < 1) or np.any(ve < vs):
        k = int(np.argmax((vs < 1) | (ve < vs)))
        raise InputError(f"line {data[k][0]}: view range {vs[k]}-{ve[k]} is not valid (views count from 1)",
                         source=path, fix="give the .defocus file written by ctfplotter (IMOD >= 4.0.29)")
    return DefocusTable(view_start=vs, view_end=ve, angle_start=arr[:, 2], angle_end=arr[:, 3],
                        defocus1_nm=arr[:, 4], defocus2_nm=np.asarray(df2), astig_angle_deg=np.asarray(ang),
                        phase_deg=np.asarray(ph), cut_on=co, version=version, flags=flags)


def read_tilt_com(path: str | os.PathLike) -> dict[str, list[str]]:
    """Entries of an IMOD ``tilt.com`` (or a ``tilt`` parameter file): ``{KEYWORD: [values...]}``.

    Keywords are upper-cased (``tilt`` options are case-insensitive); a keyword without values
    (``PERPENDICULAR``) maps to ``[]``. Lines starting with ``$`` or ``#`` are skipped. A keyword
    given twice keeps the values of both lines (``ANGLES`` may span lines).
    """
    text = read_text(path, "IMOD tilt.com file")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "$#":
            continue
        key, *vals = s.replace(",", " ").split()
        out.setdefault(key.upper(), []).extend(vals)
    if not out:
        raise InputError("no tilt entries in this file", source=path,
                         fix="give the tilt.com of the reconstruction (etomo writes it in the dataset folder)")
    return out
