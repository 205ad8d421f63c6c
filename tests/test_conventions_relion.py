"""RELION 4/5 tomography conventions, anchored to RELION's source (github.com/3dem/relion, ver5.0).

Fixtures are written by ``tests/foreign/relion.py`` (no emflow code), whose projection and particle
formulas transcribe RELION:

* projection: ``src/jaz/tomography/tomogram.cpp`` L17-62 (``setProjectionMatrix``:
  ``s1·s2·r2·r1·r0·s0`` with ``r0 = Rx(XTilt)``, ``r1 = Ry(YTilt)``, ``r2 = Rz(ZRot)`` active,
  ``gravis/t3Matrix.h`` L478-495; centres ``int(size/2)``, shifts ``Å / rlnTomoTiltSeriesPixelSize``);
* positions: ``particle_set.cpp`` L589-603 (``rlnCenteredCoordinate*Angst / apix + size/2``),
  L605-613 (RELION 4 ``rlnCoordinate*`` px from the corner), L363-368 (``− A_subtomo·origin/apix``);
* orientation: ``particle_set.cpp`` L419-424 (``A_subtomo · A_particle``), ``Euler_angles_relion.h`` L38-47;
* CTF: ``src/ctf.h`` L298-315 + ``src/ctf.cpp`` L219-220 (``(U+V)/2 + (U−V)/2 cos 2(θ − angle)``).

Each test fails if a sign flips (tilt, axis rotation, shift, origin, centre, astigmatism angle).
"""

from __future__ import annotations

import numpy as np
import pytest
from foreign import relion as frel

from emflow.errors import InputError
from emflow.geometry import eman_to_matrix, tilt_matrix
from emflow.io.relion_tomo import (
    projection_matrix_to_tlt_params,
    read_relion_tomograms,
    relion_tilt_series_info,
    relion_to_tlt_params,
    tlt_params_to_relion,
    write_relion5_particles,
    write_relion5_tomograms,
)
from emflow.sta.import_picks import read_picks

APIX = 2.5


def emflow_project(params_row, p_centred, image_nxy):
    """emflow's projection (emflow/sta/extract.py docstring): ``(R p)_xy + (tx, ty) + n//2``."""
    tx, ty, rot, tilt, off = params_row
    q = tilt_matrix(tilt, rot, off) @ p_centred
    return q[:2] + [tx, ty] + np.array(image_nxy) // 2


@pytest.mark.parametrize("size", [(200, 180, 64), (201, 179, 63)])
def test_projection_matches_relion_set_projection_matrix(size):
    rng = np.random.default_rng(1)
    image = (190, 170)
    for _ in range(20):
        xt, yt, zr = rng.uniform(-5, 5), rng.uniform(-60, 60), rng.uniform(-180, 180)
        sx, sy = rng.uniform(-40, 40), rng.uniform(-40, 40)
        P = frel.projection_matrix(xt, yt, zr, sx, sy, APIX, size, image)
        p_dec = rng.uniform(0, 1, 3) * size
        want = (P @ np.append(p_dec, 1.0))[:2]
        row = relion_to_tlt_params(xt, yt, zr, sx, sy, APIX)[0]
        p_c = p_dec - np.floor(np.array(size) / 2)
        np.testing.assert_allclose(emflow_project(row, p_c, image), want, atol=1e-9)
        # the inverse conversion is exact
        back = tlt_params_to_relion(row[None], APIX)
        np.testing.assert_allclose([back[k][0] for k in ("rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot",
                                                          "rlnTomoXShiftAngst", "rlnTomoYShiftAngst")],
                                   [xt, yt, zr, sx, sy], atol=1e-9)


def test_sign_of_ytilt_is_opposite_to_eman_ytilt():
    # RELION Ry(+30) (active) moves a point above the specimen (+z) toward +x; EMAN ytilt +30 toward −x
    P = frel.projection_matrix(0, 30, 0, 0, 0, APIX, (100, 100, 100), (100, 100))
    assert (P @ [50, 50, 60, 1])[0] > 50
    assert relion_to_tlt_params(0, 30, 0, 0, 0, APIX)[0, 3] == -30


def test_relion4_projection_matrix_decomposes():
    rng = np.random.default_rng(2)
    size, image = (160, 150, 50), (150, 140)
    Ps = [frel.projection_matrix(rng.uniform(-3, 3), t, 85.3, rng.uniform(-20, 20), rng.uniform(-20, 20), APIX, size,
                                 image) for t in np.arange(-60, 61, 15)]
    params = projection_matrix_to_tlt_params(np.array(Ps), size, image)
    for P, row in zip(Ps, params):
        p_dec = rng.uniform(0, 1, 3) * size
        np.testing.assert_allclose(emflow_project(row, p_dec - np.floor(np.array(size) / 2), image),
                                   (P @ np.append(p_dec, 1))[:2], atol=1e-9)


def _project(tmp_path, size=(120, 110, 41), ntilt=5, hand=-1.0):
    rng = np.random.default_rng(3)
    stack = rng.normal(size=(ntilt, size[1], size[0])).astype(np.float32)
    t = {"stack": stack, "size_xyz": size, "xtilt": rng.uniform(-2, 2, ntilt), "ytilt": np.linspace(-40, 40, ntilt),
         "zrot": np.full(ntilt, 84.0), "xshift_angst": rng.uniform(-20, 20, ntilt),
         "yshift_angst": rng.uniform(-20, 20, ntilt), "defocus_u": np.full(ntilt, 32000.0),
         "defocus_v": np.full(ntilt, 30000.0), "defocus_angle": np.full(ntilt, 35.0),
         "pre_exposure": np.arange(ntilt) * 3.0}
    star = frel.write_project(tmp_path / "proj", {"TS_01": t}, apix=APIX, hand=hand)
    return star, t


def test_tomograms_star_to_info(tmp_path):
    star, t = _project(tmp_path)
    tomos = read_relion_tomograms(star)
    tomo = tomos["TS_01"]
    assert tomo.size_xyz == (120, 110, 41) and tomo.apix == APIX and tomo.hand == -1.0
    assert tomo.tilt_series.endswith("TS_01.mrcs")  # the stack its rlnMicrographName rows index
    info = relion_tilt_series_info(tomo)
    p = np.array(info["tlt_params"])
    image = (120, 110)
    for i in range(len(p)):
        P = frel.projection_matrix(t["xtilt"][i], t["ytilt"][i], t["zrot"][i], t["xshift_angst"][i],
                                   t["yshift_angst"][i], APIX, t["size_xyz"], image)
        p_dec = np.array([30.0, 70.0, 11.0])
        np.testing.assert_allclose(emflow_project(p[i], p_dec - np.floor(np.array(t["size_xyz"]) / 2), image),
                                   (P @ np.append(p_dec, 1))[:2], atol=1e-4)
    # CTF: emflow defocus + dfdiff/2 cos 2(θ − dfang) == RELION (U+V)/2 + (U−V)/2 cos 2(θ − A)  (ctf.h L298-315)
    for theta in np.radians([0, 20, 35, 80, 125]):
        u, v, a = 32000.0, 30000.0, np.radians(35.0)
        relion = (u + v) / 2 + (u - v) / 2 * np.cos(2 * (theta - a))
        ours = 1e4 * (info["defocus"][0] + info["dfdiff"][0] / 2 * np.cos(2 * (theta - np.radians(info["dfang"][0]))))
        assert ours == pytest.approx(relion, abs=1e-6)
    assert info["pre_exposure"] == [0.0, 3.0, 6.0, 9.0, 12.0]
    # write → read gives the same geometry and CTF
    write_relion5_tomograms(tmp_path / "out" / "tomograms.star",
                            {"TS_01": {"info": info, "tilt_series": tomo.tilt_series, "size_xyz": tomo.size_xyz}})
    again = relion_tilt_series_info(read_relion_tomograms(tmp_path / "out" / "tomograms.star")["TS_01"])
    np.testing.assert_allclose(again["tlt_params"], info["tlt_params"], atol=1e-5)
    for k in ("defocus", "dfdiff", "dfang", "pre_exposure"):
        np.testing.assert_allclose(again[k], info[k], atol=1e-5)


@pytest.mark.parametrize("size", [(200, 180, 64), (201, 179, 63)])
def test_centred_coordinates_origins_and_angles(tmp_path, size):
    rng = np.random.default_rng(4)
    n = 6
    centred = rng.uniform(-25, 25, (n, 3)) * APIX
    origins = rng.uniform(-3, 3, (n, 3)) * APIX
    sub = rng.uniform(-180, 180, (n, 3)) * [1, 0.5, 1]
    ang = rng.uniform(-180, 180, (n, 3)) * [1, 0.5, 1]
    path = tmp_path / "particles.star"
    frel.write_particles_star(path, tomo_names=["TS_01"] * n, apix=APIX, centred_angst=centred, angles=ang,
                              origins_angst=origins, subtomo_angles=sub)
    ps = read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=size, apix_unbin=APIX)
    for i in range(n):
        want = frel.particle_position_px(centred[i], origins[i], sub[i], APIX, size) - np.floor(np.array(size) / 2)
        np.testing.assert_allclose(ps.coords[i], want, atol=1e-5)  # the STAR holds 6 decimals
        A = frel.euler_matrix(*sub[i]) @ frel.euler_matrix(*ang[i])
        np.testing.assert_allclose(eman_to_matrix(*ps.eulers_eman[i]), A, atol=1e-6)
    # write (RELION 5) → read gives the same positions and rotations
    out = tmp_path / "out.star"
    write_relion5_particles(out, {"TS_01": (ps.coords, ps.eulers_eman)}, apix=APIX, voltage_kv=300, cs_mm=2.7,
                            ampcont=0.1, sizes_xyz={"TS_01": size})
    again = read_picks(out, tomo_name="TS_01", tomogram_shape_unbin_xyz=size, apix_unbin=APIX)
    np.testing.assert_allclose(again.coords, ps.coords, atol=1e-6)
    np.testing.assert_allclose(eman_to_matrix(*again.eulers_eman.T), eman_to_matrix(*ps.eulers_eman.T), atol=1e-6)


def test_relion4_coordinates_are_px_from_the_corner(tmp_path):
    path = tmp_path / "p4.star"
    frel.write_particles_star(path, tomo_names=["TS_01", "TS_01"], apix=APIX, coords_px=[[100, 90, 32], [0, 0, 0]])
    ps = read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=(200, 180, 64), apix_unbin=APIX)
    np.testing.assert_allclose(ps.coords, [[0, 0, 0], [-100, -90, -32]])
    with pytest.raises(InputError, match="thickness"):  # z from the corner needs the declared thickness
        read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=(200, 180, None), apix_unbin=APIX)


def test_several_tomograms_are_split_by_name(tmp_path):
    path = tmp_path / "p.star"
    frel.write_particles_star(path, tomo_names=["TS_01", "TS_02", "TS_01"], apix=APIX,
                              centred_angst=[[0, 0, 0], [10, 0, 0], [20, 0, 0]])
    a = read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=(100, 100, 50), apix_unbin=APIX)
    b = read_picks(path, tomo_name="TS_02", tomogram_shape_unbin_xyz=(100, 100, 50), apix_unbin=APIX)
    np.testing.assert_allclose(a.coords[:, 0], [0, 8])
    np.testing.assert_allclose(b.coords[:, 0], [4])
    with pytest.raises(InputError, match="none named 'TS_03'"):
        read_picks(path, tomo_name="TS_03", tomogram_shape_unbin_xyz=(100, 100, 50), apix_unbin=APIX)


def test_bad_picks_are_input_errors(tmp_path):
    path = tmp_path / "p.star"
    frel.write_particles_star(path, tomo_names=["TS_01"], apix=APIX, centred_angst=[[0, 0, 60 * APIX]])
    with pytest.raises(InputError, match="outside"):
        read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=(100, 100, 50), apix_unbin=APIX)
    with pytest.raises(InputError, match="rlnTomoTiltSeriesPixelSize"):
        read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=(100, 100, 200), apix_unbin=2 * APIX)
    empty = tmp_path / "empty.txt"
    empty.write_text("# no particles\n")
    with pytest.raises(InputError, match="allow_empty_picks"):
        read_picks(empty, tomo_name="TS_01", tomogram_shape_unbin_xyz=(100, 100, 50), apix_unbin=APIX)
    assert len(read_picks(empty, tomo_name="TS_01", tomogram_shape_unbin_xyz=(100, 100, 50), apix_unbin=APIX,
                          allow_empty=True)) == 0


def test_source_relion5_builds_the_tomogram_table(tmp_path, monkeypatch):
    from emflow.pipeline.config import tomogram_table

    star, _ = _project(tmp_path)
    parts = tmp_path / "proj" / "particles.star"
    frel.write_particles_star(parts, tomo_names=["TS_01"], apix=APIX, centred_angst=[[0, 0, 0]])
    cfg = {"input": {"source": "relion5", "relion_tomograms_star": str(star), "relion_particles_star": str(parts)},
           "microscope": {"apix": APIX, "voltage_kv": 300.0, "cs_mm": 2.7, "ampcont": 0.1}}
    (e,) = tomogram_table(cfg).values()
    assert e.name == "TS_01" and e.tilt_series.endswith("TS_01.mrcs") and e.thickness_unbin_px == 41
    assert e.tilt_series_star.endswith("TS_01.star") and e.picks == str(parts) and e.tlt is None
    assert e.tomo_hand == -1.0
    cfg["microscope"]["apix"] = 3.0
    with pytest.raises(InputError, match="microscope.apix"):
        tomogram_table(cfg)


def test_relion4_tomograms_star_through_the_importer(tmp_path):
    """RELION 4 keeps the per-tomogram blocks in tomograms.star and stores the projection matrices
    (``rlnTomoProjX/Y/Z/W`` "[a,b,c,d]", read as is: tomogram_set.cpp L358-392)."""
    from emflow.sta.importer import build_info

    size, image = (120, 110, 40), (120, 110)
    tilts = np.arange(-45, 46, 15.0)
    Ps = [frel.projection_matrix(0.0, t, 80.0, 12.0, -7.0, APIX, size, image) for t in tilts]
    rows = {f"rlnTomoProj{a}": ["[" + ",".join(f"{v:.9f}" for v in P[i]) + "]" for P in Ps]
            for i, a in enumerate("XYZW")}
    frel.write_star(tmp_path / "tomograms.star", {
        "global": {"rlnTomoName": ["TS_01"], "rlnTomoTiltSeriesName": ["TS_01.st:mrc"],
                   "rlnTomoFrameCount": [len(tilts)],
                   "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                   "rlnTomoHand": [-1.0], "rlnTomoTiltSeriesPixelSize": [APIX], "rlnTomoSizeX": [size[0]],
                   "rlnTomoSizeY": [size[1]], "rlnTomoSizeZ": [size[2]]},
        "TS_01": {**rows, "rlnDefocusU": [30000.0] * len(tilts), "rlnDefocusV": [30000.0] * len(tilts),
                  "rlnDefocusAngle": [0.0] * len(tilts)}})
    tomo = read_relion_tomograms(tmp_path / "tomograms.star")["TS_01"]
    assert tomo.tilt_series.endswith("TS_01.st")
    info = build_info(name="TS_01", shape_xy=image, apix=APIX, voltage_kv=300, cs_mm=2.7,
                      tilt_series_star=str(tmp_path / "tomograms.star"), thickness_unbin_px=size[2])
    for P, row in zip(Ps, np.array(info["tlt_params"])):
        p_dec = np.array([20.0, 90.0, 33.0])
        np.testing.assert_allclose(emflow_project(row, p_dec - np.floor(np.array(size) / 2), image),
                                   (P @ np.append(p_dec, 1))[:2], atol=1e-6)
    assert info["defocus"] == pytest.approx([3.0] * len(tilts))
