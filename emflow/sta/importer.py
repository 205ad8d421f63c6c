"""Turn user inputs (IMOD .tlt/.xf, STAR or text picks, EMAN2 info json) into one EMAN2 info json.

Every later stage reads a tomogram's geometry, CTF and picks from ``info/<name>_info.json``
(EMAN2's layout, spec §3.0), whatever the user started from. This module builds that dict.

Conventions
-----------
* ``tlt_params`` rows are ``[tx, ty, rot, tilt, offtilt]`` (EMAN2): a point ``p`` (unbinned px from
  the tomogram centre) lands in raw tilt image ``i`` at ``(R_i p)_xy + (tx, ty) + centre`` with
  ``R_i = emflow.geometry.tilt_matrix(tilt, rot, offtilt)``.
* An IMOD ``.xf`` row ``[[A11, A12, DX], [A21, A22, DY]]`` maps raw to aligned image coordinates
  about the image centre: ``a = A r + d``. With the tilt axis along y in the aligned image,
  ``r = A⁻¹ (a − d)``, so ``Rz(rot)`` (EMAN's passive z rotation) is ``A⁻¹`` and ``(tx, ty) = −A⁻¹ d``.
* Picks are read by :func:`emflow.sta.import_picks.read_picks` (every format, its origin and
  label); corner-based formats need the declared thickness ``thickness_unbin_px`` of the tomogram
  they were picked in (None: unknown).
"""

from __future__ import annotations


import numpy as np

from emflow.errors import InputError
from emflow.io import add_boxes, read_info_json, read_tlt, read_xf
from emflow.io.relion_tomo import read_tilt_series_star, relion_tilt_series_info
from emflow.sta.import_picks import read_picks


def xf_to_tlt_params(xf: np.ndarray, tilts_deg: np.ndarray) -> np.ndarray:
    """IMOD ``.xf`` ``(n, 2, 3)`` + tilt angles ``(n,)`` → EMAN2 ``tlt_params`` ``(n, 5)``."""
    xf = np.asarray(xf, dtype=np.float64)
    a_inv = np.linalg.inv(xf[:, :, :2])
    shift = -np.einsum("nij,nj->ni", a_inv, xf[:, :, 2])
    # tilt_matrix's z rotation is EMAN's passive Rz(rot) = [[c, s], [-s, c]]
    rot = np.degrees(np.arctan2(-a_inv[:, 1, 0], a_inv[:, 0, 0]))
    return np.column_stack([shift, rot, np.asarray(tilts_deg, dtype=np.float64), np.zeros(len(xf))])


def build_info(
    *,
    name: str,
    shape_xy: tuple[int, int],
    apix: float,
    voltage_kv: float,
    cs_mm: float,
    tlt: str | None = None,
    xf: str | None = None,
    info_json: str | None = None,
    picks: str | None = None,
    defocus_um: float | None = None,
    thickness_unbin_px: int | None = None,
    pick_label: str | None = None,
    allow_empty_picks: bool = False,
    tilt_series_star: str | None = None,
    ampcont: float = 0.1,
) -> dict:
    """Assemble the EMAN2 info dict of one tomogram from whatever the user supplied.

    Precedence: an existing info json's keys are kept; a ``.tlt`` replaces its tilt angles, an
    ``.xf`` its shifts and axis rotation; ``defocus_um`` fills a missing per-tilt defocus.
    """
    info: dict = read_info_json(info_json) if info_json else {}
    if tilt_series_star:  # RELION 5 per-tilt-series STAR: geometry, CTF, exposure (emflow.io.relion_tomo)
        info.update(relion_tilt_series_info(read_tilt_series_star(
            tilt_series_star, name, apix=apix, voltage_kv=voltage_kv, cs_mm=cs_mm, ampcont=ampcont), shape_xy))
    if tlt:
        tilts = read_tlt(tlt)
    elif info.get("tlt_params"):
        tilts = np.array([row[3] for row in info["tlt_params"]], dtype=np.float64)
    else:
        raise InputError("no tilt angles: neither a .tlt file nor tlt_params in an info json",
                         source=f"config entry for tomogram {name!r}", fix="add `tlt: <file>.tlt`")
    n = len(tilts)
    if xf:
        xforms = read_xf(xf)
        if len(xforms) != n:
            raise InputError(f"has {len(xforms)} transforms but the tilt series has {n} tilt angles",
                             source=xf, fix="use the .xf made for this tilt series")
        params = xf_to_tlt_params(xforms, tilts)
    elif info.get("tlt_params") and len(info["tlt_params"]) == n:
        params = np.array([row[:5] for row in info["tlt_params"]], dtype=np.float64)
        params[:, 3] = tilts
    else:
        params = np.column_stack([np.zeros((n, 3)), tilts, np.zeros(n)])
    info["tlt_params"] = params.tolist()
    info["apix_unbin"] = float(apix)
    info.setdefault("voltage", float(voltage_kv))
    info.setdefault("cs", float(cs_mm))
    if "defocus" not in info and defocus_um is not None:
        info["defocus"] = [float(defocus_um)] * n
        info["phase"] = [0.0] * n
    if picks:  # emflow.sta.import_picks: every format, its origin, label and box size
        shape = (shape_xy[0], shape_xy[1], thickness_unbin_px)
        labels = [pick_label]
        if picks == info_json and pick_label is None:  # an EMAN2 project's own json: every class, each checked
            labels = sorted({c["name"] for c in (info.get("class_list") or {}).values()}) or [None]
        for label in labels:
            ps = read_picks(picks, tomo_name=name, tomogram_shape_unbin_xyz=shape, apix_unbin=apix, label=label,
                            allow_empty=allow_empty_picks)
            add_boxes(info, ps.coords, ps.label, ps.boxsize_unbin, method="manual", scores=ps.scores, replace=True)
    return info
