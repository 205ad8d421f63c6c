"""IMOD conventions, checked against fixtures written from IMOD's own definitions (tests/foreign/imod.py).

Each test names its source; the negative controls flip ``importer.IMOD_TILT_SIGN`` (the one place
the IMOD tilt sense is converted) and show that the test then fails.

Sources (IMOD 4.6 as mirrored at github:LabShare-Archive/IMOD @8c592ce; RELION 5 at github:3dem/relion
@73f0a3c; EMAN2 at github:cryoem/eman2 @f9e8fc6):
* flib/tilt/tilt.f90 L3175 ``sinBeta = -SIN(thetanv)`` and L1240/L1335 ``xproj = zz*sinBeta + x*cosBeta``;
  tilt man page DESCRIPTION (raw output = 90° about X, same hand); clip man page ``rotx``.
* RELION 5 src/align_tiltseries_runner.cpp L650-686 (.xf → shifts −A⁻¹d, .tlt → rlnTomoYTilt as is) and
  src/jaz/tomography/tomogram.cpp L59 with src/jaz/gravis/t3Matrix.h L478-496 (Ry active: u = x cos + z sin).
* EMAN2 libEM/transform.cpp L682-692 (type xyz: u = x cos(ytilt) − z sin(ytilt)).
* mrc/ctfphaseflip.cpp L368 (strip defocus = df + (x − nx/2) tan θ · pixel: +x further underfocused).
* ctfplotter/myapp.cpp L1164-1172 (.defocus v2), ctfphaseflip man page "Defocus file format" (v3 flags).
* newstack man page "transform file" (.xf raw → aligned about the centre); newstack.f90 L952-961 (shifts
  are in unbinned px of the stack; -bin divides them).
* tilt man page OPTIONS: THICKNESS, IMAGEBINNED (scales THICKNESS, SHIFT, OFFSET, FULLIMAGE), OFFSET,
  XAXISTILT, PARALLEL ("inverts the handedness").
"""

from __future__ import annotations

import numpy as np
import pytest
from foreign import imod as fimod

from emflow.errors import InputError
from emflow.geometry import tilt_matrix
from emflow.io import boxes_from_info
from emflow.sta import importer
from emflow.sta.extract import ExtractParams, TiltGeometry, extract_particles
from emflow.sta.importer import build_info, imod_to_tlt_params, tlt_params_to_imod
from emflow.sta.tomo import fit_tomogram, imod_tomogram_layout, imod_tomogram_to_emflow, reconstruct_wbp

# A chiral set of blobs (x, y, z, amplitude, sigma) in IMOD's rotated tomogram frame: not symmetric
# under z → −z (nor under any rotation combined with it).
BLOBS = np.array([[0, 0, 0, 1.0, 2.5], [12, 0, 0, 0.8, 2.5], [0, 16, 0, 0.6, 2.5], [0, 0, 8, 0.9, 2.5],
                  [-10, -9, -5, 0.7, 2.5]])
TILTS = np.arange(-60, 61, 3.0)
FLIPPED = pytest.param(-importer.IMOD_TILT_SIGN, marks=pytest.mark.xfail(strict=True, reason="negative control: "
                       "the IMOD tilt sign flipped must fail the test"), id="flipped-sign")
SIGNS = [pytest.param(importer.IMOD_TILT_SIGN, id="imod-sign"), FLIPPED]


def _info(tmp_path, tilts, xf=None, **kw):
    fimod.write_tlt(tmp_path / "TS.tlt", tilts)
    if xf is not None:
        fimod.write_xf(tmp_path / "TS.xf", xf)
    return build_info(name="TS", shape_xy=kw.pop("shape_xy", (64, 64)), apix=kw.pop("apix", 2.0), voltage_kv=300,
                      cs_mm=2.7, tlt=str(tmp_path / "TS.tlt"), xf=None if xf is None else str(tmp_path / "TS.xf"),
                      thickness_unbin_px=kw.pop("thickness_unbin_px", 32), **kw)


@pytest.mark.parametrize("sign", SIGNS)
def test_points_land_where_imod_projects_them(tmp_path, monkeypatch, rng, sign):
    """tilt.f90 L1240/L3175 + clip rotx: u = x cos θ + z sin θ in the aligned image; newstack man page:
    raw = A⁻¹(aligned − d). emflow's tlt_params must put every 3D point at the same raw position."""
    monkeypatch.setattr(importer, "IMOD_TILT_SIGN", sign)
    tilts = np.array([-54.0, -21.0, 0.0, 33.0, 60.0])
    xf = fimod.xf_rows(rng.uniform(-100, 100, 5), rng.uniform(-30, 30, (5, 2)))
    params = np.array(_info(tmp_path, tilts, xf)["tlt_params"])
    pts = np.array([[40.0, -25.0, 12.0], [-7.0, 3.0, -20.0]])
    for i in range(len(tilts)):
        imod_raw = fimod.raw_position(fimod.aligned_position(pts, tilts[i]), xf[i])
        ours = (tilt_matrix(params[i, 3], params[i, 2], params[i, 4]) @ pts.T).T[:, :2] + params[i, :2]
        np.testing.assert_allclose(ours, imod_raw, atol=2e-3)  # .xf/.tlt text precision


@pytest.mark.parametrize("sign", SIGNS)
def test_chiral_phantom_reconstructs_with_the_right_hand(tmp_path, monkeypatch, sign):
    """A chiral phantom projected the IMOD way (tests/foreign/imod.py), with an .xf rotating the raw
    images by 7° and shifting them, written as MRC + .tlt + .xf, imported and reconstructed by emflow,
    correlates with the phantom, not with its z-mirror (measured 0.86 vs 0.55; flipped sign 0.55 vs 0.86)."""
    monkeypatch.setattr(importer, "IMOD_TILT_SIGN", sign)
    xf = fimod.xf_rows(np.full(len(TILTS), 7.0), np.tile([3.0, -2.0], (len(TILTS), 1)))
    stack = fimod.project_blobs(BLOBS, TILTS, (64, 64), xf)
    fimod.write_mrc(tmp_path / "TS.mrc", stack, 2.0, stack=True)
    p = np.array(_info(tmp_path, TILTS, xf)["tlt_params"])
    tomo = reconstruct_wbp(stack, p[:, 3], thickness_px=32, axis_rot_deg=p[:, 2], shifts=p[:, :2], offtilt=p[:, 4])
    cc_hand = np.corrcoef(tomo.ravel(), fimod.blob_volume(BLOBS, tomo.shape).ravel())[0, 1]
    cc_mirror = np.corrcoef(tomo.ravel(), fimod.blob_volume(BLOBS * [1, 1, -1, 1, 1], tomo.shape).ravel())[0, 1]
    assert cc_hand > 0.8 and cc_hand > cc_mirror + 0.2, (cc_hand, cc_mirror)


@pytest.mark.parametrize("sign", SIGNS)
def test_defocus_gradient_matches_ctfphaseflip(tmp_path, monkeypatch, sign):
    """ctfphaseflip.cpp L368: for an IMOD tilt θ > 0 the +x side of the aligned image is further
    underfocused, df(x) = df0 + (x − nx/2)·tan θ·pixel. emflow's per-subtilt defocus (extract's depth
    term) for particles in the specimen plane must equal it."""
    monkeypatch.setattr(importer, "IMOD_TILT_SIGN", sign)
    tilts = np.array([-40.0, 0.0, 30.0])
    info = _info(tmp_path, tilts, defocus_um=3.0, apix=10.0, shape_xy=(128, 128))
    geom = TiltGeometry.from_info(info, apix=10.0, voltage_kv=300, cs_mm=2.7, ampcont=0.1)
    coords = np.array([[-40.0, 0.0, 0.0], [40.0, 0.0, 0.0]])
    stack = np.random.default_rng(0).normal(size=(3, 128, 128)).astype(np.float32)
    res = extract_particles(stack, geom, coords, ExtractParams(box=16, pad2d=32, phase_flip=False), workers=1)
    for k in range(len(res.particle)):
        x, t = coords[res.particle[k], 0], tilts[res.tilt_id[k]]
        u = x * np.cos(np.radians(t))  # aligned-image column of a point in the specimen plane (tilt.f90)
        want_nm = fimod.ctfphaseflip_defocus_nm(3000.0, 64 + u, t, pixel_nm=1.0, nx=128)
        assert res.defocus_um[k] * 1000 == pytest.approx(want_nm, abs=1e-6), (x, t)
    plus = res.defocus_um[(res.particle == 1) & (res.tilt_id == 2)][0]
    minus = res.defocus_um[(res.particle == 0) & (res.tilt_id == 2)][0]
    assert plus > minus  # +x further from focus at +30°


def test_defocus_v2_per_view_in_um(tmp_path):
    """ctfplotter/myapp.cpp L1164-1172 (v2: nm, views from 1, version 2 ending line 1); views no row
    covers are interpolated as ctfphaseflip.cpp L242-262 does."""
    tilts = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])
    fimod.write_defocus_v2(tmp_path / "TS.defocus", [(1, 1, -6, -6, 3000), (2, 3, -3, 0, 3500), (5, 5, 6, 6, 4500)])
    info = _info(tmp_path, tilts, defocus_file=str(tmp_path / "TS.defocus"), defocus_um=9.0)
    np.testing.assert_allclose(info["defocus"], [3.0, 3.5, 3.5, 4.0, 4.5])
    np.testing.assert_allclose(info["phase"], 0.0)
    np.testing.assert_allclose(info["dfdiff"], 0.0)


def test_defocus_v3_astigmatism_and_phase(tmp_path):
    """ctfphaseflip man page, Defocus file format: flags 1 (astigmatism) + 4 (phase) → columns
    df1 df2 angle phase; the info json gets defocus = mean (µm), dfdiff = df1 − df2 (µm), dfang, phase
    (RELION 5 tomo_ctf_helper.cpp L83-100 reads the same columns as DefocusU, DefocusV, DefocusAngle)."""
    tilts = np.array([-3.0, 0.0, 3.0])
    rows = [(1, 1, -3, -3, 3100, 2900, 35.5, 10.0), (2, 2, 0, 0, 3200, 3000, 36.0, 11.0),
            (3, 3, 3, 3, 3300, 3100, -40.0, 12.0)]
    fimod.write_defocus_v3(tmp_path / "TS.defocus", rows, flags=5)
    info = _info(tmp_path, tilts, defocus_file=str(tmp_path / "TS.defocus"))
    np.testing.assert_allclose(info["defocus"], [3.0, 3.1, 3.2])
    np.testing.assert_allclose(info["dfdiff"], [0.2, 0.2, 0.2])
    np.testing.assert_allclose(info["dfang"], [35.5, 36.0, -40.0])
    np.testing.assert_allclose(info["phase"], [10.0, 11.0, 12.0])


def test_defocus_v3_radian_flags_and_bad_views(tmp_path):
    tilts = np.array([0.0, 3.0])
    fimod.write_defocus_v3(tmp_path / "a.defocus", [(1, 2, 0, 3, 3000, 2800, 0.5)], flags=1 | 2)
    info = _info(tmp_path, tilts, defocus_file=str(tmp_path / "a.defocus"))
    np.testing.assert_allclose(info["dfang"], [np.degrees(0.5)] * 2)
    fimod.write_defocus_v3(tmp_path / "b.defocus", [(1, 3, 0, 6, 3000, 2800, 10.0)], flags=1)
    with pytest.raises(InputError, match="view 3"):
        _info(tmp_path, tilts, defocus_file=str(tmp_path / "b.defocus"))


def test_tilt_com_thickness_sets_pick_depth_origin(tmp_path):
    """tilt man page: THICKNESS (unbinned px; IMAGEBINNED scales it). Corner-origin picks get their z
    origin from it, not from the pipeline config."""
    fimod.write_tilt_com(tmp_path / "tilt.com", thickness=40, image_binned=2)
    (tmp_path / "p.txt").write_text("32 32 30\n")
    info = _info(tmp_path, TILTS[:3], tilt_com=str(tmp_path / "tilt.com"), picks=str(tmp_path / "p.txt"),
                 thickness_unbin_px=400)
    coords, _, _ = boxes_from_info(info, label="manual")
    np.testing.assert_allclose(coords, [[0.0, 0.0, 10.0]])
    assert info["imod_tilt_com"]["thickness_unbin_px"] == 40


def test_tilt_com_offset_and_fullimage_binning(tmp_path):
    """tilt man page OFFSET (DELANG added to all angles; DELXX moves the axis to nx/2 + DELXX) and
    FULLIMAGE (unbinned size): a tilt series binned 2× relative to the .xf's stack (newstack.f90 L952-961)
    gets half the .xf shifts."""
    tilts = np.array([-30.0, 0.0, 30.0])
    xf = fimod.xf_rows([0.0, 0.0, 0.0], [[8.0, -4.0]] * 3)
    fimod.write_tilt_com(tmp_path / "tilt.com", thickness=64, full_image=(128, 128),
                         extra={"OFFSET": "1.5 6.0"})
    info = _info(tmp_path, tilts, xf, tilt_com=str(tmp_path / "tilt.com"))
    p = np.array(info["tlt_params"])
    np.testing.assert_allclose(p[:, 3], importer.IMOD_TILT_SIGN * (tilts + 1.5))
    np.testing.assert_allclose(p[:, :2], [[-(8.0 - 6.0) / 2, 4.0 / 2]] * 3)
    assert info["imod_tilt_com"]["xf_binning"] == 2


@pytest.mark.parametrize("extra,match", [({"XAXISTILT": "2.5"}, "XAXISTILT"),
                                         ({"LOCALFILE": "TSlocal.xf"}, "LOCALFILE"),
                                         ({"ZFACTORFILE": "TS.zfac"}, "ZFACTORFILE")])
def test_tilt_com_unsupported_geometry_is_refused(tmp_path, extra, match):
    fimod.write_tilt_com(tmp_path / "tilt.com", thickness=64, extra=extra)
    with pytest.raises(InputError, match=match):
        _info(tmp_path, TILTS[:3], tilt_com=str(tmp_path / "tilt.com"))


def test_tilt_com_fullimage_not_a_binning_is_refused(tmp_path):
    fimod.write_tilt_com(tmp_path / "tilt.com", thickness=64, full_image=(100, 90))
    with pytest.raises(InputError, match="FULLIMAGE"):
        _info(tmp_path, TILTS[:3], tilt_com=str(tmp_path / "tilt.com"))


def test_export_round_trip(rng):
    """tlt_params_to_imod is the inverse of imod_to_tlt_params (export to IMOD)."""
    tilts = rng.uniform(-60, 60, 6)
    xf = fimod.xf_rows(rng.uniform(-90, 90, 6), rng.uniform(-20, 20, (6, 2)))
    back_tlt, back_xf = tlt_params_to_imod(imod_to_tlt_params(tilts, xf))
    np.testing.assert_allclose(back_tlt, tilts, atol=1e-12)
    np.testing.assert_allclose(back_xf, xf, atol=1e-12)


@pytest.mark.parametrize("layout", ["raw", "rotated"])
def test_imod_tomogram_lands_blobs_in_emflow_frame(layout):
    """An IMOD tomogram of the phantom (tilt's default [Y, Zr, X] output, or after clip rotx) becomes
    an emflow [z, y, x] tomogram with every blob at its (x, y, z) -- and it matches emflow's own
    reconstruction of the IMOD-projected tilt series (same hand, same frame)."""
    nx, ny, t = 64, 64, 40
    raw = fimod.imod_raw_tomogram(BLOBS, nx, ny, t)
    vol = raw if layout == "raw" else fimod.imod_rotx(raw)
    assert imod_tomogram_layout(vol.shape, (ny, nx)) == layout
    ours = imod_tomogram_to_emflow(vol, layout)
    assert ours.shape == (t, ny, nx)
    for bx, by, bz, _, _ in BLOBS:
        iz, iy, ix = int(round(bz + t // 2)), int(round(by + ny // 2)), int(round(bx + nx // 2))
        win = ours[iz - 2:iz + 3, iy - 2:iy + 3, ix - 2:ix + 3]
        pk = np.array(np.unravel_index(np.argmax(win), win.shape)) - 2
        assert np.all(np.abs(pk) <= 1), (bx, by, bz, pk)  # ≤ 1 voxel: IMOD centres at (n-1)/2, emflow n//2
    mirror = fimod.blob_volume(BLOBS * [1, 1, -1, 1, 1], ours.shape)
    truth = fimod.blob_volume(BLOBS, ours.shape)
    assert np.corrcoef(ours.ravel(), truth.ravel())[0, 1] > 0.9 > np.corrcoef(ours.ravel(), mirror.ravel())[0, 1]
    p = imod_to_tlt_params(TILTS)
    rec = reconstruct_wbp(fimod.project_blobs(BLOBS, TILTS, (ny, nx)), p[:, 3], thickness_px=t)
    assert np.corrcoef(rec.ravel(), ours.ravel())[0, 1] > 0.75


def test_imod_tomogram_binning_and_thickness():
    vol = fimod.imod_rotx(fimod.imod_raw_tomogram(BLOBS, 64, 64, 40))
    out = fit_tomogram(vol, 2, 16)
    assert out.shape == (16, 32, 32)
    assert np.unravel_index(np.argmax(out), out.shape) in {(8, 16, 16), (7, 16, 16), (8, 15, 16), (7, 15, 16),
                                                           (8, 16, 15), (7, 16, 15), (8, 15, 15), (7, 15, 15)}
    with pytest.raises(ValueError, match="thick"):
        fit_tomogram(vol, 2, 24)
    with pytest.raises(ValueError, match="ambiguous"):
        imod_tomogram_layout((64, 64, 64), (64, 64))


def test_user_imod_files_through_the_workflow_scripts(tmp_path):
    """The path a user takes (rules/import.smk + rules/tomogram.smk scripts): IMOD stack + .tlt + .xf +
    .defocus v3 + tilt.com + an IMOD tomogram (tilt's raw layout, bin 1) → info json and a bin-2 tomogram
    with the blobs at their (x, y, z) in emflow's frame."""
    import mrcfile
    from workflow_runner import run_script

    from emflow.io import read_info_json

    n = len(TILTS)
    xf = fimod.xf_rows(np.full(n, 4.0), np.tile([2.0, 1.0], (n, 1)))
    fimod.write_mrc(tmp_path / "TS.st", fimod.project_blobs(BLOBS, TILTS, (64, 64), xf), 5.0, stack=True)
    fimod.write_tlt(tmp_path / "TS.tlt", TILTS)
    fimod.write_xf(tmp_path / "TS.xf", xf)
    fimod.write_defocus_v3(tmp_path / "TS.defocus", [(i + 1, i + 1, t, t, 3100, 2900, 30.0) for i, t in enumerate(TILTS)])
    fimod.write_tilt_com(tmp_path / "tilt.com", thickness=40, full_image=(64, 64))
    fimod.write_mrc(tmp_path / "TS_rec.mrc", fimod.imod_raw_tomogram(BLOBS, 64, 64, 40), 5.0)
    entry = {"name": "TS", "tilt_series": str(tmp_path / "TS.st"), "tlt": str(tmp_path / "TS.tlt"), "info_json": None,
             "xf": str(tmp_path / "TS.xf"), "picks": None, "defocus_um": None,
             "defocus_file": str(tmp_path / "TS.defocus"), "tilt_com": str(tmp_path / "tilt.com"),
             "tilt_series_star": None, "tomogram": str(tmp_path / "TS_rec.mrc"), "tomogram_bin": 1}
    out = tmp_path / "out"
    run_script("import_tomogram.py", input={"tilt_series": entry["tilt_series"], "user_files": []},
               output={"tlt": out / "TS.tlt", "info": out / "TS_info.json"},
               params={"entry": entry, "apix": 5.0, "voltage_kv": 300.0, "cs_mm": 2.7, "ampcont": 0.1},
               wildcards={"tomo": "TS"}, log=tmp_path / "import.log")
    info = read_info_json(out / "TS_info.json")
    np.testing.assert_allclose(np.array(info["tlt_params"])[:, 3], importer.IMOD_TILT_SIGN * TILTS, atol=0.01)
    np.testing.assert_allclose(info["defocus"], 3.0) and np.testing.assert_allclose(info["dfdiff"], 0.2)
    np.testing.assert_allclose(np.loadtxt(out / "TS.tlt"), TILTS, atol=1e-3)  # the import's .tlt is IMOD's again
    run_script("tomogram_external.py", input={"tomogram": entry["tomogram"], "tilt_series": entry["tilt_series"],
                                              "info": out / "TS_info.json"},
               output={"tomogram": out / "TS__bin2.mrc"}, params={"thickness_px": 16, "tomogram_bin": 1},
               wildcards={"tomo": "TS", "bin": "2"}, log=tmp_path / "tomo.log")
    with mrcfile.open(out / "TS__bin2.mrc") as m:
        vol, apix = m.data.copy(), float(m.voxel_size.x)
    assert vol.shape == (16, 32, 32) and apix == pytest.approx(10.0)
    truth = fimod.blob_volume(BLOBS * [0.5, 0.5, 0.5, 1, 0.5], vol.shape)
    mirror = fimod.blob_volume(BLOBS * [0.5, 0.5, -0.5, 1, 0.5], vol.shape)
    cc = [np.corrcoef(vol.ravel(), v.ravel())[0, 1] for v in (truth, mirror)]
    assert cc[0] > 0.8 > cc[1], cc
    with pytest.raises(InputError, match="tomogram_bin"):
        run_script("tomogram_external.py", input={"tomogram": entry["tomogram"], "tilt_series": entry["tilt_series"],
                                                  "info": out / "TS_info.json"},
                   output={"tomogram": out / "TS__bin3.mrc"}, params={"thickness_px": 8, "tomogram_bin": 2},
                   wildcards={"tomo": "TS", "bin": "3"}, log=tmp_path / "tomo.log")
