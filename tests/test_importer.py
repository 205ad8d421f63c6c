"""User inputs (IMOD .tlt/.xf, STAR/text picks) become a consistent EMAN2 info json."""

from __future__ import annotations

import numpy as np
import pytest

from emflow.errors import InputError
from emflow.geometry import tilt_matrix
from emflow.sta.importer import build_info, read_picks, xf_to_tlt_params
from emflow.io import boxes_from_info, write_star, write_tlt, write_xf


def test_xf_conversion_maps_points_like_imod(rng):
    """A point projected with tlt_params lands where IMOD's inverse .xf puts it in the raw image."""
    n = 5
    tilts = np.linspace(-60, 60, n)
    ang = np.radians(rng.uniform(-20, 20, n))
    A = np.stack([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]).transpose(2, 0, 1)
    d = rng.uniform(-30, 30, (n, 2))
    xf = np.concatenate([A, d[:, :, None]], axis=2)
    params = xf_to_tlt_params(xf, tilts)
    p = np.array([40.0, -25.0, 12.0])
    for i in range(n):
        aligned = (tilt_matrix(tilts[i]) @ p)[:2]          # tilt axis along y after alignment
        raw_imod = np.linalg.solve(A[i], aligned - d[i])   # IMOD: aligned = A raw + d
        R = tilt_matrix(params[i, 3], params[i, 2], params[i, 4])
        raw_ours = (R @ p)[:2] + params[i, :2]
        np.testing.assert_allclose(raw_ours, raw_imod, atol=1e-9)


def test_build_info_from_tlt_xf_and_star(tmp_path):
    tilts = np.arange(-60, 61, 20.0)
    write_tlt(tmp_path / "a.tlt", tilts)
    xf = np.tile(np.array([[1.0, 0, 3.0], [0, 1.0, -2.0]]), (len(tilts), 1, 1))
    write_xf(tmp_path / "a.xf", xf)
    picks = np.array([[100.0, 120.0, 40.0], [300.0, 200.0, 60.0]])
    write_star(tmp_path / "p.star", {"particles": {f"rlnCoordinate{a}": picks[:, i] for i, a in enumerate("XYZ")}})
    info = build_info(name="a", shape_xy=(400, 300), apix=2.0, voltage_kv=300, cs_mm=2.7,
                      tlt=str(tmp_path / "a.tlt"), xf=str(tmp_path / "a.xf"), picks=str(tmp_path / "p.star"),
                      defocus_um=3.5, thickness_unbin_px=100, pick_label="initribo")
    assert info["apix_unbin"] == 2.0 and info["defocus"] == [3.5] * len(tilts)
    np.testing.assert_allclose(np.array(info["tlt_params"])[:, :2], [[-3.0, 2.0]] * len(tilts))
    coords, _, _ = boxes_from_info(info, label="initribo")
    np.testing.assert_allclose(coords, picks - [200, 150, 50])


def test_mismatched_xf_is_named(tmp_path):
    write_tlt(tmp_path / "a.tlt", [0.0, 3.0, 6.0])
    write_xf(tmp_path / "a.xf", np.tile(np.eye(2, 3), (2, 1, 1)))
    with pytest.raises(InputError, match="a.xf"):
        build_info(name="a", shape_xy=(64, 64), apix=1.0, voltage_kv=300, cs_mm=2.7, tlt=str(tmp_path / "a.tlt"),
                   xf=str(tmp_path / "a.xf"), thickness_unbin_px=32)


def test_text_picks_from_corner(tmp_path):
    (tmp_path / "p.txt").write_text("10 20 30\n40 50 60\n")
    ps = read_picks(tmp_path / "p.txt", tomo_name="a", tomogram_shape_unbin_xyz=(64, 64, 64), apix_unbin=1.0)
    np.testing.assert_allclose(ps.coords, [[-22, -12, -2], [8, 18, 28]])
    assert ps.label == "manual" and ps.boxsize_unbin is None
