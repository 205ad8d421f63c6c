"""User inputs (IMOD .tlt/.xf, STAR/text picks) become a consistent EMAN2 info json.

Every IMOD file here is written by tests/foreign/imod.py from IMOD's documented layout, never by
emflow's writers; the geometry itself (tilt sense, hand, defocus gradient) is anchored to IMOD's
sources in tests/test_conventions_imod.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from foreign import imod as fimod

from emflow.errors import InputError
from emflow.geometry import tilt_matrix
from emflow.io import boxes_from_info, write_star
from emflow.sta.importer import IMOD_TILT_SIGN, build_info, imod_to_tlt_params, read_picks


def test_xf_conversion_maps_points_like_imod(rng):
    """newstack man page "transform file": aligned = A (raw − c) + d + c; tilt.f90 L1240/L3175 + clip rotx:
    aligned u = x cos θ + z sin θ. A point projected with tlt_params lands where IMOD puts it in the raw image."""
    n = 5
    tilts = np.linspace(-60, 60, n)
    xf = fimod.xf_rows(rng.uniform(-20, 20, n), rng.uniform(-30, 30, (n, 2)))
    params = imod_to_tlt_params(tilts, xf)
    p = np.array([40.0, -25.0, 12.0])
    for i in range(n):
        raw_imod = fimod.raw_position(fimod.aligned_position(p, tilts[i]), xf[i])[0]
        R = tilt_matrix(params[i, 3], params[i, 2], params[i, 4])
        np.testing.assert_allclose((R @ p)[:2] + params[i, :2], raw_imod, atol=1e-9)


def test_build_info_from_tlt_xf_and_star(tmp_path):
    tilts = np.arange(-60, 61, 20.0)
    fimod.write_tlt(tmp_path / "a.tlt", tilts)
    fimod.write_xf(tmp_path / "a.xf", fimod.xf_rows(np.zeros(len(tilts)), [[3.0, -2.0]] * len(tilts)))
    picks = np.array([[100.0, 120.0, 40.0], [300.0, 200.0, 60.0]])
    write_star(tmp_path / "p.star", {"particles": {f"rlnCoordinate{a}": picks[:, i] for i, a in enumerate("XYZ")}})
    info = build_info(name="a", shape_xy=(400, 300), apix=2.0, voltage_kv=300, cs_mm=2.7,
                      tlt=str(tmp_path / "a.tlt"), xf=str(tmp_path / "a.xf"), picks=str(tmp_path / "p.star"),
                      defocus_um=3.5, thickness_unbin_px=100, pick_label="initribo")
    assert info["apix_unbin"] == 2.0 and info["defocus"] == [3.5] * len(tilts)
    params = np.array(info["tlt_params"])
    np.testing.assert_allclose(params[:, :2], [[-3.0, 2.0]] * len(tilts))
    np.testing.assert_allclose(params[:, 3], IMOD_TILT_SIGN * tilts)  # EMAN ytilt = −IMOD angle
    coords, _, _ = boxes_from_info(info, label="initribo")
    np.testing.assert_allclose(coords, picks - [200, 150, 50])


def test_tlt_without_xf_keeps_info_json_alignment(tmp_path):
    """An info json's shifts/axis rotation stay when only a .tlt replaces the angles."""
    import json

    params = [[1.0, 2.0, 85.0, 10.0, 0.0], [3.0, 4.0, 85.0, 20.0, 0.0]]
    (tmp_path / "a_info.json").write_text(json.dumps({"tlt_params": params}))
    fimod.write_tlt(tmp_path / "a.tlt", [-10.0, -20.0])
    info = build_info(name="a", shape_xy=(64, 64), apix=1.0, voltage_kv=300, cs_mm=2.7, tlt=str(tmp_path / "a.tlt"),
                      info_json=str(tmp_path / "a_info.json"), thickness_unbin_px=32)
    np.testing.assert_allclose(info["tlt_params"], [[1.0, 2.0, 85.0, 10.0, 0.0], [3.0, 4.0, 85.0, 20.0, 0.0]])


def test_mismatched_xf_is_named(tmp_path):
    fimod.write_tlt(tmp_path / "a.tlt", [0.0, 3.0, 6.0])
    fimod.write_xf(tmp_path / "a.xf", fimod.xf_rows([0.0, 0.0], [[0, 0], [0, 0]]))
    with pytest.raises(InputError, match="a.xf"):
        build_info(name="a", shape_xy=(64, 64), apix=1.0, voltage_kv=300, cs_mm=2.7, tlt=str(tmp_path / "a.tlt"),
                   xf=str(tmp_path / "a.xf"), thickness_unbin_px=32)


def test_text_picks_from_corner(tmp_path):
    (tmp_path / "p.txt").write_text("10 20 30\n40 50 60\n")
    ps = read_picks(tmp_path / "p.txt", tomo_name="a", tomogram_shape_unbin_xyz=(64, 64, 64), apix_unbin=1.0)
    np.testing.assert_allclose(ps.coords, [[-22, -12, -2], [8, 18, 28]])
    assert ps.label == "manual" and ps.boxsize_unbin is None
