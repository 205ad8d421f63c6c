"""EMAN2 tomography project files written from EMAN2's own definitions (no emflow imports).

Layouts (EMAN2, github.com/cryoem/eman2):

* ``tiltseries/<name>.hdf``: one 2D image per tilt, what ``e2import.py --import_tiltseries``
  writes (``programs/e2import.py`` L477 ``img["apix_x"]=options.apix``, L485
  ``img.write_image(newname,seq)``). HDF5 layout of ``libEM/io/hdfio2.cpp``: group
  ``/MDF/images`` with attribute ``imageid_max`` (last index), one group per image
  ``/MDF/images/<i>`` holding the dataset ``image`` ``(ny, nx)`` and the header as attributes
  ``EMAN.<key>`` (floats as 1-element float32 arrays, ints as int32).
* ``info/<name>_info.json``: ``tlt_params`` rows ``[tx, ty, ztilt, ytilt, xtilt]`` (``programs/e2tomogram.py``
  L745 ``js["tlt_params"]=tpm.tolist()``; a 3D point ``p`` from the tomogram centre appears in tilt
  image i at ``Transform({"type":"xyz","xtilt":tpm[4],"ytilt":tpm[3],"ztilt":tpm[2],"tx":tpm[0],
  "ty":tpm[1]}).transform(p)``, ``get_xf_pos`` L1449-1453), ``apix_unbin``, ``defocus`` (µm) and
  ``phase`` (deg) per tilt, ``boxes_3d`` rows ``[x, y, z, method, score, class_id]`` in unbinned px
  from the tomogram centre and ``class_list`` ``{id: {"name", "boxsize"}}`` (``programs/e2spt_extract.py``
  L357-391).

:func:`xyz_transform` is EMAN's ``"xyz"`` rotation (``libEM/transform.cpp`` L682-692).
"""

from __future__ import annotations

import json
import pathlib

import h5py
import numpy as np


def xyz_transform(xtilt: float, ytilt: float, ztilt: float) -> np.ndarray:
    """``Transform({"type": "xyz", ...})`` rotation matrix (transform.cpp L682-692)."""
    cx, sx = np.cos(np.radians(xtilt)), np.sin(np.radians(xtilt))
    cy, sy = np.cos(np.radians(ytilt)), np.sin(np.radians(ytilt))
    cz, sz = np.cos(np.radians(ztilt)), np.sin(np.radians(ztilt))
    return np.array([
        [cy * cz, cx * sz + sx * sy * cz, sx * sz - cx * sy * cz],
        [-cy * sz, cx * cz - sx * sy * sz, sx * cz + cx * sy * sz],
        [sy, -sx * cy, cx * cy]])


def xf_pos(tpm, p) -> np.ndarray:
    """``get_xf_pos`` (e2tomogram.py L1449-1453): tilt-image position (px from the image centre)."""
    tx, ty, ztilt, ytilt, xtilt = tpm[:5]
    return (xyz_transform(xtilt, ytilt, ztilt) @ np.asarray(p, dtype=np.float64))[:2] + [tx, ty]


def write_hdf_images(path, images, apix: float, headers=None) -> None:
    """EMAN2 HDF stack of 2D images (hdfio2.cpp layout)."""
    images = np.asarray(images, dtype=np.float32)
    with h5py.File(path, "w") as f:
        g = f.create_group("MDF/images")
        g.attrs.create("imageid_max", np.array([len(images) - 1], dtype=np.int32))
        for i, img in enumerate(images):
            gi = g.create_group(str(i))
            gi.create_dataset("image", data=img)
            hdr = {"apix_x": apix, "apix_y": apix, "apix_z": apix, "nx": img.shape[1], "ny": img.shape[0],
                   "nz": 1, **((headers or [{}] * len(images))[i])}
            for k, v in hdr.items():
                if isinstance(v, (int, np.integer)):
                    gi.attrs.create(f"EMAN.{k}", np.array([v], dtype=np.int32))
                else:
                    gi.attrs.create(f"EMAN.{k}", np.array([v], dtype=np.float32))


def write_info_json(path, *, tlt_params, apix_unbin, defocus=None, phase=None, boxes=None, class_list=None,
                    tlt_file=None) -> None:
    """``info/<name>_info.json`` as e2tomogram.py / e2spt_boxer.py write it (indent 0, sorted keys)."""
    js: dict = {"tlt_params": np.asarray(tlt_params, dtype=float).tolist(), "apix_unbin": float(apix_unbin)}
    if defocus is not None:
        js["defocus"] = [float(v) for v in defocus]
        js["phase"] = [float(v) for v in (phase if phase is not None else np.zeros(len(defocus)))]
    if boxes is not None:
        js["boxes_3d"] = [[float(b[0]), float(b[1]), float(b[2]), str(b[3]), float(b[4]), int(b[5])] for b in boxes]
        js["class_list"] = {str(k): {"name": v["name"], "boxsize": int(v["boxsize"])}
                            for k, v in (class_list or {}).items()}
    if tlt_file:
        js["tlt_file"] = str(tlt_file)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps(js, indent=0, sort_keys=True))


def write_project(root, name, *, stack, apix, tlt_params, defocus=None, boxes=None, class_list=None,
                  hdf=True) -> pathlib.Path:
    """An EMAN2 project folder ``root/{tiltseries,info}`` for one tilt series; returns ``root``."""
    root = pathlib.Path(root)
    (root / "tiltseries").mkdir(parents=True, exist_ok=True)
    ts = root / "tiltseries" / f"{name}.{'hdf' if hdf else 'mrc'}"
    if hdf:
        write_hdf_images(ts, stack, apix)
    else:
        import mrcfile
        with mrcfile.new(ts, overwrite=True) as m:
            m.set_data(np.asarray(stack, dtype=np.float32))
            m.voxel_size = apix
    write_info_json(root / "info" / f"{name}_info.json", tlt_params=tlt_params, apix_unbin=apix, defocus=defocus,
                    boxes=boxes, class_list=class_list, tlt_file=f"tiltseries/{ts.name}")
    return root
