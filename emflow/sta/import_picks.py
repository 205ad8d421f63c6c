"""Every particle-picks format a user brings, read into one :class:`PickSet`.

All positions come out in **unbinned pixels from the tomogram centre** ``(x, y, z)``, the centre
being ``int(size/2)`` of the declared tomogram (the point tilt-series projections rotate about:
RELION ``tomogram.cpp`` L43-45, EMAN2 ``e2spt_extract.py`` L382). Formats and their origins:

EMAN2 info json (``info/<name>_info.json``)
    ``boxes_3d`` rows ``[x, y, z, method, score, class_id]`` in unbinned px from the tomogram
    centre when the json has ``apix_unbin`` (EMAN2 ``programs/e2spt_extract.py`` L370-378: the
    boxes are only divided by ``--shrink``; the pre-2018 corner convention, L381-383, is refused).
    ``class_list`` ``{id: {"name", "boxsize"}}`` gives the label and the box (unbinned px,
    L378 ``sz=int(val["boxsize"])//2``, L391 ``lab=val["name"]``): both are kept.
RELION 5 particles STAR
    ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the centre), RELION 4 ``rlnCoordinateX/Y/Z``
    (tilt-series px from the corner); rows of this tomogram only (``rlnTomoName``); origins
    applied; angles → EMAN. See :mod:`emflow.io.relion_tomo`.
Text ``x y z``
    Unbinned px from the tomogram corner (one particle per line).

The z origin of corner-based formats needs the thickness of the tomogram the user picked in;
the caller passes it (from the tomogram's header, IMOD ``tilt.com``, RELION ``rlnTomoSizeZ`` or
the entry's ``thickness_unbin_px``), never the thickness emflow happens to reconstruct.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from emflow.errors import InputError
from emflow.io import read_info_json, read_mrc_header
from emflow.io.relion_tomo import particles_by_tomogram, relion_particles

DEFAULT_LABEL = "manual"
EMPTY_KEY = "allow_empty_picks"
THICKNESS_KEY = "thickness_unbin_px"


@dataclasses.dataclass
class PickSet:
    """Picks of one tomogram.

    coords : float64 ``(n, 3)``, unbinned px from the tomogram centre (x, y, z)
    label : class name (kept from the file; ``"manual"`` when the file has none)
    boxsize_unbin : box size in unbinned px when the file gives one
    eulers_eman : ``(n, 3)`` az, alt, phi (degrees) when the file has angles
    scores : ``(n,)`` when the file has scores
    """

    coords: np.ndarray
    label: str = DEFAULT_LABEL
    boxsize_unbin: int | None = None
    eulers_eman: np.ndarray | None = None
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.coords)


def picks_format(path: str | os.PathLike) -> str:
    """``"eman2_json"``, ``"relion_star"`` or ``"text"`` from the file name."""
    suffix = pathlib.Path(path).suffix.lower()
    return {".json": "eman2_json", ".star": "relion_star"}.get(suffix, "text")


def needs_thickness(path: str | os.PathLike) -> bool:
    """True for formats whose z is counted from the tomogram's corner (RELION 4 STAR, text)."""
    fmt = picks_format(path)
    if fmt == "text":
        return True
    if fmt == "relion_star":
        table, _, _ = particles_by_tomogram(path)
        return "rlnCenteredCoordinateXAngst" not in table
    return False


def _eman2_json(path, label, apix_unbin) -> PickSet:
    info = read_info_json(path)
    boxes = info.get("boxes_3d") or []
    if boxes and "apix_unbin" not in info:
        raise InputError("boxes_3d uses EMAN2's pre-2018 format (binned px from the corner, no apix_unbin)",
                         source=path, fix="open the tomogram once in a current e2spt_boxer.py to convert the boxes")
    if boxes and abs(float(info["apix_unbin"]) - apix_unbin) > 0.01 * apix_unbin:
        raise InputError(f"apix_unbin = {info['apix_unbin']} Å but the tilt series has {apix_unbin:.4g} Å/px",
                         source=path, fix="use the info json made for this tilt series")
    classes = {int(k): v for k, v in (info.get("class_list") or {}).items()}
    used = sorted({int(b[5]) for b in boxes if len(b) >= 6})
    if label is not None:
        ids = [k for k, v in classes.items() if v.get("name") == label]
        if not ids:
            raise InputError(f"no particle class named {label!r}; classes: "
                             f"{sorted(v.get('name') for v in classes.values())}", source=path,
                             fix="set the tomogram's picks_label to one of the listed names")
        cid = ids[0]
    elif len(used) > 1:
        names = [classes.get(c, {}).get("name", str(c)) for c in used]
        raise InputError(f"boxes_3d holds {len(used)} particle classes {names}", source=path,
                         fix="choose one with the tomogram's `picks_label` key")
    elif used:
        cid = used[0]
    else:
        cid = None
    rows = [b for b in boxes if cid is None or (len(b) >= 6 and int(b[5]) == cid)]
    coords = np.array([[float(v) for v in b[:3]] for b in rows], dtype=np.float64).reshape(-1, 3)
    scores = np.array([float(b[4]) if len(b) >= 5 else 0.0 for b in rows], dtype=np.float64)
    cls = classes.get(cid, {}) if cid is not None else {}
    box = cls.get("boxsize")
    return PickSet(coords=coords, label=str(cls.get("name", label or DEFAULT_LABEL)),
                   boxsize_unbin=None if box is None else int(box), scores=scores)


def _match_name(names: list[str], tomo_name: str) -> str | None:
    if tomo_name in names:
        return tomo_name
    stem = lambda s: pathlib.Path(s).name.split(".")[0]  # noqa: E731  "TS_01.tomostar" etc.
    hits = [n for n in names if stem(n) == tomo_name]
    return hits[0] if len(hits) == 1 else None


def _relion_star(path, tomo_name, size_xyz, apix_unbin, label) -> PickSet:
    table, optics, groups = particles_by_tomogram(path)
    if list(groups) == [""]:
        rows = groups[""]
    else:
        key = _match_name(list(groups), tomo_name)
        if key is None:
            shown = list(groups)[:8]
            raise InputError(f"has particles of tomograms {shown}{' ...' if len(groups) > 8 else ''} "
                             f"but none named {tomo_name!r}", source=path,
                             fix=f"name the tomogram in the config as in the STAR's rlnTomoName "
                                 f"(e.g. name: {shown[0]})")
        rows = groups[key]
    if "rlnCenteredCoordinateXAngst" not in table and size_xyz[2] is None:
        raise _thickness_error(path)
    size = tuple(s if s is not None else 0 for s in size_xyz)
    p = relion_particles(table, optics, rows, apix=apix_unbin, size_xyz=size, source=path)
    return PickSet(coords=p.coords, label=label or DEFAULT_LABEL, eulers_eman=p.eulers_eman, scores=p.scores)


def _text(path, size_xyz, label) -> PickSet:
    from emflow.io import read_coords_txt

    text = pathlib.Path(path).read_text(errors="replace")
    if not [ln for ln in text.splitlines() if ln.split("#")[0].strip()]:
        coords = np.zeros((0, 3))
    else:
        if size_xyz[2] is None:
            raise _thickness_error(path)
        coords = read_coords_txt(path) - np.floor(np.asarray(size_xyz, dtype=np.float64) / 2.0)
    return PickSet(coords=coords, label=label or DEFAULT_LABEL)


def _thickness_error(path) -> InputError:
    return InputError(
        "these picks count z from the corner of the tomogram they were made in, whose thickness is unknown",
        source=path,
        fix=f"give the tomogram's thickness (unbinned px) as `{THICKNESS_KEY}` in its input.tomograms entry "
            "(or `tomogram:` the tomogram itself, or IMOD `tilt_com:`)")


def check_inside(coords: np.ndarray, size_xyz, source) -> None:
    """:class:`InputError` if a pick lies outside the ``size_xyz`` tomogram (px from its centre)."""
    size = np.array([np.nan if s is None else s for s in size_xyz], dtype=np.float64)
    lo = -np.floor(size / 2.0) - 0.5
    hi = size - np.floor(size / 2.0) - 0.5
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(np.any((coords < lo) | (coords > hi), axis=1))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"{len(bad)} of {len(coords)} picks lie outside the {tuple(size_xyz)} px tomogram "
                         f"(pick {i}: {np.round(coords[i], 1).tolist()} px from its centre)", source=source,
                         fix="check the picks' pixel size (unbinned?), origin (corner vs centre) and the "
                             f"declared tomogram thickness (`{THICKNESS_KEY}`)")


def read_picks(path: str | os.PathLike, *, tomo_name: str, tomogram_shape_unbin_xyz, apix_unbin: float,
               label: str | None = None, allow_empty: bool = False) -> PickSet:
    """Read the picks of tomogram ``tomo_name`` from an EMAN2 info json, a RELION 4/5 STAR or text.

    Parameters
    ----------
    tomogram_shape_unbin_xyz : (nx, ny, nz)
        The tomogram the picks were made in, unbinned px; ``nz`` may be None when unknown
        (formats counting z from the corner then raise an :class:`InputError` asking for it).
    apix_unbin : float
        Pixel size of the tilt series (Å); RELION Å coordinates are converted with it.
    label : str, optional
        EMAN2 json: the class to read (required when it holds several); others: the label given.
    allow_empty : bool
        Accept a file without picks (per-tomogram config key ``allow_empty_picks``).

    Raises
    ------
    InputError
        Empty set (unless ``allow_empty``), several tomograms in a STAR without one named
        ``tomo_name``, a pick outside the tomogram, unknown thickness for corner-based picks.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError("picks file does not exist", source=path, fix="check the path in the config")
    fmt = picks_format(path)
    size = tuple(tomogram_shape_unbin_xyz)
    if fmt == "eman2_json":
        picks = _eman2_json(path, label, float(apix_unbin))
    elif fmt == "relion_star":
        picks = _relion_star(path, tomo_name, size, float(apix_unbin), label)
    else:
        picks = _text(path, size, label)
    if len(picks) == 0 and not allow_empty:
        raise InputError(f"no picks for tomogram {tomo_name!r}", source=path,
                         fix=f"give a picks file with particles, or set `{EMPTY_KEY}: true` in the tomogram's "
                             "entry to run on without (e.g. when template matching finds nothing)")
    check_inside(picks.coords, size, path)
    return picks


def declared_thickness_unbin(entry, apix_unbin: float, image_yx: tuple[int, int] | None = None) -> int | None:
    """The thickness (unbinned px) of the tomogram a user's picks refer to, or None.

    From, in this order: the entry's ``thickness_unbin_px`` (RELION's ``rlnTomoSizeZ`` for
    ``input.source: relion5``), IMOD ``tilt.com`` ``THICKNESS`` (unbinned px: ``tilt`` man page,
    IMAGEBINNED), the ``tomogram`` made elsewhere (its thickness axis found from the tilt images'
    size ``image_yx`` as :func:`emflow.sta.tomo.imod_tomogram_layout` does, × ``tomogram_bin``, or
    × the ratio of its voxel size to the tilt series' when the bin is not given).
    """
    get = entry.get if hasattr(entry, "get") else lambda k: getattr(entry, k, None)
    if get(THICKNESS_KEY):
        return int(get(THICKNESS_KEY))
    if get("tilt_com"):
        for line in pathlib.Path(get("tilt_com")).read_text(errors="replace").splitlines():
            parts = line.split()
            if parts and parts[0].upper() == "THICKNESS" and len(parts) > 1:
                return int(round(float(parts[1])))
    if get("tomogram"):
        h = read_mrc_header(get("tomogram"))
        if get("tomogram_bin"):
            b = int(get("tomogram_bin"))
        elif h["apix"] > 0:
            b = max(1, int(round(h["apix"] / apix_unbin)))
        else:
            raise InputError("the tomogram has no voxel size and no tomogram_bin is given", source=get("tomogram"),
                             fix="set `tomogram_bin` in its input.tomograms entry")
        nz, ny, _ = h["shape"]
        if image_yx is None:
            return int(nz) * b
        from emflow.sta.tomo import imod_tomogram_layout

        try:
            layout = imod_tomogram_layout(tuple(h["shape"]), (image_yx[0] // b, image_yx[1] // b))
        except ValueError as exc:
            raise InputError(f"cannot tell the tomogram's thickness axis: {exc}", source=get("tomogram"),
                             fix=f"set `{THICKNESS_KEY}` (unbinned px) in its input.tomograms entry") from None
        return int(ny if layout == "raw" else nz) * b
    return None
