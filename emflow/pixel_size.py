"""One pixel-size contract for every input file (issue 12 item 4, issue 14 item 4).

The pixel size of a file comes from **its own metadata**; a config value is only a *check*:

==============================  ==========================================================
carrier                         where the pixel size is read
==============================  ==========================================================
MRC (``.mrc .mrcs .map .rec     voxel size = cell length / sampling along x
.st .ali``, optionally ``.gz``) (``cella.x / mx``, what ``mrcfile``'s ``voxel_size`` gives)
EMAN2 HDF (``.hdf .h5``)        ``apix_x`` of the first image (``EMAN.apix_x`` attribute)
EMAN2 ``.lst``                  the image file of its first record, as above
RELION STAR (``.star``)         ``rlnImagePixelSize``, ``rlnPixelSize`` or
                                ``rlnTomoTiltSeriesPixelSize`` (optics/global block first),
                                RELION 3.0 ``rlnDetectorPixelSize``·10⁴/``rlnMagnification``
EMAN2 info json (``.json``)     ``apix_unbin``
==============================  ==========================================================

Rules (:func:`check_pixel_size` applies them to a value already read):

* ``expected`` (the config value, e.g. ``microscope.apix``) given and the file's value differs by
  more than ``tol`` (relative) → :class:`InputError` naming the file, both values, and both fixes
  (fix the header with ``mrcfile``/``h5py`` if the config is right, or the config key if the
  header is right).
* The file has no usable value: missing, 0, negative, NaN, or exactly **1.0 Å** in an MRC/HDF
  header (the value ``mrcfile``, EMAN2 and IMOD write when nobody set it) → :class:`InputError`
  with the command that sets the header, unless an **override** is given. A 1.0 header is accepted
  when ``expected`` is 1.0 too (the config confirms it).
* ``override`` (the user's explicit value for this file, from the config key
  ``input.apix_override``: a mapping ``{file path: Å/px}``) replaces the file's value, whatever it
  is, and is logged (warning when the header held a different, set value). ``expected`` is then
  checked against the override.

Nothing here falls back to a constant or to the config silently.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

from emflow.errors import InputError

log = logging.getLogger(__name__)

OVERRIDE_KEY = "input.apix_override"
"""Config key of the per-file overrides: ``{path: Å/px}`` (see :func:`apix_override`)."""

UNSET_DEFAULT = 1.0
"""The voxel size mrcfile/EMAN2/IMOD write when none was set: read as "unset" in MRC/HDF headers."""

MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec", ".st", ".ali", ".ccp4")
HDF_SUFFIXES = (".hdf", ".h5", ".hdf5")
STAR_PIXEL_LABELS = ("rlnImagePixelSize", "rlnPixelSize", "rlnTomoTiltSeriesPixelSize")


def _suffix(path: str) -> str:
    return os.path.splitext(path.lower().removesuffix(".gz"))[1]


def _kind(path: str) -> str:
    s = _suffix(path)
    if s in HDF_SUFFIXES:
        return "hdf"
    if s == ".star":
        return "star"
    if s == ".lst":
        return "lst"
    if s == ".json":
        return "json"
    return "mrc"  # every other name is read as MRC (IMOD names stacks freely: .st, .ali, .preali ...)


def header_fix(path: str | os.PathLike, value: float | None) -> str:
    """A command that writes ``value`` (Å/px; None: a placeholder) into the pixel-size field of ``path``."""
    path = os.fspath(path)
    kind = _kind(path)
    v = "<Å/px>" if value is None else f"{float(value):.6g}"
    if kind == "hdf":
        return (f"python -c \"import h5py; f = h5py.File('{path}', 'r+'); "
                f"[g.attrs.__setitem__('EMAN.apix_' + a, {v}) for g in f['MDF/images'].values() for a in 'xyz']; "
                f"f.close()\" (or e2proc2d.py/e2proc3d.py --apix {v})")
    if kind == "star":
        return f"set rlnImagePixelSize (or rlnTomoTiltSeriesPixelSize) to {v} in the optics block of {path}"
    if kind == "json":
        return f"set \"apix_unbin\": {v} in {path}"
    if kind == "lst":
        return "fix the pixel size of the image files the .lst points to"
    if path.lower().endswith(".gz"):
        return (f"decompress it (gunzip), then python -c \"import mrcfile; m = mrcfile.open('{path[:-3]}', 'r+'); "
                f"m.voxel_size = {v}; m.close()\"")
    return (f"python -c \"import mrcfile; m = mrcfile.open('{path}', 'r+'); m.voxel_size = {v}; m.close()\" "
            f"(or IMOD: alterheader -del {v},{v},{v} {path})")


def _override_fix(path: str, value: float | None) -> str:
    v = "<Å/px>" if value is None else f"{float(value):.6g}"
    return f"or declare it in the config: {OVERRIDE_KEY}: {{'{path}': {v}}}"


def _is_unset(value, kind: str) -> bool:
    if value is None:
        return True
    try:
        v = float(value)
    except (TypeError, ValueError):
        return True
    if not math.isfinite(v) or v <= 0:
        return True
    return kind in ("mrc", "hdf") and abs(v - UNSET_DEFAULT) < 1e-6


def check_pixel_size(value, *, source: str | os.PathLike, expected: float | None = None,
                     key: str = "microscope.apix", tol: float = 0.01, override: float | None = None,
                     kind: str | None = None, what: str = "header") -> float:
    """Apply the pixel-size contract to ``value`` (Å/px) already read from ``source``.

    Parameters
    ----------
    value : float or None
        What the file says (None: nothing).
    source : path
        The file (named in every message; its suffix decides which command fixes its header).
    expected : float, optional
        The config's value for this file (checked, never used instead of the file's).
    key : str
        The config key of ``expected``, named in messages.
    tol : float
        Relative tolerance of the check (0.01 = 1 %).
    override : float, optional
        The user's explicit value for this file (``input.apix_override``); replaces ``value``.
    kind : {"mrc", "hdf", "star", "lst", "json"}, optional
        Carrier type (default: from the suffix); 1.0 counts as unset for ``mrc`` and ``hdf``.
    what : str
        Name of the field in messages ("header", "optics table", ...).

    Returns
    -------
    float
        The pixel size in Å.
    """
    path = os.fspath(source)
    kind = kind or _kind(path)
    unset = _is_unset(value, kind)
    if override is not None:
        override = float(override)
        if not (math.isfinite(override) and override > 0):
            raise InputError(f"override pixel size {override} for {path} is not a positive number",
                             source=f"config key '{OVERRIDE_KEY}'", fix="give the pixel size in Å/px")
        if not unset and abs(float(value) - override) > tol * override:
            log.warning("%s: %s pixel size %.4g Å replaced by %.4g Å from %s", path, what, float(value), override,
                        OVERRIDE_KEY)
        elif not unset:
            log.debug("%s: %s pixel size %.4g Å agrees with the override %.4g Å", path, what, float(value), override)
        else:
            log.info("%s: pixel size %.4g Å from the override (%s, or the value an earlier stage "
                     "established); %s: %s", path, override, OVERRIDE_KEY, what,
                     "unset" if unset else f"{float(value):.4g}")
        if expected is not None and abs(override - float(expected)) > tol * float(expected):
            raise InputError(
                f"{OVERRIDE_KEY} gives {override:.4g} Å for this file but {key} is {float(expected):.4g} Å",
                source=path, fix=f"make {OVERRIDE_KEY} and {key} agree (the one that is right for this file)")
        return override
    if unset:
        if (expected is not None and value is not None and kind in ("mrc", "hdf")
                and abs(float(value) - UNSET_DEFAULT) < 1e-6
                and abs(float(expected) - UNSET_DEFAULT) <= tol * UNSET_DEFAULT):
            return UNSET_DEFAULT  # 1.0 in the header and 1.0 in the config: confirmed
        if value is None:
            why = "none"
        elif _is_unset_strict(value):
            why = f"value {value}"
        else:
            why = "1.0 Å, the value written when none is set"
        target = None if expected is None else float(expected)
        fix = f"write the real pixel size into the file: {header_fix(path, target)}, {_override_fix(path, target)}"
        if expected is not None:
            fix += f" ({key} is {target:.4g} Å, if that is this file's pixel size)"
        named = f" (the file of config key {key})" if expected is None and key != "microscope.apix" else ""
        raise InputError(f"no pixel size in the {what}: {why}{named}", source=path, fix=fix)
    v = float(value)
    if expected is not None and abs(v - float(expected)) > tol * float(expected):
        e = float(expected)
        ratio = v / e
        hint = ""
        for r in (ratio, 1.0 / ratio):
            n = round(r)
            if n >= 2 and abs(r - n) < 0.02 * n:
                hint = f" (×{n}: {'a binned file' if r == ratio else 'a binned value in the config'}?)"
                break
        raise InputError(
            f"pixel size in the {what} is {v:.4g} Å but {key} is {e:.4g} Å{hint}",
            source=path,
            fix=(f"if {e:.4g} Å is right, fix the file: {header_fix(path, e)}, {_override_fix(path, e)}; "
                 f"if the file is right (e.g. it was binned), set {key} to the pixel size of the data it "
                 f"describes, or give the unbinned file"))
    return v


def _is_unset_strict(value) -> bool:
    """Missing, zero, negative or NaN (1.0 not included)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return True
    return not math.isfinite(v) or v <= 0


def read_pixel_size(path: str | os.PathLike) -> tuple[float | None, str]:
    """``(value or None, field name)`` as stored in the file, without any check.

    MRC/HDF give the raw header value (0 or 1.0 when unset); STAR/json give None when absent.
    """
    path = os.fspath(path)
    kind = _kind(path)
    if kind == "mrc":
        from emflow.io.mrc import read_mrc_header

        return float(read_mrc_header(path)["apix"]), "MRC header (voxel size)"
    if kind == "hdf":
        from emflow.io.hdf import read_hdf_header

        value = read_hdf_header(path, 0).get("apix_x")
        return (None if value is None else float(value)), "HDF header (apix_x of image 0)"
    if kind == "lst":
        from emflow.io.lst import read_lst

        entries = read_lst(path)
        if not entries:
            raise InputError("the .lst file lists no image", source=path, fix="give a non-empty particle list")
        return read_pixel_size(entries[0].path)
    if kind == "json":
        import json

        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read JSON ({exc})", source=path) from None
        value = doc.get("apix_unbin") if isinstance(doc, dict) else None
        return (None if value is None else float(value)), "info json (apix_unbin)"
    return _star_pixel_size(path)


def _star_pixel_size(path: str) -> tuple[float | None, str]:
    import numpy as np

    from emflow.io.star import read_star

    blocks = read_star(path)
    # optics (RELION 3.1+) and global (RELION 4/5 tomograms.star) blocks first, then the others
    order = sorted(blocks, key=lambda b: (b not in ("optics", "global"), list(blocks).index(b)))
    for label in STAR_PIXEL_LABELS:
        for name in order:
            table = blocks[name]
            if label in table:
                values = np.atleast_1d(np.asarray(table[label], dtype=float))
                if values.size == 0:
                    continue
                if np.ptp(values) > 1e-6 * abs(values[0]):
                    raise InputError(
                        f"data_{name} has several pixel sizes in {label} ({sorted(set(values.tolist()))})",
                        source=path, fix="emflow takes one pixel size per file: split the file by pixel size")
                return float(values[0]), f"data_{name} {label}"
    for name in order:  # RELION 3.0: detector pixel (µm) and magnification
        table = blocks[name]
        if "rlnDetectorPixelSize" in table and "rlnMagnification" in table:
            det = np.atleast_1d(np.asarray(table["rlnDetectorPixelSize"], float))
            mag = np.atleast_1d(np.asarray(table["rlnMagnification"], float))
            apix = det * 1e4 / np.where(mag > 0, mag, np.nan)
            if apix.size and np.ptp(apix) <= 1e-6 * abs(apix[0]):
                return float(apix[0]), f"data_{name} rlnDetectorPixelSize/rlnMagnification"
    return None, "STAR file (no rlnImagePixelSize/rlnPixelSize/rlnTomoTiltSeriesPixelSize)"


def pixel_size(path: str | os.PathLike, *, expected: float | None = None, key: str = "microscope.apix",
               tol: float = 0.01, override: float | None = None) -> float:
    """The pixel size (Å/px) of ``path`` from its own metadata, checked against ``expected``.

    See the module docstring for the carriers and the rules. ``override`` is the user's explicit
    value for this file (pass ``apix_override(config, path)``); ``key`` names ``expected``'s
    config key in messages.

    Raises
    ------
    InputError
        Missing/unset value without override, mismatch with ``expected`` beyond ``tol``
        (relative), or an unreadable file; the message names the file, both values and the fix.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError("file does not exist", source=path, fix="check the path in the config")
    value, what = read_pixel_size(path)
    return check_pixel_size(value, source=path, expected=expected, key=key, tol=tol, override=override, what=what)


def apix_override(config: Mapping, path: str | os.PathLike) -> float | None:
    """The user's override for ``path`` from ``config['input']['apix_override']`` (None if none).

    Paths are compared after ``os.path.normpath``, so ``./data/a.mrc`` matches ``data/a.mrc``.
    """
    table = (config.get("input") or {}).get("apix_override") or {}
    want = os.path.normpath(os.fspath(path))
    for p, v in table.items():
        if os.path.normpath(str(p)) == want:
            return None if v is None else float(v)
    return None


def particles_pixel_size(stack: str | os.PathLike, star: str | os.PathLike | None = None, *,
                         expected: float | None = None, key: str = "spa.apix", tol: float = 0.01,
                         override: float | None = None) -> float:
    """Pixel size of a particle stack that may come with a RELION STAR (its optics table).

    The STAR's ``rlnImagePixelSize`` (or ``rlnPixelSize``) describes the particles, so when it has
    one it is the value, and the stack's header is checked against it unless the header is unset
    (0 or 1.0); without a STAR value the stack's own header is the value (:func:`pixel_size`).
    ``expected`` (e.g. ``spa.apix``) and ``override`` (``input.apix_override`` of the stack) as there.
    """
    stack = os.fspath(stack)
    if star is None or override is not None:
        return pixel_size(stack, expected=expected, key=key, tol=tol, override=override)
    star = os.fspath(star)
    if not os.path.exists(star):
        raise InputError("file does not exist", source=star, fix="check the path in the config")
    star_value, star_what = read_pixel_size(star)
    if star_value is None:
        return pixel_size(stack, expected=expected, key=key, tol=tol)
    apix = check_pixel_size(star_value, source=star, expected=expected, key=key, tol=tol, kind="star", what=star_what)
    header, what = read_pixel_size(stack)
    if not _is_unset(header, _kind(stack)):
        check_pixel_size(header, source=stack, expected=apix, key=f"{star_what} of {star}", tol=tol, what=what)
    return apix
