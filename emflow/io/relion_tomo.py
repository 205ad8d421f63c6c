"""RELION 4/5 tomography STAR files ↔ emflow (EMAN2 ``tlt_params`` and centred unbinned px).

Every RELION convention is converted here, in one function each; the tests
(``tests/test_conventions_relion.py``) rebuild RELION's own formulas and cite them.

Tilt-series geometry (RELION 5 ``src/jaz/tomography/tomogram.cpp`` L17-62, ``setProjectionMatrix``)
    ``P = S(shift/apix) · S(image_centre) · Rz(ZRot) · Ry(YTilt) · Rx(XTilt) · S(−specimen_centre)``
    with active right-handed rotations in degrees (``gravis/t3Matrix.h`` L478-495, the GL formula),
    ``specimen_centre = int(size/2)`` of ``rlnTomoSizeX/Y/Z`` and ``image_centre = int(n/2)`` of the
    tilt image. An active rotation by ``a`` is EMAN's passive one by ``−a``, and EMAN's ``"xyz"``
    Transform (``libEM/transform.cpp`` L682-692) is ``Rz_p(ztilt)·Ry_p(ytilt)·Rx_p(xtilt)``, so::

        tlt_params = [XShiftAngst/apix, YShiftAngst/apix, −ZRot, −YTilt, −XTilt]

    (:func:`relion_to_tlt_params`, inverse :func:`tlt_params_to_relion`). RELION 4 stores the
    4×4 matrix itself (``rlnTomoProjX/Y/Z/W``, read as is in ``tomogram_set.cpp`` L358-392);
    :func:`projection_matrix_to_tlt_params` decomposes it.
CTF (``src/ctf.h`` L298-315, ``src/ctf.cpp`` L219-220)
    ``Δf(θ) = (U+V)/2 + (U−V)/2 · cos 2(θ − DefocusAngle)`` (Å, underfocus positive), which is
    emflow's ``defocus + dfdiff/2 · cos 2(θ − dfang)`` with ``defocus = (U+V)/2``,
    ``dfdiff = U − V`` (signed), ``dfang = DefocusAngle``; stored per tilt in µm.
Depth-dependent defocus (``tomogram.cpp`` L277-290 ``getCtf``)
    ``Δf += rlnTomoHand · apix · z`` (z the projected depth). emflow's extraction uses
    ``Δf − apix · z`` (``emflow/sta/extract.py``), i.e. RELION's hand −1; the hand is kept in the
    info json as ``tomo_hand``.
Particle positions (``src/jaz/tomography/particle_set.cpp``)
    RELION 5: ``rlnCenteredCoordinateX/Y/ZAngst`` are Å from ``centre = size/2`` (float,
    ``tomogram_set.cpp`` L315), converted with the tilt-series pixel size (L589-603); RELION 4:
    ``rlnCoordinateX/Y/Z`` are tilt-series (unbinned) px from the corner (L605-613). Origins are
    subtracted after rotation by the subtomogram matrix:
    ``position = coordinate − A_subtomo · rlnOriginX/Y/ZAngst / apix`` (L355-370).
    emflow positions are px from the projection centre ``int(size/2)``.
Particle orientation (``particle_set.cpp`` L419-424 ``getMatrix3x3``)
    ``A = A_subtomo · A_particle`` with ``Euler::anglesToMatrix3`` (``jaz/math/Euler_angles_relion.h``
    L38-47, RELION's ZYZ matrix); emflow's :func:`emflow.geometry.relion_to_matrix` is that matrix.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from emflow.errors import InputError
from emflow.geometry import eman_to_matrix, matrix_to_eman, matrix_to_relion, relion_to_matrix
from emflow.io.star import read_star, write_star

# ----------------------------------------------------------------------------- geometry conversions


def relion_to_tlt_params(xtilt, ytilt, zrot, xshift_a, yshift_a, apix: float) -> np.ndarray:
    """RELION 5 per-tilt ``rlnTomoXTilt/YTilt/ZRot`` (deg) and ``rlnTomoX/YShiftAngst`` (Å) → EMAN2
    ``tlt_params`` ``(n, 5)`` ``[tx, ty, rot, tilt, offtilt]`` (tx, ty in px of ``apix``)."""
    xt, yt, zr, sx, sy = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (xtilt, ytilt, zrot,
                                                                                    xshift_a, yshift_a))
    return np.column_stack([sx / apix, sy / apix, -zr, -yt, -xt])


def tlt_params_to_relion(params, apix: float) -> dict[str, np.ndarray]:
    """Inverse of :func:`relion_to_tlt_params`: ``{rlnTomoXTilt, rlnTomoYTilt, rlnTomoZRot,
    rlnTomoXShiftAngst, rlnTomoYShiftAngst}`` arrays."""
    p = np.asarray(params, dtype=np.float64).reshape(-1, 5)
    return {"rlnTomoXTilt": -p[:, 4], "rlnTomoYTilt": -p[:, 3], "rlnTomoZRot": -p[:, 2],
            "rlnTomoXShiftAngst": p[:, 0] * apix, "rlnTomoYShiftAngst": p[:, 1] * apix}


def projection_matrix_to_tlt_params(P, size_xyz, image_nxy) -> np.ndarray:
    """RELION 4 projection matrices ``(n, 4, 4)`` (tomogram px from the corner → tilt image px)
    → ``tlt_params`` ``(n, 5)``.

    ``P[:3, :3]`` is EMAN's ``"xyz"`` matrix ``Rz_p(rot)·Ry_p(tilt)·Rx_p(offtilt)``
    (``m20 = sin tilt``, ``m21 = −sin off·cos tilt``, ``m22 = cos off·cos tilt``,
    ``m00 = cos tilt·cos rot``, ``m10 = −cos tilt·sin rot``); the shift is what is left after
    moving the origin to ``int(size/2)`` and the image centre ``int(n/2)``.
    """
    P = np.asarray(P, dtype=np.float64).reshape(-1, 4, 4)
    R = P[:, :3, :3]
    tilt = np.degrees(np.arcsin(np.clip(R[:, 2, 0], -1, 1)))
    off = np.degrees(np.arctan2(-R[:, 2, 1], R[:, 2, 2]))
    rot = np.degrees(np.arctan2(-R[:, 1, 0], R[:, 0, 0]))
    c_tomo = np.array([int(s) // 2 for s in size_xyz], dtype=np.float64)
    c_img = np.array([int(s) // 2 for s in image_nxy], dtype=np.float64)
    shift = (R @ c_tomo)[:, :2] + P[:, :2, 3] - c_img
    return np.column_stack([shift, rot, tilt, off])


def _half_px(size_xyz) -> np.ndarray:
    """``size/2 − int(size/2)``: RELION's coordinate centre (``size/2``) minus its projection centre."""
    s = np.asarray(size_xyz, dtype=np.float64)
    return s / 2.0 - np.floor(s / 2.0)


def centred_angst_to_px(xyz_a, apix: float, size_xyz) -> np.ndarray:
    """RELION 5 ``rlnCenteredCoordinate*Angst`` → emflow px from the projection centre ``int(size/2)``."""
    return np.asarray(xyz_a, dtype=np.float64).reshape(-1, 3) / apix + _half_px(size_xyz)


def px_to_centred_angst(xyz_px, apix: float, size_xyz) -> np.ndarray:
    """Inverse of :func:`centred_angst_to_px`."""
    return (np.asarray(xyz_px, dtype=np.float64).reshape(-1, 3) - _half_px(size_xyz)) * apix


def corner_px_to_px(xyz, size_xyz) -> np.ndarray:
    """RELION 4 ``rlnCoordinateX/Y/Z`` (px from the corner) → px from the projection centre."""
    return np.asarray(xyz, dtype=np.float64).reshape(-1, 3) - np.floor(np.asarray(size_xyz, np.float64) / 2.0)


def particle_rotation(table: dict, rows=None) -> np.ndarray | None:
    """``A_subtomo · A_particle`` ``(n, 3, 3)`` of particle rows, or None without angles."""
    idx = slice(None) if rows is None else rows

    def mat(prefix_cols):
        if not all(c in table for c in prefix_cols):
            return None
        a = [np.asarray(table[c], dtype=np.float64)[idx] for c in prefix_cols]
        return relion_to_matrix(*a)

    part = mat(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    sub = mat(("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"))
    if part is None and sub is None:
        return None
    if part is None:
        return sub
    return part if sub is None else sub @ part


# ----------------------------------------------------------------------------- tomograms.star


@dataclasses.dataclass
class RelionTomogram:
    """One row of a RELION tomograms.star (global table) with its per-tilt-series table."""

    name: str
    apix: float  # rlnTomoTiltSeriesPixelSize (Å/px of the tilt series)
    voltage_kv: float
    cs_mm: float
    ampcont: float
    hand: float
    size_xyz: tuple[int, int, int] | None  # rlnTomoSizeX/Y/Z (tilt-series px)
    tilt_series: str | None  # the stack (rlnTomoTiltSeriesName, or the common stack of rlnMicrographName)
    tilt_series_star: str  # where the per-tilt table came from
    tilts: dict  # the per-tilt table
    tomogram: str | None = None  # rlnTomoReconstructedTomogram
    tomogram_bin: float | None = None  # rlnTomoTomogramBinning


def _resolve(path: str, base: pathlib.Path) -> str:
    """RELION paths are relative to the project directory (the tomograms.star's folder's parents):
    try as given (cwd), then relative to the STAR file's folder and its parents."""
    p = pathlib.Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    for root in [base, *base.parents]:
        if (root / p).exists():
            return str(root / p)
    return str(p)


def _strip_stack_name(name: str) -> str:
    name = name.split(":")[0]  # "file.mrc:mrc" RELION type suffix
    return name.split("@", 1)[1] if "@" in name else name


def read_relion_tomograms(path: str | os.PathLike) -> dict[str, RelionTomogram]:
    """Read a RELION 4/5 ``tomograms.star`` and every per-tilt-series table.

    RELION 5 names a per-tilt-series STAR per tomogram (``rlnTomoTiltSeriesStarFile``, block
    ``data_<name>``); RELION 4 keeps the per-tomogram blocks in the same file.
    """
    path = pathlib.Path(path)
    blocks = read_star(path)
    glob = blocks.get("global")
    if not isinstance(glob, dict) or "rlnTomoName" not in glob:
        raise InputError("no data_global loop with rlnTomoName", source=path,
                         fix="give RELION's tomograms.star (the output of Import tomograms / Reconstruct)")
    names = [str(n) for n in glob["rlnTomoName"]]
    need = ("rlnTomoTiltSeriesPixelSize", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
    missing = [c for c in need if c not in glob]
    if missing:
        raise InputError(f"data_global lacks {', '.join(missing)}", source=path,
                         fix="RELION 5 writes these in tomograms.star; add the missing columns")
    out: dict[str, RelionTomogram] = {}
    for i, name in enumerate(names):
        if "rlnTomoTiltSeriesStarFile" in glob:
            ts_star = _resolve(str(glob["rlnTomoTiltSeriesStarFile"][i]), path.parent)
            ts_blocks = read_star(ts_star)
            table = ts_blocks.get(name) or (next(iter(ts_blocks.values())) if len(ts_blocks) == 1 else None)
        else:
            ts_star, table = str(path), blocks.get(name)
        if not isinstance(table, dict) or not table:
            raise InputError(f"no per-tilt table data_{name}", source=ts_star,
                             fix="each tomogram needs its per-tilt-series STAR block")
        size = None
        if all(f"rlnTomoSize{a}" in glob for a in "XYZ"):
            size = tuple(int(glob[f"rlnTomoSize{a}"][i]) for a in "XYZ")
        if "rlnTomoTiltSeriesName" in glob:
            stack = _resolve(_strip_stack_name(str(glob["rlnTomoTiltSeriesName"][i])), path.parent)
        elif "rlnMicrographName" in table:
            files = {_strip_stack_name(str(s)) for s in table["rlnMicrographName"]}
            has_index = all("@" in str(s) for s in table["rlnMicrographName"])
            stack = _resolve(files.pop(), path.parent) if len(files) == 1 and has_index else None
        else:
            stack = None
        tomo = None
        if "rlnTomoReconstructedTomogram" in glob:
            tomo = _resolve(str(glob["rlnTomoReconstructedTomogram"][i]), path.parent)
        out[name] = RelionTomogram(
            name=name, apix=float(glob["rlnTomoTiltSeriesPixelSize"][i]), voltage_kv=float(glob["rlnVoltage"][i]),
            cs_mm=float(glob["rlnSphericalAberration"][i]), ampcont=float(glob["rlnAmplitudeContrast"][i]),
            hand=float(glob["rlnTomoHand"][i]) if "rlnTomoHand" in glob else 1.0, size_xyz=size,
            tilt_series=stack, tilt_series_star=ts_star, tilts=table, tomogram=tomo,
            tomogram_bin=float(glob["rlnTomoTomogramBinning"][i]) if "rlnTomoTomogramBinning" in glob else None)
    return out


def read_tilt_series_star(path: str | os.PathLike, name: str, *, apix: float, voltage_kv: float, cs_mm: float,
                          ampcont: float, hand: float = -1.0, size_xyz=None) -> RelionTomogram:
    """One per-tilt-series STAR given without its tomograms.star (``input.tomograms[].tilt_series_star``):
    the block ``data_<name>`` (or the only block); optics from the config."""
    blocks = read_star(path)
    table = blocks.get(name) or (next(iter(blocks.values())) if len(blocks) == 1 else None)
    if not isinstance(table, dict) or not table:
        raise InputError(f"no block data_{name} (blocks: {list(blocks)[:8]})", source=path,
                         fix="give the per-tilt-series STAR of this tomogram")
    return RelionTomogram(name=name, apix=float(apix), voltage_kv=float(voltage_kv), cs_mm=float(cs_mm),
                          ampcont=float(ampcont), hand=float(hand), size_xyz=size_xyz, tilt_series=None,
                          tilt_series_star=str(path), tilts=table)


def relion_tilt_series_info(tomo: RelionTomogram, image_nxy: tuple[int, int] | None = None) -> dict:
    """The EMAN2 info-json keys of one RELION tomogram: ``tlt_params`` (+ per-tilt ``defocus``,
    ``dfdiff`` (µm), ``dfang`` (deg), ``phase``, ``pre_exposure`` (e/Å²)), ``apix_unbin``,
    ``voltage``, ``cs``, ``ampcont``, ``tomo_hand`` and ``tomo_size_xyz`` when known.

    ``image_nxy`` (the tilt images' nx, ny) is needed only for RELION 4 projection matrices.
    """
    t, src = tomo.tilts, tomo.tilt_series_star
    n = len(next(iter(t.values())))
    col = lambda c: np.asarray(t[c], dtype=np.float64)  # noqa: E731
    if all(c in t for c in ("rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst")):
        xt = col("rlnTomoXTilt") if "rlnTomoXTilt" in t else np.zeros(n)  # tomogram_set.cpp L397-400
        params = relion_to_tlt_params(xt, col("rlnTomoYTilt"), col("rlnTomoZRot"), col("rlnTomoXShiftAngst"),
                                      col("rlnTomoYShiftAngst"), tomo.apix)
    elif all(f"rlnTomoProj{a}" in t for a in "XYZW"):
        if tomo.size_xyz is None or image_nxy is None:
            raise InputError("RELION 4 projection matrices need rlnTomoSizeX/Y/Z and the tilt series",
                             source=src, fix="add rlnTomoSizeX/Y/Z to tomograms.star")
        P = np.stack([np.array([_vector(v, src) for v in t[f"rlnTomoProj{a}"]]) for a in "XYZW"], axis=1)
        params = projection_matrix_to_tlt_params(P, tomo.size_xyz, image_nxy)
    else:
        raise InputError(f"tomogram {tomo.name}: no tilt geometry (rlnTomoYTilt, rlnTomoZRot, "
                         "rlnTomoX/YShiftAngst or rlnTomoProjX/Y/Z/W)", source=src,
                         fix="give the aligned tilt-series STAR (after RELION's Align tilt series)")
    info: dict = {"tlt_params": params.tolist(), "apix_unbin": tomo.apix, "voltage": tomo.voltage_kv,
                  "cs": tomo.cs_mm, "ampcont": tomo.ampcont, "tomo_hand": tomo.hand}
    if "rlnDefocusU" in t:
        u = col("rlnDefocusU")
        v = col("rlnDefocusV") if "rlnDefocusV" in t else u
        a = col("rlnDefocusAngle") if "rlnDefocusAngle" in t else np.zeros(n)
        info["defocus"] = ((u + v) / 2e4).tolist()
        info["dfdiff"] = ((u - v) / 1e4).tolist()
        info["dfang"] = a.tolist()
        info["phase"] = (col("rlnPhaseShift") if "rlnPhaseShift" in t else np.zeros(n)).tolist()
    if "rlnMicrographPreExposure" in t:
        info["pre_exposure"] = col("rlnMicrographPreExposure").tolist()
    if tomo.size_xyz is not None:
        info["tomo_size_xyz"] = list(tomo.size_xyz)
    return info


def _vector(text, source) -> list[float]:
    try:
        vals = [float(x) for x in str(text).strip("[]").split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise InputError(f"projection row {text!r} is not [a,b,c,d]", source=source)
    return vals


# ----------------------------------------------------------------------------- particles


@dataclasses.dataclass
class RelionParticles:
    """Particles of one tomogram: positions in px from the projection centre, EMAN angles."""

    coords: np.ndarray  # (n, 3) float64
    eulers_eman: np.ndarray | None  # (n, 3) az, alt, phi
    scores: np.ndarray | None


def particles_by_tomogram(path: str | os.PathLike) -> tuple[dict, dict | None, dict[str, np.ndarray]]:
    """``(particle table, optics table or None, {rlnTomoName: row indices})``.

    Files without ``rlnTomoName`` map all rows to the key ``""``.
    """
    blocks = read_star(path)
    table = None
    for key in ("particles", *blocks):
        b = blocks.get(key)
        if isinstance(b, dict) and ("rlnCenteredCoordinateXAngst" in b or "rlnCoordinateX" in b):
            table = b
            break
    if table is None:
        raise InputError("no particle loop with rlnCenteredCoordinateX/Y/ZAngst (RELION 5) or "
                         "rlnCoordinateX/Y/Z (RELION 4)", source=path,
                         fix="give RELION's particles.star (or a coordinates STAR from its picker)")
    optics = blocks.get("optics") if isinstance(blocks.get("optics"), dict) else None
    n = len(table.get("rlnCenteredCoordinateXAngst", table.get("rlnCoordinateX")))
    if "rlnTomoName" in table:
        names = np.asarray([str(s) for s in table["rlnTomoName"]])
        groups = {str(k): np.flatnonzero(names == k) for k in dict.fromkeys(names.tolist())}
    else:
        groups = {"": np.arange(n)}
    return table, optics, groups


def _optics_apix(table, optics, rows, source) -> float | None:
    if optics is None or "rlnTomoTiltSeriesPixelSize" not in optics:
        return None
    og = np.asarray(optics.get("rlnOpticsGroup", [1]), dtype=np.int64)
    px = np.asarray(optics["rlnTomoTiltSeriesPixelSize"], dtype=np.float64)
    if "rlnOpticsGroup" in table:
        groups = set(np.asarray(table["rlnOpticsGroup"], dtype=np.int64)[rows].tolist())
        vals = {float(px[np.flatnonzero(og == g)[0]]) for g in groups if g in og}
    else:
        vals = set(px.tolist())
    if len(vals) > 1:
        raise InputError(f"particles of one tomogram span optics groups with pixel sizes {sorted(vals)}",
                         source=source)
    return vals.pop() if vals else None


def relion_particles(table: dict, optics: dict | None, rows, *, apix: float, size_xyz, source=None,
                     tol: float = 0.01) -> RelionParticles:
    """Positions (px from the projection centre ``int(size/2)``, origins applied) and EMAN Euler
    angles of the particle ``rows`` of ``table``.

    ``apix`` is the tilt series' pixel size; a different ``rlnTomoTiltSeriesPixelSize`` in the
    optics block is an :class:`InputError`.
    """
    rows = np.asarray(rows, dtype=np.int64)
    star_apix = _optics_apix(table, optics, rows, source)
    if star_apix is not None and abs(star_apix - apix) > tol * apix:
        raise InputError(f"optics rlnTomoTiltSeriesPixelSize = {star_apix:.4g} Å but the tilt series has "
                         f"{apix:.4g} Å/px", source=source,
                         fix="use the particles STAR that belongs to this tilt series (or fix its optics block)")
    col = lambda c: np.asarray(table[c], dtype=np.float64)[rows]  # noqa: E731
    if all(f"rlnCenteredCoordinate{a}Angst" in table for a in "XYZ"):
        xyz = centred_angst_to_px(np.column_stack([col(f"rlnCenteredCoordinate{a}Angst") for a in "XYZ"]),
                                  apix, size_xyz)
    else:
        xyz = corner_px_to_px(np.column_stack([col(f"rlnCoordinate{a}") for a in "XYZ"]), size_xyz)
    R = particle_rotation(table, rows)
    if any(f"rlnOrigin{a}Angst" in table for a in "XYZ"):
        origin = np.column_stack([col(f"rlnOrigin{a}Angst") if f"rlnOrigin{a}Angst" in table
                                  else np.zeros(len(rows)) for a in "XYZ"])
        sub = particle_rotation({k: v for k, v in table.items() if k.startswith("rlnTomoSubtomogram")}, rows)
        if sub is not None:
            origin = np.einsum("nij,nj->ni", sub, origin)
        xyz = xyz - origin / apix  # particle_set.cpp L363-368
    eulers = None if R is None else matrix_to_eman(R)
    scores = None
    for c in ("rlnAutopickFigureOfMerit", "rlnLogLikeliContribution", "rlnMaxValueProbDistribution"):
        if c in table:
            scores = col(c)
            break
    return RelionParticles(coords=xyz, eulers_eman=eulers, scores=scores)


def write_relion5_particles(path: str | os.PathLike, particles: dict[str, tuple], *, apix: float,
                            voltage_kv: float, cs_mm: float, ampcont: float,
                            sizes_xyz: dict[str, tuple[int, int, int]] | None = None,
                            extra: dict | None = None) -> None:
    """Write a RELION 5 particles STAR (``data_optics`` + ``data_particles``).

    Parameters
    ----------
    particles : ``{tomo_name: (coords (n, 3) px from the projection centre, eulers_eman (n, 3) or None)}``
    apix : float
        Tilt-series pixel size (``rlnTomoTiltSeriesPixelSize``).
    sizes_xyz : ``{tomo_name: (nx, ny, nz)}`` unbinned tomogram sizes (``rlnTomoSizeX/Y/Z``); only
        odd sizes matter (RELION's centre ``size/2`` is then half a pixel from ``int(size/2)``);
        None: even sizes.
    extra : more particle columns ``{label: (n,) array}`` in the order of ``particles``.

    Columns: ``rlnTomoName``, ``rlnCenteredCoordinateX/Y/ZAngst``, ``rlnAngleRot/Tilt/Psi`` (the
    full rotation; ``rlnTomoSubtomogramRot/Tilt/Psi`` zero), ``rlnOriginX/Y/ZAngst`` zero,
    ``rlnOpticsGroup``; optics: ``rlnOpticsGroup(Name)``, ``rlnVoltage``,
    ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, ``rlnTomoTiltSeriesPixelSize``.
    """
    names, xyz_a, eul = [], [], []
    for name, (coords, eulers) in particles.items():
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
        names += [name] * len(coords)
        xyz_a.append(px_to_centred_angst(coords, apix, (sizes_xyz or {}).get(name, (0, 0, 0))))
        e = np.zeros((len(coords), 3)) if eulers is None else np.asarray(eulers, dtype=np.float64).reshape(-1, 3)
        eul.append(matrix_to_relion(eman_to_matrix(*e.T)) if len(e) else np.zeros((0, 3)))
    xyz = np.concatenate(xyz_a) if xyz_a else np.zeros((0, 3))
    ang = np.concatenate(eul) if eul else np.zeros((0, 3))
    n = len(names)
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [float(voltage_kv)],
              "rlnSphericalAberration": [float(cs_mm)], "rlnAmplitudeContrast": [float(ampcont)],
              "rlnTomoTiltSeriesPixelSize": [float(apix)]}
    part = {"rlnTomoName": names,
            "rlnCenteredCoordinateXAngst": xyz[:, 0], "rlnCenteredCoordinateYAngst": xyz[:, 1],
            "rlnCenteredCoordinateZAngst": xyz[:, 2],
            "rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2],
            "rlnTomoSubtomogramRot": np.zeros(n), "rlnTomoSubtomogramTilt": np.zeros(n),
            "rlnTomoSubtomogramPsi": np.zeros(n),
            "rlnOriginXAngst": np.zeros(n), "rlnOriginYAngst": np.zeros(n), "rlnOriginZAngst": np.zeros(n),
            "rlnOpticsGroup": np.ones(n, dtype=np.int64)}
    for k, v in (extra or {}).items():
        part[k] = v
    write_star(path, {"optics": optics, "particles": part})


def write_relion5_tomograms(path: str | os.PathLike, tomograms: dict[str, dict], *, tilt_series_dir=None) -> None:
    """Write a minimal RELION 5 ``tomograms.star`` + one per-tilt-series STAR per tomogram.

    ``tomograms`` maps name → ``{"info": info dict (tlt_params, defocus, dfdiff, dfang,
    pre_exposure, apix_unbin, voltage, cs, ampcont, tomo_hand), "tilt_series": stack path,
    "size_xyz": (nx, ny, nz)}``; the per-tilt STARs go next to ``path`` (``<name>.star``) unless
    ``tilt_series_dir`` is given.
    """
    path = pathlib.Path(path)
    ts_dir = pathlib.Path(tilt_series_dir) if tilt_series_dir else path.parent / "tilt_series"
    ts_dir.mkdir(parents=True, exist_ok=True)
    glob: dict[str, list] = {k: [] for k in (
        "rlnTomoName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
        "rlnMicrographOriginalPixelSize", "rlnTomoHand", "rlnTomoTiltSeriesPixelSize", "rlnTomoTiltSeriesName",
        "rlnTomoTiltSeriesStarFile", "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")}
    for name, d in tomograms.items():
        info, apix = d["info"], float(d["info"]["apix_unbin"])
        params = np.asarray([r[:5] for r in info["tlt_params"]], dtype=np.float64)
        n = len(params)
        table = dict(tlt_params_to_relion(params, apix))
        if "defocus" in info:
            df = np.asarray(info["defocus"], np.float64) * 1e4
            diff = np.asarray(info.get("dfdiff", np.zeros(n)), np.float64) * 1e4
            table.update(rlnDefocusU=df + diff / 2, rlnDefocusV=df - diff / 2,
                         rlnDefocusAngle=np.asarray(info.get("dfang", np.zeros(n)), np.float64))
        if "pre_exposure" in info:
            table["rlnMicrographPreExposure"] = np.asarray(info["pre_exposure"], np.float64)
        ts_star = ts_dir / f"{name}.star"
        write_star(ts_star, {name: table})
        size = d["size_xyz"]
        for k, v in (("rlnTomoName", name), ("rlnVoltage", float(info.get("voltage", 300.0))),
                     ("rlnSphericalAberration", float(info.get("cs", 2.7))),
                     ("rlnAmplitudeContrast", float(info.get("ampcont", 0.1))),
                     ("rlnMicrographOriginalPixelSize", apix), ("rlnTomoHand", float(info.get("tomo_hand", -1.0))),
                     ("rlnTomoTiltSeriesPixelSize", apix), ("rlnTomoTiltSeriesName", str(d["tilt_series"])),
                     ("rlnTomoTiltSeriesStarFile", str(ts_star)), ("rlnTomoSizeX", int(size[0])),
                     ("rlnTomoSizeY", int(size[1])), ("rlnTomoSizeZ", int(size[2]))):
            glob[k].append(v)
    write_star(path, {"global": glob})


def export_relion5_tomograms(path: str | os.PathLike, names, info_paths, tilt_series_paths,
                             thickness_unbin_px: int) -> None:
    """``tomograms.star`` (+ per-tilt-series STARs in ``tilt_series/`` beside it) for the tomograms of a
    refinement, so that its ``particles_final.star`` opens in RELION 5 with its geometry and CTF.

    ``info_paths`` are the tomograms' EMAN2 info json files (``tlt_params``, CTF, ``apix_unbin``,
    ``tomo_hand``); the tomogram size is the tilt-series image (nx, ny) by the reconstructed
    thickness in unbinned pixels, the box ``rlnCenteredCoordinate*Angst`` are measured in.
    """
    import json

    from emflow.io.tiltseries import tilt_series_shape

    tomograms = {}
    for name, info_path, ts in zip(names, info_paths, tilt_series_paths, strict=True):
        with open(info_path) as f:
            info = json.load(f)
        _, ny, nx = tilt_series_shape(ts)
        tomograms[str(name)] = {"info": info, "tilt_series": os.path.abspath(ts),
                                "size_xyz": (nx, ny, int(thickness_unbin_px))}
    write_relion5_tomograms(path, tomograms)
