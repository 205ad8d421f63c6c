"""Turn user inputs (IMOD .tlt/.xf/.defocus/tilt.com, STAR or text picks, EMAN2 info json) into one
EMAN2 info json.

Every later stage reads a tomogram's geometry, CTF and picks from ``info/<name>_info.json``
(EMAN2's layout, spec §3.0), whatever the user started from. This module builds that dict, and it is
the ONE place where IMOD's conventions are converted to EMAN2's (``docs/CONVENTIONS.md``,
"IMOD ↔ EMAN2", has the table and the sources; ``tests/test_conventions_imod.py`` checks each row
against fixtures written from IMOD's documentation in ``tests/foreign/imod.py``).

Conventions
-----------
* ``tlt_params`` rows are ``[tx, ty, rot, tilt, offtilt]`` (EMAN2): a point ``p`` (unbinned px from
  the tomogram centre) lands in raw tilt image ``i`` at ``(R_i p)_xy + (tx, ty) + centre`` with
  ``R_i = emflow.geometry.tilt_matrix(tilt, rot, offtilt)`` (EMAN ``Transform`` type ``xyz``,
  ``libEM/transform.cpp`` L682-692: ``x' = x cos(ytilt) - z sin(ytilt)``).
* **Tilt sense.** IMOD's ``tilt`` back-projects a point at ``(X, Z)`` of its raw output slice onto
  ``X cos θ - Z sin θ`` (``flib/tilt/tilt.f90`` L3175 ``sinBeta = -sin(θ)``, L1240/L1335
  ``xproj = X cos β + Z sinBeta``), and that raw output (X, Z-row, Y-view) is the specimen turned by
  90° about X "with no change in handedness" (``tilt`` man page, DESCRIPTION); ``clip rotx`` (-90°
  about X, keeps the hand) gives the usual x, y, z tomogram, in which ``z = -Z``. So in IMOD's
  tomogram frame a tilt image is ``u = x cos θ + z sin θ``; EMAN's ``ytilt`` has the opposite sense:
  **EMAN ytilt = -(IMOD tilt angle)**, with x, y (the aligned image axes, tilt axis along y) and z
  (IMOD's rotated tomogram z) unchanged. RELION 5 agrees: it copies the ``.tlt`` angle into
  ``rlnTomoYTilt`` (``src/align_tiltseries_runner.cpp`` L671-686) and projects with the active
  rotation ``Ry = [[c, 0, s], [0, 1, 0], [-s, 0, c]]`` (``src/jaz/tomography/tomogram.cpp`` L59,
  ``src/jaz/gravis/t3Matrix.h`` L478-496). The defocus gradient follows: for θ > 0 the +x side
  of the aligned image is more underfocused (``mrc/ctfphaseflip.cpp`` L368), which is what
  emflow's depth term ``df - (R p)_z · apix`` gives with this sign.
* An IMOD ``.xf`` row ``[[A11, A12, DX], [A21, A22, DY]]`` maps raw to aligned image coordinates
  about the image centre: ``a = A r + d`` (``newstack`` man page, "transform file"). With the tilt
  axis along y in the aligned image, ``r = A⁻¹ (a − d)``, so ``Rz(rot)`` (EMAN's passive z rotation)
  is ``A⁻¹`` and ``(tx, ty) = −A⁻¹ d`` (RELION 5 ``align_tiltseries_runner.cpp`` L650-653: the same
  shifts). The ``.xf`` shifts are in pixels of the stack the alignment was made for (``newstack``
  divides DX, DY by its ``-bin`` factor itself, ``flib/image/newstack.f90`` L952-961); a tilt
  series binned by ``k`` relative to that stack gets ``d / k`` (``xf_binning``).
* ctfplotter ``.defocus``: nm, underfocus positive → ``info["defocus"]`` µm (EMAN2
  ``e2spt_tomoctf.py`` L525-526 stores ``defocus`` µm and ``phase`` degrees per tilt and no
  astigmatism); with astigmatism (version 3, flag 1) ``defocus`` is the mean of defocus 1 and 2 and
  emflow adds ``dfdiff`` (µm, defocus1 − defocus2) and ``dfang`` (degrees, ctfplotter's astigmatism
  angle, which RELION reads as ``rlnDefocusAngle`` with defocus 1 = U:
  ``src/jaz/tomography/tomo_ctf_helper.cpp`` L83-100), named after EMAN2's ``EMAN2Ctf`` fields.
* Picks are read by :func:`emflow.sta.import_picks.read_picks` (every format, its origin and
  label); corner-based formats (text, RELION 4) need the declared thickness ``thickness_unbin_px``
  of the tomogram they were picked in (``THICKNESS`` of a given ``tilt.com``, which is in unbinned
  px: ``tilt`` man page, IMAGEBINNED; None: unknown).
"""

from __future__ import annotations

import numpy as np

from emflow.errors import InputError
from emflow.io import add_boxes, read_info_json, read_tlt, read_xf
from emflow.io.imod import DefocusTable, read_defocus, read_tilt_com
from emflow.io.relion_tomo import read_tilt_series_star, relion_tilt_series_info
from emflow.sta.import_picks import read_picks

#: EMAN ytilt = IMOD_TILT_SIGN × IMOD tilt angle (module docstring, "Tilt sense").
IMOD_TILT_SIGN = -1.0


def imod_to_tlt_params(tilts_imod_deg, xf=None, *, xf_binning: float = 1.0, angle_offset_deg: float = 0.0,
                       axis_offset_px: float = 0.0) -> np.ndarray:
    """IMOD tilt geometry → EMAN2 ``tlt_params`` ``(n, 5)``: the one IMOD → EMAN conversion.

    Parameters
    ----------
    tilts_imod_deg : array_like (n,)
        Tilt angles as in IMOD's ``.tlt`` (degrees, IMOD's sign).
    xf : ndarray (n, 2, 3), optional
        IMOD ``.xf`` transforms raw → aligned (``[[A11, A12, DX], [A21, A22, DY]]``); None: the
        tilt series is already aligned with the tilt axis along y.
    xf_binning : float
        Binning of the tilt series relative to the stack the ``.xf`` shifts are in (their pixels);
        the shifts are divided by it.
    angle_offset_deg : float
        ``tilt`` OFFSET DELANG, added to every IMOD angle before conversion.
    axis_offset_px : float
        ``tilt`` OFFSET DELXX: the tilt axis crosses the aligned image at ``nx/2 + DELXX`` (px of
        the stack the ``.xf`` is in, like DX).

    Returns
    -------
    ndarray float64 (n, 5): ``[tx, ty, rot, tilt, offtilt]``; ``tilt = -(θ_IMOD + DELANG)``,
    ``Rz(rot) = A⁻¹``, ``(tx, ty) = −A⁻¹ (d − (DELXX, 0)) / xf_binning``, ``offtilt = 0``.
    """
    tilts = np.asarray(tilts_imod_deg, dtype=np.float64).reshape(-1) + float(angle_offset_deg)
    n = tilts.size
    if xf is None:
        xf = np.tile(np.eye(2, 3), (n, 1, 1))
    xf = np.asarray(xf, dtype=np.float64)
    if xf.shape != (n, 2, 3):
        raise ValueError(f"xf must have shape ({n}, 2, 3), got {xf.shape}")
    a_inv = np.linalg.inv(xf[:, :, :2])
    d = (xf[:, :, 2] - np.array([float(axis_offset_px), 0.0])) / float(xf_binning)
    shift = -np.einsum("nij,nj->ni", a_inv, d)
    # tilt_matrix's z rotation is EMAN's passive Rz(rot) = [[c, s], [-s, c]]
    rot = np.degrees(np.arctan2(-a_inv[:, 1, 0], a_inv[:, 0, 0]))
    return np.column_stack([shift, rot, IMOD_TILT_SIGN * tilts, np.zeros(n)])


def tlt_params_to_imod(params) -> tuple[np.ndarray, np.ndarray]:
    """EMAN2 ``tlt_params`` ``(n, 5)`` → IMOD ``(.tlt angles (n,), .xf (n, 2, 3))``: the inverse of
    :func:`imod_to_tlt_params` (export; off-axis tilts cannot be written to a ``.xf``)."""
    p = np.asarray(params, dtype=np.float64).reshape(-1, 5)
    if np.any(np.abs(p[:, 4]) > 1e-9):
        raise ValueError("tlt_params with off-axis tilt (column 4) have no IMOD .tlt/.xf equivalent")
    c, s = np.cos(np.radians(p[:, 2])), np.sin(np.radians(p[:, 2]))
    A = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # A = Rz(rot)^-1
    d = -np.einsum("nij,nj->ni", A, p[:, :2])
    return IMOD_TILT_SIGN * p[:, 3], np.concatenate([A, d[:, :, None]], axis=2)


def imod_defocus_per_view(table: DefocusTable, n_views: int, *, source=None) -> dict[str, list[float]]:
    """Per-view CTF of a ctfplotter table, in the info json's units (module docstring).

    Each row applies to views ``view_start..view_end`` (numbered from 1); views no row covers get
    the defocus linearly interpolated between their nearest estimated neighbours, or the nearest
    one at the ends (as ``ctfphaseflip`` does, ``mrc/ctfphaseflip.cpp`` L242-262). Returns
    ``defocus`` (µm, mean of defocus 1 and 2), ``phase`` (deg), ``dfdiff`` (µm, defocus1 − defocus2)
    and ``dfang`` (deg).
    """
    if int(table.view_end.max()) > n_views:
        raise InputError(f"has defocus for view {int(table.view_end.max())} but the tilt series has "
                         f"{n_views} views", source=source, fix="use the .defocus file of this tilt series")
    cols = {"defocus": (table.defocus1_nm + table.defocus2_nm) / 2000.0, "phase": table.phase_deg,
            "dfdiff": (table.defocus1_nm - table.defocus2_nm) / 1000.0, "dfang": table.astig_angle_deg}
    known = np.zeros(n_views, bool)
    vals = {k: np.zeros(n_views) for k in cols}
    for r in range(len(table.view_start)):
        sl = slice(int(table.view_start[r]) - 1, int(table.view_end[r]))
        known[sl] = True
        for k, v in cols.items():
            vals[k][sl] = v[r]
    idx = np.flatnonzero(known)
    views = np.arange(n_views)
    return {k: np.interp(views, idx, v[idx]).tolist() for k, v in vals.items()}


TILT_COM_UNSUPPORTED = {
    "XTILTFILE": "variable X-axis tilts", "LOCALFILE": "local alignments", "ZFACTORFILE": "Z factors",
}


def tilt_com_geometry(entries: dict, *, source=None) -> dict:
    """The parts of a ``tilt.com`` that decide geometry, checked (``tilt`` man page, OPTIONS).

    Returns ``thickness_unbin_px`` (THICKNESS; IMAGEBINNED scales it, so it is in unbinned px),
    ``image_binned`` (IMAGEBINNED, default 1), ``angle_offset_deg`` / ``axis_offset_px`` (OFFSET
    DELANG, DELXX; DELXX in unbinned px), ``shift_xz_unbin_px`` (SHIFT: the reconstruction moved in
    X and Z), ``full_image_xy`` (FULLIMAGE, unbinned px, or None) and ``parallel`` (PARALLEL output:
    "inverts the handedness"). InputError for what emflow cannot reproduce: a non-zero XAXISTILT,
    XTILTFILE, LOCALFILE or ZFACTORFILE.
    """
    def nums(key, n, default):
        vals = entries.get(key)
        if not vals:
            return list(default)
        try:
            out = [float(v) for v in vals[:n]]
        except ValueError:
            raise InputError(f"{key} {' '.join(vals)} is not numeric", source=source,
                             fix=f"fix the {key} line of tilt.com") from None
        return out + list(default[len(out):])

    for key, what in TILT_COM_UNSUPPORTED.items():
        if key in entries:
            raise InputError(f"uses {key} ({what}), which emflow cannot reproduce", source=source,
                             fix=f"reconstruct in IMOD without {key} (global alignment only), or give the "
                                 "aligned stack and a .tlt without this tilt.com")
    xaxis = nums("XAXISTILT", 1, [0.0])[0]
    if abs(xaxis) > 1e-6:
        raise InputError(f"XAXISTILT {xaxis:g}: a tilt about X of the reconstruction is not supported",
                         source=source, fix="set XAXISTILT 0 in tilt.com and reconstruct again in IMOD, or "
                                            "leave tilt_com out of the config (emflow then reconstructs flat)")
    if "THICKNESS" not in entries:
        raise InputError("no THICKNESS entry", source=source, fix="give the tilt.com used for the reconstruction")
    binned = nums("IMAGEBINNED", 1, [1.0])[0]
    thick = nums("THICKNESS", 1, [0.0])[0]
    delang, delxx = nums("OFFSET", 2, [0.0, 0.0])
    shift = nums("SHIFT", 2, [0.0, 0.0])
    full = nums("FULLIMAGE", 2, [0.0, 0.0]) if "FULLIMAGE" in entries else None
    if thick < 1 or binned < 1 or binned != int(binned):
        raise InputError(f"THICKNESS {thick:g} / IMAGEBINNED {binned:g} are not valid", source=source,
                         fix="give the tilt.com used for the reconstruction")
    return {"thickness_unbin_px": int(round(thick)), "image_binned": int(binned), "angle_offset_deg": delang,
            "axis_offset_px": delxx, "shift_xz_unbin_px": shift,
            "full_image_xy": None if full is None else [int(full[0]), int(full[1])],
            "parallel": "PARALLEL" in entries}


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
    defocus_file: str | None = None,
    tilt_com: str | None = None,
    thickness_unbin_px: int | None = None,
    pick_label: str | None = None,
    allow_empty_picks: bool = False,
    tilt_series_star: str | None = None,
    tomo_hand: float | None = None,
    ampcont: float = 0.1,
) -> dict:
    """Assemble the EMAN2 info dict of one tomogram from whatever the user supplied.

    Precedence: an existing info json's keys are kept; a ``.tlt`` (IMOD angles, converted by
    :func:`imod_to_tlt_params`) replaces its tilt geometry, an ``.xf`` adds the shifts and axis
    rotation; a ctfplotter ``defocus_file`` replaces its CTF; ``defocus_um`` fills a missing per-tilt
    defocus. A ``tilt_com`` adds its OFFSET to the angles, its THICKNESS (unbinned px) sets the z
    extent of corner-origin picks, and its FULLIMAGE, compared with ``shape_xy``, tells how much the
    tilt series is binned relative to the ``.xf`` (InputError when it is not an integer factor).
    The tilt.com geometry is kept under ``info["imod_tilt_com"]``.
    """
    info: dict = read_info_json(info_json) if info_json else {}
    if tilt_series_star:  # RELION 5 per-tilt-series STAR: geometry, CTF, exposure (emflow.io.relion_tomo)
        info.update(relion_tilt_series_info(read_tilt_series_star(
            tilt_series_star, name, apix=apix, voltage_kv=voltage_kv, cs_mm=cs_mm, ampcont=ampcont,
            hand=-1.0 if tomo_hand is None else tomo_hand,  # RELION 4 matrices: rlnTomoSizeX/Y = the images
            size_xyz=None if thickness_unbin_px is None else (*shape_xy, thickness_unbin_px)), shape_xy))
    geo = tilt_com_geometry(read_tilt_com(tilt_com), source=tilt_com) if tilt_com else None
    xf_binning = 1.0
    if geo is not None:
        thickness_unbin_px = geo["thickness_unbin_px"]
        full = geo["full_image_xy"]
        if full and tuple(full) != tuple(shape_xy):
            k = full[0] / shape_xy[0]
            if not (k >= 1 and abs(k - round(k)) < 1e-6 and full[1] // round(k) == shape_xy[1]):
                raise InputError(f"FULLIMAGE {full[0]} {full[1]} is not an integer binning of the tilt series "
                                 f"({shape_xy[0]} x {shape_xy[1]} px)", source=tilt_com,
                                 fix="give the raw tilt series the .xf was made for (or a binned copy of it)")
            xf_binning = float(round(k))
        info["imod_tilt_com"] = geo | {"xf_binning": xf_binning}
    if tlt:
        imod_tilts = read_tlt(tlt)
    elif info.get("tlt_params"):
        imod_tilts = None
    else:
        raise InputError("no tilt angles: neither a .tlt file nor tlt_params in an info json",
                         source=f"config entry for tomogram {name!r}", fix="add `tlt: <file>.tlt`")
    n = len(imod_tilts) if imod_tilts is not None else len(info["tlt_params"])
    xforms = None
    if xf:
        xforms = read_xf(xf)
        if len(xforms) != n:
            raise InputError(f"has {len(xforms)} transforms but the tilt series has {n} tilt angles",
                             source=xf, fix="use the .xf made for this tilt series")
    if imod_tilts is not None:
        params = imod_to_tlt_params(
            imod_tilts, xforms, xf_binning=xf_binning,
            angle_offset_deg=geo["angle_offset_deg"] if geo else 0.0,
            axis_offset_px=geo["axis_offset_px"] if geo else 0.0)
        if xforms is None and info.get("tlt_params") and len(info["tlt_params"]) == n:
            old = np.array([row[:5] for row in info["tlt_params"]], dtype=np.float64)
            params[:, :3] = old[:, :3]  # keep the info json's shifts and axis rotation
    else:
        params = np.array([row[:5] for row in info["tlt_params"]], dtype=np.float64)
        if xforms is not None:
            raise InputError("an .xf needs the IMOD .tlt of the same alignment", source=xf,
                             fix="add `tlt: <file>.tlt` (the .tlt tiltalign wrote with this .xf)")
    info["tlt_params"] = params.tolist()
    info["apix_unbin"] = float(apix)
    info.setdefault("voltage", float(voltage_kv))
    info.setdefault("cs", float(cs_mm))
    if defocus_file:
        info.update(imod_defocus_per_view(read_defocus(defocus_file), n, source=defocus_file))
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
