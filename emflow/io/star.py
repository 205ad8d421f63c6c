"""RELION STAR files: ``data_<name>`` blocks holding either ``_label value`` pairs or one ``loop_``.

:func:`read_star` returns ``{block_name: {column: values}}`` with the ``data_`` prefix and the
labels' leading ``_`` removed (``blocks["particles"]["rlnAngleRot"]``). Loop columns are int64 or
float64 arrays when every value parses as a number, else lists of str; key-value blocks map to
int/float/str scalars. Loop parsing works on whole columns (one ``str.split`` of the table, one
numpy conversion per column), so million-particle files load in seconds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from emflow.errors import InputError
from emflow.io._atomic import atomic_write
from emflow.io._text import read_text

_TOKEN = re.compile(r"\"([^\"]*)\"|'([^']*)'|(\S+)")
_INT = re.compile(r"^[+-]?\d+$")
_RESERVED = ("data_", "loop_", "save_", "global_", "stop_")
_BLOCK_START = frozenset("_dlsg")


def _tokens(line: str) -> list[str]:
    """Split on whitespace; '...' and "..." are single values (quotes removed)."""
    if '"' not in line and "'" not in line:
        return line.split()
    out = []
    for m in _TOKEN.finditer(line):
        out.append(next(g for g in m.groups() if g is not None))
    return out


def _scalar(token: str):
    if _INT.match(token):
        return int(token)
    if "_" not in token:
        try:
            return float(token)
        except ValueError:
            pass
    return token


def _column(values: list[str]):
    """int64 array if every value is an integer, float64 if every value is a number, else the list."""
    if not values:
        return np.zeros(0, dtype=np.float64)
    if "_" not in "".join(values):  # Python's int()/float() accept "1_0"; STAR does not
        # map(int/float) is ~10x faster than numpy's string-array astype
        if _INT.match(values[0]):
            try:
                return np.fromiter(map(int, values), dtype=np.int64, count=len(values))
            except (ValueError, OverflowError):
                pass
        try:
            return np.fromiter(map(float, values), dtype=np.float64, count=len(values))
        except ValueError:
            pass
    return list(values)


def _parse_loop(lines: list[str], i: int, path) -> tuple[int, dict]:
    labels: list[str] = []
    n = len(lines)
    while i < n:
        s = lines[i].strip()
        if not s or s.startswith("#"):
            i += 1
            continue
        if not s.startswith("_"):
            break
        label = s.split()[0][1:]
        if not label:
            raise InputError(f"line {i + 1}: empty column label", source=path)
        if label in labels:
            raise InputError(f"line {i + 1}: column _{label} appears twice in this loop", source=path)
        labels.append(label)
        i += 1
    if not labels:
        raise InputError(f"line {i}: loop_ without column labels", source=path,
                         fix="each loop_ needs '_rlnName #n' lines before its rows")
    first_row = i
    stop = n
    for k in range(first_row, n):
        head = lines[k].lstrip()[:1]
        if head in _BLOCK_START and (head == "_" or lines[k].lstrip().startswith(_RESERVED)):
            stop = k
            break
    data = lines[first_row:stop]
    if any("#" in line for line in data):
        data = [line for line in data if not line.lstrip().startswith("#")]
    i = stop
    ncol = len(labels)
    joined = "\n".join(data)
    tokens = _tokens(joined) if ('"' in joined or "'" in joined) else joined.split()
    if len(tokens) % ncol:
        _raise_bad_row(lines, first_row, i, ncol, path)
    table = {label: _column(tokens[j::ncol]) for j, label in enumerate(labels)}
    return i, table


def _raise_bad_row(lines, start, stop, ncol, path):
    for k in range(start, stop):
        s = lines[k].strip()
        if s and not s.startswith("#") and len(_tokens(s)) != ncol:
            raise InputError(f"line {k + 1} has {len(_tokens(s))} values but the loop has {ncol} columns",
                             source=path, fix="the file is truncated or was edited; regenerate it")
    raise InputError(f"loop ending at line {stop} has a value count that is not a multiple of its "
                     f"{ncol} columns", source=path)


def read_star(path: str | os.PathLike) -> dict[str, dict]:
    """Read a STAR file (RELION 3.0-5 particles, optics, model, postprocess ...).

    Returns
    -------
    dict
        ``{block_name: table}``; a loop block's table maps column name (no leading ``_``) to an
        int64/float64 ndarray or a list of str (all of equal length); a key-value block maps
        label to int/float/str. Blocks keep file order.

    Raises
    ------
    InputError
        Empty file, text outside a ``data_`` block, duplicate blocks/columns, rows with the wrong
        number of values (line number given), or a block that mixes pairs and a loop.
    """
    text = read_text(path, "STAR file")
    lines = text.splitlines()
    blocks: dict[str, dict] = {}
    current: str | None = None
    is_loop = False
    i, n = 0, len(lines)
    while i < n:
        s = lines[i].strip()
        if not s or s.startswith("#"):
            i += 1
            continue
        if s.startswith("data_"):
            current = s.split()[0][5:]
            if current in blocks:
                raise InputError(f"line {i + 1}: block data_{current} appears twice", source=path)
            blocks[current] = {}
            is_loop = False
            i += 1
            continue
        if current is None:
            raise InputError(f"line {i + 1}: {s[:40]!r} before the first data_ block", source=path,
                             fix="a STAR file starts with 'data_<name>'")
        if s.split()[0].lower() == "loop_":
            if blocks[current]:
                raise InputError(f"line {i + 1}: block data_{current} has a second loop_ or mixes "
                                 "key-value pairs with a loop", source=path)
            i, blocks[current] = _parse_loop(lines, i + 1, path)
            is_loop = True
            continue
        if s.startswith("_"):
            if is_loop:
                raise InputError(f"line {i + 1}: label after the rows of a loop", source=path)
            tokens = _tokens(s)
            if len(tokens) > 2 and tokens[2].startswith("#"):  # trailing comment
                tokens = tokens[:2]
            if len(tokens) != 2 or len(tokens[0]) < 2:
                raise InputError(f"line {i + 1}: expected '_label value', got {s[:60]!r}", source=path)
            label = tokens[0][1:]
            if label in blocks[current]:
                raise InputError(f"line {i + 1}: _{label} appears twice in data_{current}", source=path)
            blocks[current][label] = _scalar(tokens[1])
            i += 1
            continue
        raise InputError(f"line {i + 1}: unexpected text {s[:40]!r}", source=path,
                         fix="values must follow a '_label' or a loop_ header")
    if not blocks:
        raise InputError("STAR file has no data_ blocks", source=path, fix="check that it is a STAR file")
    return blocks


# ----------------------------------------------------------------------------- writing
_NEEDS_QUOTE = re.compile(r"""\s|['"]|(?:^|\x00)(?:[_#]|data_|loop_|save_|global_|stop_)""", re.I)


def _quote(s: str) -> str:
    if s == "" or _NEEDS_QUOTE.search(s):
        if '"' in s:
            if "'" in s:
                raise ValueError(f"STAR value cannot contain both quote characters: {s!r}")
            return f"'{s}'"
        return f'"{s}"'
    return s


def _format_strings(strs: list[str]) -> list[str]:
    # one regex pass over the whole column; quote element-wise only if something needs it
    if "" in strs or _NEEDS_QUOTE.search("\x00".join(strs)):
        return [_quote(v) for v in strs]
    return strs


def _format_column(values, label) -> list[str]:
    arr = values if isinstance(values, np.ndarray) else np.asarray(list(values))
    if arr.ndim != 1:
        raise ValueError(f"STAR column {label!r} must be 1D, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        return list(map(str, arr.tolist()))
    if arr.dtype == np.float64:
        return list(map(repr, arr.tolist()))  # shortest string that reads back exactly
    if arr.dtype.kind == "f":
        return [f"{v:.9g}" for v in arr.tolist()]  # 9 digits: exact for float32
    return _format_strings(list(map(str, arr.tolist())))


def _format_scalar(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return _quote(str(v))


def _is_column(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def write_star(path: str | os.PathLike, blocks: Mapping[str, Mapping]) -> None:
    """Write STAR blocks (atomically) in RELION's layout.

    Parameters
    ----------
    blocks : mapping
        ``{block_name: table}`` as returned by :func:`read_star`: a table whose values are all
        1D sequences/arrays (equal length) becomes a ``loop_``; one with scalar values a key-value
        block. Labels may be given with or without the leading ``_``. Floats are written with the
        shortest exact representation, strings quoted when needed.
    """
    out = ["", "# version 30001", ""]
    for name, table in blocks.items():
        if any(c.isspace() for c in str(name)):
            raise ValueError(f"STAR block name must not contain whitespace: {name!r}")
        out += [f"data_{name}", ""]
        table = dict(table)
        cols = [v for v in table.values() if _is_column(v)]
        if cols and len(cols) != len(table):
            raise ValueError(f"block {name!r} mixes columns and scalars")
        labels = ["_" + str(k).lstrip("_") for k in table]
        if cols:
            formatted = [_format_column(v, k) for k, v in table.items()]
            lengths = {len(c) for c in formatted}
            if len(lengths) > 1:
                raise ValueError(f"block {name!r}: columns have different lengths {sorted(lengths)}")
            out.append("loop_")
            out += [f"{label} #{j + 1}" for j, label in enumerate(labels)]
            out += [" ".join(row) for row in zip(*formatted)]
        else:
            out += [f"{label} {_format_scalar(v)}" for label, v in zip(labels, table.values())]
        out.append("")
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def write_particles_star(path: str | os.PathLike, image_names: Sequence[str], eulers_relion, shifts_a,
                         apix: float, image_size: int, voltage: float, cs: float, ampcont: float,
                         defocus_u_um=None, defocus_v_um=None, defocus_angle=None,
                         optics_group_name: str = "opticsGroup1", extra: Mapping | None = None) -> None:
    """Write a RELION 3.1+ particle STAR file (``data_optics`` + ``data_particles``).

    Parameters
    ----------
    image_names : sequence of str
        ``"<n>@<stack.mrcs>"`` (1-based n, RELION convention).
    eulers_relion : array_like (n, 3)
        rlnAngleRot, rlnAngleTilt, rlnAnglePsi in degrees.
    shifts_a : array_like (n, 2)
        rlnOriginXAngst, rlnOriginYAngst in Å.
    apix : float
        Image pixel size (Å). ``image_size`` box size (px).
    voltage, cs, ampcont : float
        kV, mm, amplitude contrast **fraction**.
    defocus_u_um, defocus_v_um, defocus_angle : array_like (n,), optional
        Defocus in µm (positive = underfocus; written in Å as RELION wants) and astigmatism angle (deg).
    extra : mapping, optional
        More particle columns ``{"rlnClassNumber": array}``.
    """
    eulers = np.asarray(eulers_relion, dtype=np.float64).reshape(-1, 3)
    shifts = np.asarray(shifts_a, dtype=np.float64).reshape(-1, 2)
    n = len(image_names)
    if len(eulers) != n or len(shifts) != n:
        raise ValueError(f"{n} image names, {len(eulers)} Euler triples, {len(shifts)} shifts")
    optics = {
        "rlnOpticsGroupName": [optics_group_name], "rlnOpticsGroup": [1],
        "rlnVoltage": [float(voltage)], "rlnSphericalAberration": [float(cs)],
        "rlnAmplitudeContrast": [float(ampcont)], "rlnImagePixelSize": [float(apix)],
        "rlnImageSize": [int(image_size)], "rlnImageDimensionality": [2],
    }
    particles = {"rlnImageName": [str(s) for s in image_names],
                 "rlnAngleRot": eulers[:, 0], "rlnAngleTilt": eulers[:, 1], "rlnAnglePsi": eulers[:, 2],
                 "rlnOriginXAngst": shifts[:, 0], "rlnOriginYAngst": shifts[:, 1]}
    if defocus_u_um is not None:
        du = np.broadcast_to(np.asarray(defocus_u_um, dtype=np.float64), (n,)) * 1e4
        dv = du if defocus_v_um is None else np.broadcast_to(np.asarray(defocus_v_um, dtype=np.float64), (n,)) * 1e4
        da = (np.zeros(n) if defocus_angle is None
              else np.broadcast_to(np.asarray(defocus_angle, dtype=np.float64), (n,)))
        particles.update(rlnDefocusU=du, rlnDefocusV=dv, rlnDefocusAngle=da)
    particles["rlnOpticsGroup"] = np.ones(n, dtype=np.int64)
    for k, v in (extra or {}).items():
        particles[str(k).lstrip("_")] = v
    write_star(path, {"optics": optics, "particles": particles})
