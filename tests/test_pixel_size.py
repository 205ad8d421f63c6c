"""One pixel-size contract (emflow.pixel_size): the file's own metadata, the config as a check.

Fixtures are written with mrcfile / h5py / plain text directly (no emflow writer):
* MRC: ``mrcfile.new`` + ``voxel_size`` (mrcfile docs, "Voxel size": cella / (mx, my, mz));
  an untouched ``mrcfile.new`` header has voxel size 0 with cella 0; IMOD/EMAN2 write 1.0 when unset.
* EMAN2 HDF: ``/MDF/images/<i>/image`` + attribute ``EMAN.apix_x``, ``/MDF/images`` attribute
  ``imageid_max`` (EMAN2 libEM/io/hdfio2.cpp, HdfIO2::write_header / read_header).
* RELION STAR: ``data_optics`` loop with ``_rlnImagePixelSize`` (RELION 3.1+ particles),
  ``data_global`` with ``_rlnTomoTiltSeriesPixelSize`` (RELION 5 tomograms.star).
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil

import h5py
import mrcfile
import numpy as np
import pytest

from emflow.errors import InputError
from emflow.pixel_size import OVERRIDE_KEY, apix_override, check_pixel_size, pixel_size


def _mrc(path, apix, shape=(4, 8, 8), stack=False):
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(np.zeros(shape, np.float32))
        if stack:
            m.set_image_stack()
        if apix is not None:
            m.voxel_size = apix
    return str(path)


def _hdf(path, apix, n=2):
    with h5py.File(path, "w") as f:
        g = f.create_group("MDF/images")
        g.attrs["imageid_max"] = np.array([n - 1], np.int32)
        for i in range(n):
            im = g.create_group(str(i))
            im.create_dataset("image", data=np.zeros((8, 8), np.float32))
            im.attrs["EMAN.nx"] = np.array([8], np.int32)
            if apix is not None:
                for a in "xyz":
                    im.attrs[f"EMAN.apix_{a}"] = np.array([apix], np.float32)
    return str(path)


def _star(path, text):
    path.write_text(text)
    return str(path)


def _run_fix(msg: str):
    """Execute the python one-liner the message gives as the fix (proves the advice works)."""
    code = re.search(r'python -c "(.*?)"', msg)
    assert code, f"no python command in: {msg}"
    exec(code.group(1), {})


# ------------------------------------------------------------------------------------ MRC
@pytest.mark.parametrize("name", ["ts.mrc", "ts.mrcs", "ts.st", "ts.ali", "map.map", "ts.rec"])
def test_mrc_voxel_size_is_read(tmp_path, name):
    path = _mrc(tmp_path / name, 5.24, stack=name.endswith(".mrcs"))
    assert pixel_size(path) == pytest.approx(5.24, rel=1e-6)
    assert pixel_size(path, expected=5.25) == pytest.approx(5.24, rel=1e-6)  # within 1 %


def test_mrc_gz(tmp_path):
    raw = _mrc(tmp_path / "map.mrc", 2.1)
    with open(raw, "rb") as src, gzip.open(tmp_path / "map.mrc.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert pixel_size(tmp_path / "map.mrc.gz", expected=2.1) == pytest.approx(2.1, rel=1e-6)


def test_mismatch_names_file_both_values_and_both_fixes(tmp_path):
    path = _mrc(tmp_path / "ts.mrc", 6.0)
    with pytest.raises(InputError) as e:
        pixel_size(path, expected=5.0, key="microscope.apix")
    msg = str(e.value)
    for word in (path, "6 Å", "5 Å", "microscope.apix", "m.voxel_size = 5", OVERRIDE_KEY, "Fix:"):
        assert word in msg, (word, msg)
    _run_fix(msg)  # fixing the header as told makes the file pass
    assert pixel_size(path, expected=5.0) == pytest.approx(5.0)


def test_binned_file_is_named_as_such(tmp_path):
    path = _mrc(tmp_path / "ts_bin4.mrc", 4 * 5.24)
    with pytest.raises(InputError, match=r"×4: a binned file"):
        pixel_size(path, expected=5.24)


@pytest.mark.parametrize("header", [0.0, 1.0])
def test_unset_header_is_an_error_not_a_fallback(tmp_path, header):
    """0 (unset) and 1.0 (the value every writer uses when unset) with a config value: error,
    and the message never tells the user to copy the header value into the config."""
    path = _mrc(tmp_path / "ref.mrc", header)
    with pytest.raises(InputError) as e:
        pixel_size(path, expected=5.24)
    msg = str(e.value)
    assert "no pixel size" in msg and path in msg and "m.voxel_size = 5.24" in msg and OVERRIDE_KEY in msg
    assert "microscope.apix to 1" not in msg and "microscope.apix to 0" not in msg
    _run_fix(msg)
    assert pixel_size(path, expected=5.24) == pytest.approx(5.24)


def test_unset_header_without_config_value(tmp_path):
    """A reference map with header 1.0 used to be rescaled as if it were 1.0 Å (0.17x)."""
    path = _mrc(tmp_path / "ref.mrc", 1.0, shape=(8, 8, 8))
    with pytest.raises(InputError, match=r"no pixel size.*1\.0 Å, the value written when none is set"):
        pixel_size(path, key="spt_refine.ref")
    path0 = _mrc(tmp_path / "ref0.mrc", None, shape=(8, 8, 8))  # mrcfile.new default: cella 0
    with pytest.raises(InputError, match=r"no pixel size"):
        pixel_size(path0)


def test_one_angstrom_confirmed_by_the_config(tmp_path):
    path = _mrc(tmp_path / "a.mrc", 1.0)
    assert pixel_size(path, expected=1.0) == 1.0


def test_override_is_used_and_logged(tmp_path, caplog):
    path = _mrc(tmp_path / "ref.mrc", 1.0)
    with caplog.at_level(logging.INFO, logger="emflow.pixel_size"):
        assert pixel_size(path, override=4.2) == pytest.approx(4.2)
    assert "4.2" in caplog.text and OVERRIDE_KEY in caplog.text
    # a set header that differs: the override still wins, with a warning
    path2 = _mrc(tmp_path / "ts.mrc", 3.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emflow.pixel_size"):
        assert pixel_size(path2, override=5.24, expected=5.24) == pytest.approx(5.24)
    assert "replaced" in caplog.text
    # the override is checked against the config value
    with pytest.raises(InputError, match=r"input\.apix_override gives 4\.2 Å.*microscope\.apix is 5\.24"):
        pixel_size(path, override=4.2, expected=5.24)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        pixel_size(tmp_path / "nope.mrc")


# ------------------------------------------------------------------------------------ EMAN2 HDF
def test_hdf_apix_x(tmp_path):
    path = _hdf(tmp_path / "ts.hdf", 3.3)
    assert pixel_size(path, expected=3.3) == pytest.approx(3.3, rel=1e-6)


@pytest.mark.parametrize("apix", [None, 1.0])
def test_hdf_without_pixel_size(tmp_path, apix):
    """No demo constant (3.275) any more: an HDF stack without apix_x is an error naming the fix."""
    path = _hdf(tmp_path / "ptcls.hdf", apix)
    with pytest.raises(InputError) as e:
        pixel_size(path, expected=3.275, key="spa.apix")
    msg = str(e.value)
    assert path in msg and "apix_x" in msg and "EMAN.apix_" in msg
    _run_fix(msg)
    assert pixel_size(path, expected=3.275) == pytest.approx(3.275, rel=1e-6)


def test_hdf_override(tmp_path):
    path = _hdf(tmp_path / "ptcls.hdf", None)
    assert pixel_size(path, override=2.5) == 2.5


# ------------------------------------------------------------------------------------ RELION STAR
_OPTICS = """
data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnVoltage #3
_rlnImagePixelSize #4
_rlnImageSize #5
opticsGroup1 1 300.0 {a} 64
opticsGroup2 2 300.0 {b} 64

data_particles

loop_
_rlnImageName #1
_rlnOpticsGroup #2
1@p.mrcs 1
2@p.mrcs 2
"""


def test_star_optics_image_pixel_size(tmp_path):
    path = _star(tmp_path / "particles.star", _OPTICS.format(a=1.06, b=1.06))
    assert pixel_size(path, expected=1.06) == pytest.approx(1.06)
    # 1.0 is an explicit value in a STAR file (RELION has no 'unset' default): accepted
    path1 = _star(tmp_path / "p1.star", _OPTICS.format(a=1.0, b=1.0))
    assert pixel_size(path1) == 1.0


def test_star_several_pixel_sizes(tmp_path):
    path = _star(tmp_path / "particles.star", _OPTICS.format(a=1.06, b=0.83))
    with pytest.raises(InputError, match=r"several pixel sizes"):
        pixel_size(path)


def test_star_relion5_tomograms(tmp_path):
    text = """
data_global

loop_
_rlnTomoName
_rlnVoltage
_rlnTomoTiltSeriesPixelSize
_rlnTomoTiltSeriesStarFile
TS_01 300.0 1.35 tilt_series/TS_01.star
TS_02 300.0 1.35 tilt_series/TS_02.star
"""
    path = _star(tmp_path / "tomograms.star", text)
    assert pixel_size(path, expected=1.35) == pytest.approx(1.35)
    with pytest.raises(InputError, match=r"data_global rlnTomoTiltSeriesPixelSize is 1\.35 Å"):
        pixel_size(path, expected=5.4)


def test_star_relion30_and_none(tmp_path):
    text = "data_\nloop_\n_rlnImageName\n_rlnDetectorPixelSize\n_rlnMagnification\n1@a.mrcs 5.0 50000\n"
    assert pixel_size(_star(tmp_path / "r30.star", text)) == pytest.approx(1.0)
    text = "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs 10000\n"
    path = _star(tmp_path / "none.star", text)
    with pytest.raises(InputError, match="no pixel size"):
        pixel_size(path, expected=2.0)
    assert pixel_size(path, override=2.0, expected=2.0) == 2.0


# ------------------------------------------------------------------------------------ values, overrides
def test_info_json_apix_unbin(tmp_path):
    path = tmp_path / "t_info.json"
    path.write_text('{"apix_unbin": 5.24}')
    assert pixel_size(path, expected=5.24) == pytest.approx(5.24)
    path.write_text('{"tlt_params": []}')
    with pytest.raises(InputError, match="apix_unbin"):
        pixel_size(path, expected=5.24)


def test_check_pixel_size_on_a_value():
    assert check_pixel_size(5.24, source="x.mrc", expected=5.24) == 5.24
    with pytest.raises(InputError, match=r"x\.hdf: no pixel size"):
        check_pixel_size(None, source="x.hdf", expected=5.24)


def test_apix_override_lookup():
    cfg = {"input": {"apix_override": {"./data/ref.mrc": 4.2}}}
    assert apix_override(cfg, "data/ref.mrc") == 4.2
    assert apix_override(cfg, "data/other.mrc") is None
    assert apix_override({"input": {}}, "data/ref.mrc") is None
