"""EMAN2 ``Transform`` and ``EMAN2Ctf`` objects as plain dicts, JSON values and header strings.

EMAN2's JSON form (``.lst`` metadata, ``info`` files) is
``{"__class__": "Transform", "matrix": [m00, m01, m02, tx, m10, m11, m12, ty, m20, m21, m22, tz]}``
(row-major 3x4 ``[R | t]``, ``x' = R x + t``; older files store the matrix as the string
``"[...]"``) and ``{"__class__": "EMAN2Ctf", "defocus": ..., "ampcont": <percent>, ...}``.
In HDF headers a CTF is the string ``"E<defocus> <dfdiff> ... <nbg>,bg... <nsnr>,snr..."``
(``EMAN2Ctf::to_string``). emflow's API uses amplitude contrast as a **fraction**; the conversion to
EMAN's percent happens here and nowhere else.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping

import numpy as np

from emflow.errors import InputError
from emflow.geometry import eman_to_matrix

TRANSFORM_CLASS = "Transform"
CTF_CLASS = "EMAN2Ctf"
CTF_SCALAR_KEYS = ("defocus", "dfdiff", "dfang", "bfactor", "ampcont", "voltage", "cs", "apix", "dsbg")
CTF_KEYS = CTF_SCALAR_KEYS + ("background", "snr")


def is_transform_dict(value) -> bool:
    """True for an EMAN ``Transform`` JSON dict."""
    return isinstance(value, Mapping) and value.get("__class__") == TRANSFORM_CLASS


def is_ctf_dict(value) -> bool:
    """True for an EMAN ``EMAN2Ctf`` JSON dict."""
    return isinstance(value, Mapping) and value.get("__class__") == CTF_CLASS


def transform_to_dict(R, t=(0.0, 0.0, 0.0)) -> dict:
    """EMAN JSON dict of the transform ``x' = R x + t``.

    Parameters
    ----------
    R : array_like, (3, 3)
        Rotation matrix acting on column vectors (x, y, z) (see ``docs/CONVENTIONS.md``).
    t : array_like, (3,) or (2,)
        Translation in pixels (x, y, z); a 2-vector means tz = 0.

    Returns
    -------
    dict
        ``{"__class__": "Transform", "matrix": [12 Python floats]}``.
    """
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64).ravel()
    if R.shape != (3, 3):
        raise ValueError(f"R must have shape (3, 3), got {R.shape}")
    if t.shape not in ((2,), (3,)):
        raise ValueError(f"t must have 2 or 3 elements, got shape {t.shape}")
    if t.size == 2:
        t = np.append(t, 0.0)
    m = np.concatenate([R, t[:, None]], axis=1)
    return {"__class__": TRANSFORM_CLASS, "matrix": [float(v) for v in m.ravel()]}


def _matrix_values(matrix, source) -> list[float]:
    if isinstance(matrix, str):
        try:
            matrix = ast.literal_eval(matrix.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise InputError(f"Transform matrix string {matrix[:60]!r} is not a list of numbers",
                             source=source) from None
    try:
        values = [float(v) for v in np.asarray(matrix, dtype=np.float64).ravel()]
    except (TypeError, ValueError):
        raise InputError("Transform matrix is not a list of numbers", source=source) from None
    if len(values) != 12:
        raise InputError(f"Transform matrix has {len(values)} numbers, expected 12 (3x4 row-major)",
                         source=source)
    if not all(math.isfinite(v) for v in values):
        raise InputError("Transform matrix contains NaN or Inf", source=source)
    return values


def transform_from_dict(d, source=None) -> tuple[np.ndarray, np.ndarray]:
    """Decode an EMAN Transform (JSON dict, legacy parameter dict or legacy string).

    Accepts ``{"__class__": "Transform", "matrix": [12 floats] or "[...]"}``, an EMAN parameter
    dict ``{"type": "eman", "az", "alt", "phi", "tx", "ty", "tz"}`` (or ``"2d"`` with ``alpha``),
    and the strings ``"Transform({...})"`` that old ``.lst`` files contain.

    Returns
    -------
    R : ndarray, float64 (3, 3)
    t : ndarray, float64 (3,)
        Translation in pixels.

    Raises
    ------
    InputError
        If the value cannot be decoded (``source`` names the file/key in the message).
    """
    if isinstance(d, str):
        d = _parse_transform_string(d, source)
    if not isinstance(d, Mapping):
        raise InputError(f"expected a Transform, got {type(d).__name__}", source=source)
    if "matrix" in d:
        m = np.array(_matrix_values(d["matrix"], source)).reshape(3, 4)
        return m[:, :3].copy(), m[:, 3].copy()
    kind = str(d.get("type", "eman")).lower()
    names = {"eman": ("az", "alt", "phi"), "2d": ("alpha",)}.get(kind)
    if names is None:
        raise InputError(f"Transform type {kind!r} is not supported (only 'eman', '2d' and matrices)",
                         source=source, fix="convert the file with e2proclst.py in EMAN2")
    try:
        angles = [float(d.get(k, 0)) for k in names]
        t = np.array([float(d.get(k, 0)) for k in ("tx", "ty", "tz")])
    except (TypeError, ValueError):
        raise InputError("Transform parameters are not numbers", source=source) from None
    if not (all(math.isfinite(a) for a in angles) and np.isfinite(t).all()):
        raise InputError("Transform contains NaN or Inf", source=source)
    R = eman_to_matrix(*angles, 0.0, 0.0) if kind == "2d" else eman_to_matrix(*angles)
    if d.get("mirror") not in (None, 0, False, "0"):
        raise InputError("mirrored Transforms are not supported", source=source)
    return R, t


_TRANSFORM_CALL = re.compile(r"^\s*Transform\s*\((.*)\)\s*$", re.S)


def _parse_transform_string(s: str, source) -> dict:
    match = _TRANSFORM_CALL.match(s)
    body = match.group(1) if match else s
    try:
        value = ast.literal_eval(body.strip()) if body.strip() else {}
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise InputError(f"cannot decode Transform string {s[:60]!r}", source=source) from None
    if isinstance(value, (list, tuple)):
        return {"matrix": list(value)}
    if not isinstance(value, dict):
        raise InputError(f"cannot decode Transform string {s[:60]!r}", source=source)
    return value


def _get(params, key, default=None):
    if isinstance(params, Mapping):
        return params.get(key, default)
    return getattr(params, key, default)


def ctf_to_dict(ctf_params) -> dict:
    """EMAN ``EMAN2Ctf`` JSON dict from emflow CTF parameters.

    Parameters
    ----------
    ctf_params : mapping or object with attributes
        ``defocus`` (µm, positive = underfocus), ``dfdiff`` (µm), ``dfang`` (deg), ``bfactor`` (Å²),
        ``ampcont`` (**fraction**, e.g. 0.1), ``voltage`` (kV), ``cs`` (mm), ``apix`` (Å/px);
        optional ``dsbg``, ``background``, ``snr`` (EMAN's 1D curves).

    Returns
    -------
    dict
        ``{"__class__": "EMAN2Ctf", ..., "ampcont": percent}`` with Python floats/lists.
    """
    out = {"__class__": CTF_CLASS}
    for key in CTF_SCALAR_KEYS:
        default = -1.0 if key == "dsbg" else (1.0 if key == "apix" else 0.0)
        value = _get(ctf_params, key, default)
        if value is None:
            value = default
        out[key] = float(value)
    out["ampcont"] *= 100.0
    for key in ("background", "snr"):
        value = _get(ctf_params, key, None)
        out[key] = [] if value is None else [float(v) for v in np.asarray(value).ravel()]
    return out


def ctf_from_dict(d, source=None) -> dict:
    """emflow CTF parameters (amplitude contrast as a fraction) from an EMAN2Ctf dict or string.

    Returns
    -------
    dict
        Keys ``defocus, dfdiff, dfang, bfactor, ampcont, voltage, cs, apix, dsbg`` (floats,
        ``ampcont`` a fraction) and ``background``, ``snr`` (lists of float).
    """
    if isinstance(d, str):
        d = ctf_from_string(d, source)
    if not isinstance(d, Mapping):
        raise InputError(f"expected an EMAN2Ctf, got {type(d).__name__}", source=source)
    out = {}
    try:
        for key in CTF_SCALAR_KEYS:
            default = -1.0 if key == "dsbg" else (1.0 if key == "apix" else 0.0)
            out[key] = float(d.get(key, default))
        for key in ("background", "snr"):
            out[key] = [float(v) for v in (d.get(key) or [])]
    except (TypeError, ValueError):
        raise InputError("EMAN2Ctf values are not numbers", source=source) from None
    if "defocus" not in d:
        raise InputError("EMAN2Ctf has no defocus", source=source)
    out["ampcont"] /= 100.0
    return out


def ctf_to_string(ctf_dict: Mapping) -> str:
    """``EMAN2Ctf::to_string`` form of an EMAN2Ctf dict (amplitude contrast in percent).

    Uses more digits than EMAN's ``%1.4g`` so values survive a round trip; EMAN parses it with
    ``%f`` so it reads either.
    """
    head = " ".join(f"{float(ctf_dict.get(k, 0.0)):.7g}" for k in CTF_SCALAR_KEYS)
    bg = [float(v) for v in ctf_dict.get("background") or []]
    snr = [float(v) for v in ctf_dict.get("snr") or []]
    return ("E" + head + f" {len(bg)}" + "".join(f",{v:.5g}" for v in bg)
            + f" {len(snr)}" + "".join(f",{v:.5g}" for v in snr))


def ctf_from_string(s: str, source=None) -> dict:
    """Parse an ``EMAN2Ctf::to_string`` string into an EMAN2Ctf dict (percent ampcont)."""
    bad = InputError(f"cannot decode EMAN2Ctf string {s[:60]!r}", source=source)
    if not s.startswith("E"):
        raise bad
    parts = s[1:].split(" ")
    parts = [p for p in parts if p]
    if len(parts) < 11:
        raise bad
    try:
        scalars = [float(v) for v in parts[:9]]
        bg_fields = parts[9].split(",")
        snr_fields = parts[10].split(",")
        nbg, nsnr = int(bg_fields[0]), int(snr_fields[0])
        bg = [float(v) for v in bg_fields[1:]]
        snr = [float(v) for v in snr_fields[1:]]
    except ValueError:
        raise bad from None
    if len(bg) != nbg or len(snr) != nsnr:
        raise bad
    out = {"__class__": CTF_CLASS, **dict(zip(CTF_SCALAR_KEYS, scalars))}
    out["background"] = bg
    out["snr"] = snr
    return out


def json_default(obj):
    """``json.dumps`` fallback: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in EMAN JSON metadata")
