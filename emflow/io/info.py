"""EMAN2 per-tomogram metadata ``info/<name>_info.json`` (spec §3.0).

Keys used by emflow: ``tlt_params`` (N x 5 or N x 9: tx, ty [unbinned px], z-rotation, ytilt,
xtilt [deg], optional 2x2 distortion), ``tlt_file``, ``ali_loss``, ``apix_unbin`` (Å/px),
``defocus`` (µm per tilt), ``phase`` (deg per tilt), ``voltage`` (kV), ``cs`` (mm),
``boxes_3d`` (rows ``[x, y, z, method, score, class_id(, ...)]``; with ``apix_unbin`` the
coordinates are unbinned pixels from the tomogram centre), ``class_list``
(``{"<k>": {"name": label, "boxsize": unbinned px}}``), ``curves``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import numpy as np

from emflow.errors import InputError
from emflow.io._atomic import atomic_write
from emflow.io._text import read_text
from emflow.io.eman_objects import json_default


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_number_list(info, key, path, allow_nan=False):
    value = info[key]
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise InputError(f"key {key!r} must be a list of numbers", source=path)
    if not allow_nan and not all(math.isfinite(v) for v in value):
        raise InputError(f"key {key!r} contains NaN or Inf", source=path)


def validate_info(info, path=None) -> None:
    """Check the structure of the keys emflow uses; raise :class:`InputError` naming the key."""
    if not isinstance(info, dict):
        raise InputError(f"info file must hold a JSON object, got {type(info).__name__}", source=path)
    if "tlt_params" in info:
        rows = info["tlt_params"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise InputError("key 'tlt_params' must be a list of rows", source=path)
        for i, r in enumerate(rows):
            if len(r) not in (5, 9) or not all(_is_number(v) and math.isfinite(v) for v in r):
                raise InputError(f"tlt_params row {i} must have 5 or 9 finite numbers, got {r!r:.80}",
                                 source=path, fix="re-run tilt-series alignment (e2tomogram.py)")
    if "apix_unbin" in info:
        v = info["apix_unbin"]
        if not _is_number(v) or not math.isfinite(v) or v <= 0:
            raise InputError(f"apix_unbin must be a positive number, got {v!r}", source=path)
    for key in ("defocus", "phase", "ali_loss"):
        if key in info:
            _check_number_list(info, key, path, allow_nan=(key == "ali_loss"))
    for key in ("voltage", "cs"):
        if key in info and not _is_number(info[key]):
            raise InputError(f"key {key!r} must be a number", source=path)
    if "boxes_3d" in info:
        boxes = info["boxes_3d"]
        if not isinstance(boxes, list):
            raise InputError("key 'boxes_3d' must be a list of boxes", source=path)
        for i, b in enumerate(boxes):
            if not isinstance(b, list) or len(b) < 3 or not all(_is_number(v) and math.isfinite(v)
                                                                 for v in b[:3]):
                raise InputError(f"boxes_3d entry {i} must start with 3 numbers (x, y, z), got {b!r:.80}",
                                 source=path)
            if len(b) >= 5 and not _is_number(b[4]):
                raise InputError(f"boxes_3d entry {i}: score {b[4]!r} is not a number", source=path)
            if len(b) >= 6 and not (_is_number(b[5]) and math.isfinite(b[5]) and float(b[5]) == int(b[5])):
                raise InputError(f"boxes_3d entry {i}: class id {b[5]!r} is not an integer", source=path)
    if "class_list" in info:
        cl = info["class_list"]
        if not isinstance(cl, dict):
            raise InputError("key 'class_list' must be an object", source=path)
        for k, v in cl.items():
            try:
                int(k)
            except ValueError:
                raise InputError(f"class_list key {k!r} is not an integer", source=path) from None
            if not isinstance(v, dict) or not isinstance(v.get("name"), str):
                raise InputError(f"class_list[{k!r}] must be an object with a 'name'", source=path)
            if "boxsize" in v and not _is_number(v["boxsize"]):
                raise InputError(f"class_list[{k!r}]['boxsize'] must be a number", source=path)


def read_info_json(path: str | os.PathLike) -> dict:
    """Read and validate an EMAN2 ``info/*_info.json`` file (see module docstring for keys)."""
    text = read_text(path, "info JSON file")
    if not text.strip():
        raise InputError("info JSON file is empty", source=path, fix="regenerate it or delete it")
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=path,
                         fix="fix the syntax (a missing comma or bracket) or regenerate the file") from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply", source=path) from None
    validate_info(info, path)
    return info


def write_info_json(path: str | os.PathLike, info: Mapping) -> None:
    """Write an info dict as JSON (sorted keys, EMAN2's ``indent=0`` style), atomically."""
    info = dict(info)
    validate_info(json.loads(json.dumps(info, default=json_default)), path)
    text = json.dumps(info, indent=0, sort_keys=True, default=json_default)
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def _class_ids(info) -> dict[str, int]:
    return {v["name"]: int(k) for k, v in (info.get("class_list") or {}).items()}


def boxes_from_info(info: Mapping, label: str | None = None, source=None):
    """Particle positions stored by e2spt_boxer / e2spt_tempmatch.

    Parameters
    ----------
    info : dict
        From :func:`read_info_json`.
    label : str, optional
        Only boxes of the class with this name in ``class_list``.

    Returns
    -------
    coords : ndarray, float64 (n, 3)
        (x, y, z) in unbinned pixels relative to the tomogram centre.
    classes : ndarray, int64 (n,)
    scores : ndarray, float64 (n,)
    """
    boxes = info.get("boxes_3d") or []
    if boxes and "apix_unbin" not in info:
        raise InputError("boxes_3d uses EMAN2's pre-2018 format (binned pixels from the corner, no "
                         "apix_unbin)", source=source,
                         fix="open the tomogram once in a current e2spt_boxer.py to convert the boxes")
    if label is not None:
        ids = _class_ids(info)
        if label not in ids:
            raise InputError(f"no particle class named {label!r}; classes: {sorted(ids)}", source=source,
                             fix="use one of the listed labels")
        boxes = [b for b in boxes if len(b) >= 6 and int(b[5]) == ids[label]]
    coords = np.array([[float(v) for v in b[:3]] for b in boxes], dtype=np.float64).reshape(-1, 3)
    classes = np.array([int(b[5]) if len(b) >= 6 else 0 for b in boxes], dtype=np.int64)
    scores = np.array([float(b[4]) if len(b) >= 5 else 0.0 for b in boxes], dtype=np.float64)
    return coords, classes, scores


def add_boxes(info: dict, coords, label: str, boxsize: int | None, method: str = "tm", scores=None,
              replace: bool = False) -> dict:
    """Add particles of class ``label`` to ``boxes_3d`` and ``class_list`` (in place, returned).

    Like e2spt_tempmatch: an existing class of that name is reused, else a new class id
    (largest + 1) is created with ``{"name": label, "boxsize": boxsize}``.

    Parameters
    ----------
    coords : array_like (n, 3)
        Unbinned pixels relative to the tomogram centre (x, y, z).
    boxsize : int or None
        Box size in unbinned pixels (None: the class gets no ``boxsize``; an existing one is kept).
    method : str
        ``"tm"`` (template matching) or ``"manual"``.
    scores : array_like (n,), optional
        Default 0.
    replace : bool
        Remove existing boxes of this class first (re-running a picker).
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    scores = np.zeros(len(coords)) if scores is None else np.asarray(scores, dtype=np.float64).ravel()
    if len(scores) != len(coords):
        raise ValueError(f"{len(scores)} scores for {len(coords)} coordinates")
    class_list = info.setdefault("class_list", {})
    ids = _class_ids(info)
    if label in ids:
        cid = ids[label]
        if boxsize is not None:
            class_list[str(cid)]["boxsize"] = int(boxsize)
    else:
        cid = max((int(k) for k in class_list), default=-1) + 1
        class_list[str(cid)] = {"name": label} if boxsize is None else {"name": label, "boxsize": int(boxsize)}
    boxes = info.setdefault("boxes_3d", [])
    if replace:
        boxes[:] = [b for b in boxes if not (len(b) >= 6 and int(b[5]) == cid)]
    for (x, y, z), s in zip(coords, scores):
        boxes.append([float(x), float(y), float(z), method, float(s), cid])
    return info


def tlt_params(info: Mapping, source=None) -> np.ndarray:
    """Per-tilt alignment ``(n, 5)`` float64: tx, ty (unbinned px), z-rotation, ytilt, xtilt (deg)."""
    rows = info.get("tlt_params")
    if not rows:
        raise InputError("info has no tlt_params (tilt-series alignment)", source=source,
                         fix="align the tilt series first, or give IMOD .tlt/.xf files")
    return np.array([r[:5] for r in rows], dtype=np.float64)
