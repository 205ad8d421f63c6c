"""RELION 4/5 tomography files written from RELION's own definitions (no emflow imports).

Layouts (RELION 5, github.com/3dem/relion):

* ``tomograms.star``: ``data_global`` loop, one row per tilt series: ``rlnTomoName``,
  ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``,
  ``rlnMicrographOriginalPixelSize``, ``rlnTomoHand``, ``rlnTomoTiltSeriesPixelSize``,
  ``rlnTomoTiltSeriesStarFile``, ``rlnTomoSizeX/Y/Z`` (and optionally ``rlnTomoTiltSeriesName``)
  (``src/tomography_python_programs/_tests/test_project_directory/tilt_series_metadata/tilt_series.star``;
  read in ``src/jaz/tomography/tomogram_set.cpp`` L153-330).
* per-tilt-series STAR: block ``data_<rlnTomoName>``, one row per tilt in stack order:
  ``rlnTomoXTilt rlnTomoYTilt rlnTomoZRot rlnTomoXShiftAngst rlnTomoYShiftAngst rlnDefocusU
  rlnDefocusV rlnDefocusAngle rlnMicrographPreExposure`` (same test project,
  ``tilt_series/220728_TS_01.star``; ``tomogram_set.cpp`` L353-420).
* particles: ``data_optics`` (``rlnOpticsGroup``, ``rlnOpticsGroupName``, ``rlnVoltage``,
  ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, ``rlnTomoTiltSeriesPixelSize``;
  ``src/jaz/tomography/particle_set.cpp`` L90-111) + ``data_particles`` (``rlnTomoName``,
  ``rlnCenteredCoordinateX/Y/ZAngst`` or RELION 4 ``rlnCoordinateX/Y/Z``, ``rlnOriginX/Y/ZAngst``,
  ``rlnAngleRot/Tilt/Psi``, ``rlnTomoSubtomogramRot/Tilt/Psi``; ``particle_set.cpp`` L355-424, L589-628).

:func:`projection_matrix` is RELION's ``Tomogram::setProjectionMatrix`` (``tomogram.cpp`` L17-62) and
:func:`rotation` the GL axis-angle matrix of ``gravis/t3Matrix.h`` L478-495, so tests can project a
point exactly as RELION does.
"""

from __future__ import annotations

import pathlib

import mrcfile
import numpy as np


def _fmt(v) -> str:
    if isinstance(v, str):
        return v if v and not any(c.isspace() for c in v) else f'"{v}"'
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.6f}"


def write_star(path, blocks: dict) -> None:
    """``{block: {label: column list}}`` → RELION STAR (every block a ``loop_``)."""
    out = ["", "# version 30001", ""]
    for name, table in blocks.items():
        out += [f"data_{name}", "", "loop_"]
        labels = list(table)
        out += [f"_{lab} #{i + 1}" for i, lab in enumerate(labels)]
        n = len(table[labels[0]]) if labels else 0
        for r in range(n):
            out.append(" ".join(_fmt(table[lab][r]) for lab in labels))
        out.append("")
    pathlib.Path(path).write_text("\n".join(out) + "\n")


def write_mrc(path, data, apix: float) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        m.voxel_size = apix
        if m.data.ndim == 3 and str(path).endswith((".mrcs", ".st")):
            m.set_image_stack()


def rotation(axis, angle_deg: float) -> np.ndarray:
    """``gravis::t3Matrix::rotation(axis, angle)`` (t3Matrix.h L478-495): active, right-handed."""
    n = np.asarray(axis, dtype=np.float64)
    n = n / np.linalg.norm(n)
    a = np.radians(angle_deg)
    s = np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]])
    nnt = np.outer(n, n)
    return nnt + np.cos(a) * (np.eye(3) - nnt) + np.sin(a) * s


def projection_matrix(xtilt, ytilt, zrot, xshift_angst, yshift_angst, apix, tomo_size_xyz, image_size_xy):
    """RELION 5 ``Tomogram::setProjectionMatrix`` (tomogram.cpp L17-62) as a 4×4 matrix mapping
    tomogram px from the corner to tilt-image px: ``s1 · s2 · r2 · r1 · r0 · s0``."""
    def T(v):
        m = np.eye(4)
        m[:3, 3] = v
        return m

    def R(m3):
        m = np.eye(4)
        m[:3, :3] = m3
        return m

    w0, h0, d0 = tomo_size_xyz
    s0 = T([-float(int(w0 / 2)), -float(int(h0 / 2)), -float(int(d0 / 2))])
    s1 = T([xshift_angst / apix, yshift_angst / apix, 0.0])
    s2 = T([float(int(image_size_xy[0] / 2)), float(int(image_size_xy[1] / 2)), 0.0])
    r0, r1, r2 = R(rotation((1, 0, 0), xtilt)), R(rotation((0, 1, 0), ytilt)), R(rotation((0, 0, 1), zrot))
    return s1 @ s2 @ r2 @ r1 @ r0 @ s0


def euler_matrix(rot, tilt, psi) -> np.ndarray:
    """``Euler::anglesToMatrix3`` (jaz/math/Euler_angles_relion.h L38-47), degrees."""
    p, t, c = np.radians([rot, tilt, psi])
    sp, cp, st, ct, sc, cc = np.sin(p), np.cos(p), np.sin(t), np.cos(t), np.sin(c), np.cos(c)
    return np.array([[cc * ct * cp - sc * sp, cc * ct * sp + sc * cp, -cc * st],
                     [-sc * ct * cp - cc * sp, -sc * ct * sp + cc * cp, sc * st],
                     [st * cp, st * sp, ct]])


def particle_position_px(centred_angst, origin_angst, subtomo_rtp, apix, tomo_size_xyz):
    """``ParticleSet::getPosition`` (particle_set.cpp L355-370, L589-603): decentred px."""
    centre = np.asarray(tomo_size_xyz, dtype=np.float64) / 2.0  # tomogram_set.cpp L315
    out = np.asarray(centred_angst, dtype=np.float64) / apix + centre
    A = euler_matrix(*subtomo_rtp) if subtomo_rtp is not None else np.eye(3)
    return out - A @ np.asarray(origin_angst, dtype=np.float64) / apix


def write_tomograms_star(path, rows: list[dict]) -> None:
    """``rows``: dicts with the global columns (without the ``rln`` prefix is not allowed: full labels)."""
    labels = list(rows[0])
    write_star(path, {"global": {lab: [r[lab] for r in rows] for lab in labels}})


def write_tilt_series_star(path, name: str, columns: dict) -> None:
    write_star(path, {name: columns})


def write_particles_star(path, *, tomo_names, apix, voltage=300.0, cs=2.7, ampcont=0.1, centred_angst=None,
                         coords_px=None, angles=None, origins_angst=None, subtomo_angles=None,
                         optics_apix=None) -> None:
    """RELION 5 (``centred_angst``) or RELION 4 (``coords_px`` from the corner) particles STAR."""
    n = len(tomo_names)
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [voltage],
              "rlnSphericalAberration": [cs], "rlnAmplitudeContrast": [ampcont],
              "rlnTomoTiltSeriesPixelSize": [optics_apix or apix]}
    part: dict = {"rlnTomoName": list(tomo_names)}
    if centred_angst is not None:
        c = np.asarray(centred_angst, dtype=np.float64).reshape(-1, 3)
        for i, a in enumerate("XYZ"):
            part[f"rlnCenteredCoordinate{a}Angst"] = c[:, i]
    else:
        c = np.asarray(coords_px, dtype=np.float64).reshape(-1, 3)
        for i, a in enumerate("XYZ"):
            part[f"rlnCoordinate{a}"] = c[:, i]
    if origins_angst is not None:
        o = np.asarray(origins_angst, dtype=np.float64).reshape(-1, 3)
        for i, a in enumerate("XYZ"):
            part[f"rlnOrigin{a}Angst"] = o[:, i]
    if angles is not None:
        e = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
        part.update(rlnAngleRot=e[:, 0], rlnAngleTilt=e[:, 1], rlnAnglePsi=e[:, 2])
    if subtomo_angles is not None:
        e = np.asarray(subtomo_angles, dtype=np.float64).reshape(-1, 3)
        part.update(rlnTomoSubtomogramRot=e[:, 0], rlnTomoSubtomogramTilt=e[:, 1], rlnTomoSubtomogramPsi=e[:, 2])
    part["rlnOpticsGroup"] = [1] * n
    write_star(path, {"optics": optics, "particles": part})


def write_project(root, tomograms: dict, *, apix, voltage=300.0, cs=2.7, ampcont=0.1, hand=-1.0) -> pathlib.Path:
    """A RELION 5 project: ``tomograms.star`` + ``tilt_series/<name>.star`` + the stacks.

    ``tomograms``: name → ``{"stack": (n, ny, nx) array, "size_xyz": (nx, ny, nz), "xtilt", "ytilt",
    "zrot", "xshift_angst", "yshift_angst", "defocus_u", "defocus_v", "defocus_angle" (Å, deg),
    "pre_exposure"}`` (per-tilt arrays). Returns the tomograms.star path.
    """
    root = pathlib.Path(root)
    (root / "tilt_series").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, t in tomograms.items():
        stack_path = root / "tilt_series" / f"{name}.mrcs"
        write_mrc(stack_path, t["stack"], apix)
        n = len(t["ytilt"])
        cols = {"rlnMicrographName": [f"{i + 1}@tilt_series/{name}.mrcs" for i in range(n)]}
        for k, lab in (("xtilt", "rlnTomoXTilt"), ("ytilt", "rlnTomoYTilt"), ("zrot", "rlnTomoZRot"),
                       ("xshift_angst", "rlnTomoXShiftAngst"), ("yshift_angst", "rlnTomoYShiftAngst"),
                       ("defocus_u", "rlnDefocusU"), ("defocus_v", "rlnDefocusV"),
                       ("defocus_angle", "rlnDefocusAngle"), ("pre_exposure", "rlnMicrographPreExposure")):
            cols[lab] = list(np.asarray(t.get(k, np.zeros(n)), dtype=np.float64))
        write_tilt_series_star(root / "tilt_series" / f"{name}.star", name, cols)
        nx, ny, nz = t["size_xyz"]
        rows.append({"rlnTomoName": name, "rlnVoltage": voltage, "rlnSphericalAberration": cs,
                     "rlnAmplitudeContrast": ampcont, "rlnMicrographOriginalPixelSize": apix,
                     "rlnTomoHand": hand, "rlnTomoTiltSeriesPixelSize": apix,
                     "rlnTomoTiltSeriesStarFile": f"tilt_series/{name}.star",
                     "rlnTomoSizeX": int(nx), "rlnTomoSizeY": int(ny), "rlnTomoSizeZ": int(nz)})
    write_tomograms_star(root / "tomograms.star", rows)
    return root / "tomograms.star"
