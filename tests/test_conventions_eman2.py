"""EMAN2 tomography conventions, anchored to EMAN2's source (github.com/cryoem/eman2).

Fixtures by ``tests/foreign/eman2.py`` (no emflow code):

* ``tlt_params`` ``[tx, ty, ztilt, ytilt, xtilt]``: ``programs/e2tomogram.py`` L1449-1453 ``get_xf_pos``
  (``Transform({"type":"xyz", ...}).transform(p)`` + ``(tx, ty)``), the matrix of
  ``libEM/transform.cpp`` L682-692;
* ``boxes_3d`` from the tomogram centre in unbinned px, ``class_list`` name and box size:
  ``programs/e2spt_extract.py`` L370-391;
* tilt series HDF: ``programs/e2import.py`` L477 and L485 (one 2D image per tilt, ``apix_x``).
"""

from __future__ import annotations

import numpy as np
import pytest
from foreign import eman2 as fe

from emflow.errors import InputError
from emflow.geometry import tilt_matrix
from emflow.io.tiltseries import read_tilt_series, tilt_series_apix, tilt_series_shape
from emflow.sta.import_picks import read_picks
from emflow.sta.importer import build_info

APIX = 3.1


def test_tlt_params_project_like_e2tomogram():
    rng = np.random.default_rng(0)
    for _ in range(20):
        row = [rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(-180, 180), rng.uniform(-60, 60),
               rng.uniform(-5, 5)]
        np.testing.assert_allclose(tilt_matrix(row[3], row[2], row[4]), fe.xyz_transform(row[4], row[3], row[2]),
                                   atol=1e-12)
        p = rng.uniform(-50, 50, 3)
        ours = (tilt_matrix(row[3], row[2], row[4]) @ p)[:2] + row[:2]
        np.testing.assert_allclose(ours, fe.xf_pos(row, p), atol=1e-9)
    # the sense: EMAN ytilt +30 moves a point above the specimen toward −x
    assert fe.xf_pos([0, 0, 0, 30, 0], [0, 0, 10])[0] < 0


def _json(tmp_path, boxes, classes):
    path = tmp_path / "info" / "TS_01_info.json"
    fe.write_info_json(path, tlt_params=[[0, 0, 0, t, 0] for t in (-30, 0, 30)], apix_unbin=APIX,
                       defocus=[3.0, 3.1, 3.2], phase=[0, 0, 0], boxes=boxes, class_list=classes)
    return path


def test_boxes_3d_from_the_centre_keep_class_name_and_box(tmp_path):
    boxes = [[10, -20, 5, "manual", 0.0, 0], [-30, 40, -8, "manual", 0.0, 0], [1, 2, 3, "tm", 0.7, 1]]
    classes = {0: {"name": "ribo", "boxsize": 96}, 1: {"name": "prot", "boxsize": 48}}
    path = _json(tmp_path, boxes, classes)
    shape = (200, 180, 60)
    ps = read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=shape, apix_unbin=APIX, label="ribo")
    assert ps.label == "ribo" and ps.boxsize_unbin == 96
    np.testing.assert_allclose(ps.coords, [[10, -20, 5], [-30, 40, -8]])  # unchanged: from the centre
    tm = read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=shape, apix_unbin=APIX, label="prot")
    assert tm.label == "prot" and tm.boxsize_unbin == 48 and tm.scores.tolist() == [0.7]
    with pytest.raises(InputError, match="picks_label"):  # two classes: the user chooses
        read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=shape, apix_unbin=APIX)
    # through the importer: class name and box size reach the info json (not "manual", 64)
    picks = _json(tmp_path / "p", boxes[:2], {0: classes[0]})
    info = build_info(name="TS_01", shape_xy=(200, 180), apix=APIX, voltage_kv=300, cs_mm=2.7, info_json=str(path),
                      picks=str(picks), pick_label=None)
    (cls,) = [v for v in info["class_list"].values() if v["name"] == "ribo"]
    assert cls["boxsize"] == 96
    assert info["defocus"] == [3.0, 3.1, 3.2] and info["phase"] == [0, 0, 0]
    assert [b[:3] for b in info["boxes_3d"] if b[5] == 0] == [[10, -20, 5], [-30, 40, -8]]


def test_pick_outside_and_empty(tmp_path):
    path = _json(tmp_path, [[0, 0, 40, "manual", 0.0, 0]], {0: {"name": "ribo", "boxsize": 64}})
    with pytest.raises(InputError, match="outside"):
        read_picks(path, tomo_name="TS_01", tomogram_shape_unbin_xyz=(200, 180, 60), apix_unbin=APIX)
    empty = _json(tmp_path / "e", [], {})
    with pytest.raises(InputError, match="no picks"):
        read_picks(empty, tomo_name="TS_01", tomogram_shape_unbin_xyz=(200, 180, 60), apix_unbin=APIX)


def test_hdf_tilt_series_reads_by_content(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(4, 30, 40)).astype(np.float32)
    root = fe.write_project(tmp_path / "proj", "TS_01", stack=stack, apix=APIX,
                            tlt_params=[[0, 0, 0, t, 0] for t in (-30, -10, 10, 30)])
    path = root / "tiltseries" / "TS_01.hdf"
    data, apix = read_tilt_series(path)
    np.testing.assert_array_equal(data, stack)
    assert apix == pytest.approx(APIX, rel=1e-6)
    assert tilt_series_shape(path) == (4, 30, 40)
    assert tilt_series_apix(path, expected=APIX) == pytest.approx(APIX, rel=1e-6)
    with pytest.raises(InputError, match="microscope.apix"):
        tilt_series_apix(path, expected=2 * APIX)
    wrong = tmp_path / "named_like_mrc.mrc"  # an HDF tilt series is never called a damaged MRC
    wrong.write_bytes(path.read_bytes())
    assert tilt_series_shape(wrong) == (4, 30, 40)
    # the project folder is read as input.source: eman2_project
    from emflow.pipeline.config import tomogram_table

    (e,) = tomogram_table({"input": {"source": "eman2_project", "eman2_project": str(root)}}).values()
    assert e.name == "TS_01" and e.tilt_series.endswith("TS_01.hdf") and e.info_json.endswith("TS_01_info.json")
