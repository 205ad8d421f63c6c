"""Files of a subtilt refinement run (EMAN names; spec §3.6): particle tables and alignment lists.

* ``particle_info_3d.lst``: ``idx  particles3d/<tomo>__<label>.hdf  {"class", "coord", "group", "idx2d"}``
  (``coord`` px of the particle sampling from the tomogram centre).
* ``particle_info_2d.lst``: ``idx  particles/<tomo>__<label>.hdf  {"idx3d", "xform.projection", "tilt_id",
  "defocus"}`` (extraction transform ``P_k``, residual shift ``d_k``).
* ``aliptcls3d_XX.lst``: per particle ``{"class", "xform.align3d" (= T⁻¹), "score"}``;
  ``aliptcls2d_XX.lst``: per subtilt ``{"class", "ptcl3d_id", "tilt_id", "xform.projection"`` (the model
  transform ``Dr·P·R`` with shift ``s``), ``"dxf"`` (``Dr``, ``ds``), ``"score"``, ``"defocus"`` (µm,
  flip defocus + offset), ``"ddefocus"``}.
"""

from __future__ import annotations

import os

import numpy as np

from emflow import fourier
from emflow.errors import InputError
from emflow.io import (
    LstEntry,
    ctf_from_dict,
    read_hdf_stack,
    read_lst,
    read_mrc,
    transform_from_dict,
    transform_to_dict,
    write_lst,
)
from emflow.sta.spt_refine import ParticleTable, RefineState

__all__ = ["gather_metadata", "write_tables", "read_tables", "write_state", "read_state", "ImageLoader",
           "read_map", "load_reference", "goldcontinue_half_paths", "starting_references"]


def _headers_only(path: str) -> list[dict]:
    import h5py

    from emflow.io.hdf import _read_header  # same package; avoids decoding every image

    with h5py.File(path, "r") as f:
        g = f["MDF/images"]
        keys = sorted((k for k in g.keys() if k.isdigit()), key=int)
        # _read_header walks the attributes by index with the low-level API: it takes the group id
        return [_read_header(g[k].id) for k in keys]


def gather_metadata(set_entries, shrink: float = 1.0, maxtilt_deg: float = 90.0, source=None) -> ParticleTable:
    """Build the table from a set's .lst records (``class`` from the record, else index parity).

    ``shrink`` converts the headers' unbinned ``ptcl_source_coord`` to particle px; subtilts with
    tilt above ``maxtilt_deg`` are dropped.
    """
    cache: dict[str, list] = {}
    p3 = dict(path3d=[], idx3d=[], cls=[], group=[], coord=[])
    p2 = dict(path2d=[], idx2d=[], ptcl=[], tilt_id=[], proj=[], proj_shift=[], defocus_um=[])
    groups: dict[str, int] = {}
    for i, e in enumerate(set_entries):
        if e.path not in cache:
            if not os.path.exists(e.path):
                raise InputError(f"particle file {e.path} of the set does not exist", source=source,
                                 fix="re-run extraction or fix the paths in the set")
            cache[e.path] = _headers_only(e.path)
        heads = cache[e.path]
        if e.index >= len(heads):
            raise InputError(f"set entry {i} points to image {e.index} of {e.path}, which has {len(heads)}",
                             source=source)
        h = heads[e.index]
        src = h.get("class_ptcl_src") or h.get("file_twod")
        if src not in cache:
            cache[src] = _headers_only(src)
        groups.setdefault(e.path, len(groups))
        p3["path3d"].append(e.path)
        p3["idx3d"].append(e.index)
        p3["cls"].append(int(e.meta.get("class", i % 2)))
        p3["group"].append(groups[e.path])
        p3["coord"].append(np.asarray(h.get("ptcl_source_coord", [0, 0, 0]), float) / shrink)
        for k in np.atleast_1d(h.get("class_ptcl_idxs", [])):
            s = cache[src][int(k)]
            R, t = transform_from_dict(s["xform.projection"], source=src)
            if abs(np.degrees(np.arccos(np.clip(R[2, 2], -1, 1)))) > maxtilt_deg + 1e-6:
                continue
            ctf = s.get("ctf")
            df = ctf_from_dict(ctf, source=src)["defocus"] if ctf else np.nan
            p2["path2d"].append(src)
            p2["idx2d"].append(int(k))
            p2["ptcl"].append(i)
            p2["tilt_id"].append(int(s.get("tilt_id", 0)))
            p2["proj"].append(R)
            p2["proj_shift"].append(t[:2])
            p2["defocus_um"].append(float(df))
    arr = {k: (v if k.startswith("path") else np.asarray(v)) for k, v in {**p3, **p2}.items()}
    arr["proj"] = arr["proj"].reshape(-1, 3, 3)
    arr["proj_shift"] = arr["proj_shift"].reshape(-1, 2)
    arr["coord"] = arr["coord"].reshape(-1, 3)
    return ParticleTable(**arr)


def write_tables(table: ParticleTable, path3d: str, path2d: str) -> None:
    """``particle_info_3d.lst`` and ``particle_info_2d.lst``."""
    rows = [np.flatnonzero(table.ptcl == i) for i in range(table.n3d)]
    write_lst(path3d, [LstEntry(int(table.idx3d[i]), table.path3d[i],
                                {"class": int(table.cls[i]), "coord": table.coord[i].tolist(),
                                 "group": int(table.group[i]), "idx2d": rows[i].tolist()})
                       for i in range(table.n3d)])
    write_lst(path2d, [LstEntry(int(table.idx2d[k]), table.path2d[k],
                                {"idx3d": int(table.ptcl[k]), "tilt_id": int(table.tilt_id[k]),
                                 "xform.projection": transform_to_dict(table.proj[k], table.proj_shift[k]),
                                 "defocus": (float(table.defocus_um[k]) if np.isfinite(table.defocus_um[k])
                                             else None)})
                       for k in range(table.n2d)])


def read_tables(path3d: str, path2d: str) -> ParticleTable:
    """Inverse of :func:`write_tables`."""
    e3, e2 = read_lst(path3d), read_lst(path2d)
    xf = [transform_from_dict(e.meta["xform.projection"], source=path2d) for e in e2]
    return ParticleTable(
        path3d=[e.path for e in e3], idx3d=np.array([e.index for e in e3]),
        cls=np.array([e.meta["class"] for e in e3]), group=np.array([e.meta["group"] for e in e3]),
        coord=np.array([e.meta["coord"] for e in e3], float).reshape(-1, 3),
        path2d=[e.path for e in e2], idx2d=np.array([e.index for e in e2]),
        ptcl=np.array([e.meta["idx3d"] for e in e2]), tilt_id=np.array([e.meta["tilt_id"] for e in e2]),
        proj=np.array([x[0] for x in xf]).reshape(-1, 3, 3), proj_shift=np.array([x[1][:2] for x in xf]).reshape(-1, 2),
        defocus_um=np.array([np.nan if e.meta.get("defocus") is None else e.meta["defocus"] for e in e2], float))


def write_state(table: ParticleTable, state: RefineState, path3d: str, path2d: str) -> None:
    """``aliptcls3d_XX.lst`` and ``aliptcls2d_XX.lst`` (module docstring)."""
    e3 = []
    for i in range(table.n3d):
        Ri, ti = state.rot[i].T, -state.rot[i].T @ state.shift[i]
        e3.append(LstEntry(int(table.idx3d[i]), table.path3d[i],
                           {"class": int(table.cls[i]), "xform.align3d": transform_to_dict(Ri, ti),
                            "score": float(state.score3d[i])}))
    rot, sh = state.subtilt_transforms(table)
    e2 = []
    for k in range(table.n2d):
        df = table.defocus_um[k]
        e2.append(LstEntry(int(table.idx2d[k]), table.path2d[k], {
            "class": int(table.cls[table.ptcl[k]]), "ptcl3d_id": int(table.ptcl[k]), "tilt_id": int(table.tilt_id[k]),
            "xform.projection": transform_to_dict(rot[k], sh[k]),
            "dxf": transform_to_dict(state.drot[k], state.dshift[k]), "score": float(state.score2d[k]),
            "ddefocus": float(state.ddef_um[k]),
            "defocus": None if not np.isfinite(df) else float(df + state.ddef_um[k])}))
    write_lst(path3d, e3)
    write_lst(path2d, e2)


def read_state(table: ParticleTable, path3d: str, path2d: str) -> RefineState:
    """Inverse of :func:`write_state`."""
    e3, e2 = read_lst(path3d), read_lst(path2d)
    if len(e3) != table.n3d or len(e2) != table.n2d:
        raise InputError(f"{len(e3)}/{len(e2)} rows but the run has {table.n3d}/{table.n2d} particles/subtilts",
                         source=path3d, fix="the alignment lists belong to another run; delete the run folder")
    a = [transform_from_dict(e.meta["xform.align3d"], source=path3d) for e in e3]
    d = [transform_from_dict(e.meta["dxf"], source=path2d) for e in e2]
    rot = np.array([x[0].T for x in a]).reshape(-1, 3, 3)
    return RefineState(rot=rot, shift=np.array([-(x[0].T @ x[1]) for x in a]).reshape(-1, 3),
                       score3d=np.array([e.meta["score"] for e in e3], float),
                       drot=np.array([x[0] for x in d]).reshape(-1, 3, 3),
                       dshift=np.array([x[1][:2] for x in d]).reshape(-1, 2),
                       score2d=np.array([e.meta["score"] for e in e2], float),
                       ddef_um=np.array([e.meta.get("ddefocus", 0.0) for e in e2], float))


class ImageLoader:
    """``loader(rows) -> (k, b, b)`` subtilts of table rows, read from their HDF files, clipped to ``box``."""

    def __init__(self, table: ParticleTable, box: int):
        self.table, self.box = table, int(box)

    def __call__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.box, self.box), np.float32)
        paths = np.array(self.table.path2d, dtype=object)[rows]
        for p in dict.fromkeys(paths):
            sel = np.flatnonzero(paths == p)
            img, _ = read_hdf_stack(p, self.table.idx2d[rows[sel]])
            out[sel] = fourier.crop(img, (len(sel), self.box, self.box))
        return out


def read_map(path: str) -> tuple[np.ndarray, float | None]:
    """A 3D map from MRC or EMAN2 HDF (first image) and its Å/px (None if unknown)."""
    if str(path).endswith(".hdf"):
        img, h = read_hdf_stack(path, [0])
        return img[0].astype(np.float32), h[0].get("apix_x")
    return read_mrc(path)


def load_reference(path: str, box: int, apix: float, key: str = "spt_refine.ref",
                   override: float | None = None) -> np.ndarray:
    """A reference map (MRC or EMAN2 HDF, any pixel size and box) on the particles' grid.

    The pixel size comes from the map's own header (:func:`emflow.resample.read_user_map`: a missing or
    1.0 Å default is an InputError naming the file, unless ``override``, the user's
    ``input.apix_override`` value for it, is given); the map is Fourier-resampled to ``apix`` and
    clipped/padded to ``box`` about its centre voxel ``n//2`` (:func:`emflow.resample.resample_map`).

    Returns
    -------
    (box, box, box) float32
    """
    from emflow.resample import read_user_map, resample_map

    vol, a = read_user_map(path, key, override)
    return resample_map(vol, a, apix, box)


def goldcontinue_half_paths(ref: str) -> tuple[str, str]:
    """The even/odd half maps of a reference to continue from (EMAN ``--goldcontinue``:
    ``<ref minus extension>_even.hdf`` / ``_odd.hdf``; e2spt_refine_new.py L166). A half map with the
    reference's own extension is preferred when it exists (``threed_05_even.mrc`` beside ``threed_05.mrc``)."""
    stem, ext = os.path.splitext(str(ref))
    out = []
    for half in ("even", "odd"):
        same = f"{stem}_{half}{ext}"
        out.append(same if os.path.exists(same) or ext == ".hdf" else f"{stem}_{half}.hdf")
    return out[0], out[1]


def starting_references(ref: str, box: int, apix: float, *, startres: float, goldstandard: bool = True,
                        goldcontinue: bool = False, halves: tuple[str, str] | None = None,
                        key: str = "spt_refine.ref", overrides: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The even and odd references of iteration 1 (``threed_00_even/odd``; e2spt_refine_new.py L159-191).

    * ``goldcontinue``: the half maps ``halves`` (default :func:`goldcontinue_half_paths`) of the run
      being continued, each resampled to the particles' grid and used unfiltered, so the two halves
      keep their independent noise and the gold-standard FSC stays honest.
    * ``goldstandard`` (not continuing): the reference tophat-filtered at ``startres`` Å for both
      halves: identical below ``startres``, zero (hence independent) beyond it.
    * neither: the unfiltered reference for both halves (EMAN warns of model bias; so do we, in the log).

    ``overrides`` maps file paths to the user's pixel sizes (``input.apix_override``).
    Both are normalised to their edge mean and softly masked (sphere of 0.45·box), as EMAN's
    ``normalize.edgemean`` + ``mask.soft``.

    Returns
    -------
    even, odd : (box, box, box) float32
    """
    from emflow import filters, masks

    sphere = masks.soft_sphere(box, box * 0.45, box * 0.04)
    overrides = overrides or {}

    def load(path):
        return load_reference(path, box, apix, key, overrides.get(str(path)))

    def prep(vol):
        return (filters.normalize_edgemean(vol) * sphere).astype(np.float32)

    if goldcontinue:
        paths = halves or goldcontinue_half_paths(ref)
        for p in paths:
            if not os.path.isfile(p):
                raise InputError(f"goldcontinue needs the half maps of the run to continue; {p} does not exist",
                                 source=key, fix="point spt_refine.ref at a map whose _even/_odd halves exist "
                                 "(e.g. results/spt/spt_01/threed_05.hdf), or set spt_refine.goldcontinue: false")
        return prep(load(paths[0])), prep(load(paths[1]))
    vol = prep(load(ref))
    if goldstandard:
        vol = filters.lowpass_tophat(vol, apix, startres).astype(np.float32)
    return vol, vol.copy()
