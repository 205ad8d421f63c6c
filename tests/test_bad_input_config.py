"""Bad input caught by ``validate_config`` before any job (issue 12 item 6): missing input paths
(named by config key), output paths that leave ``results/``, a ``.tlt`` whose count differs from
the stack, a tilt series whose pixel size disagrees with ``microscope.apix`` or has none.

Fast: no snakemake; files written with mrcfile/h5py/plain text.
"""

from __future__ import annotations

import copy
import pathlib

import h5py
import mrcfile
import numpy as np
import pytest
import yaml

from emflow.errors import InputError
from emflow.pipeline.config import input_paths, load_config, validate_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture
def config():
    return copy.deepcopy(DEFAULT)


def _mrc(path, n=5, apix=5.24):
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(np.zeros((n, 8, 8), np.float32))
        if apix is not None:
            m.voxel_size = apix
    return path


def _tlt(path, n=5):
    path.write_text("".join(f"{a:.2f}\n" for a in np.linspace(-60, 60, n)))
    return path


def _table(config, tmp_path, **row):
    config["input"]["source"] = "table"
    config["input"]["tomograms"] = [{"name": "TS_01", "tilt_series": "TS_01.mrc", "tlt": "TS_01.tlt", **row}]
    return config


def _err(config, tmp_path) -> str:
    with pytest.raises(InputError) as e:
        validate_config(config, SCHEMA, base_dir=tmp_path)
    msg = str(e.value)
    assert "Fix:" in msg, msg
    return msg


def test_demo_config_needs_no_files(config, tmp_path):
    """The demo's inputs are generated under results/: nothing to check before the run."""
    validate_config(config, SCHEMA, base_dir=tmp_path)  # tmp_path is empty
    assert all(path.startswith("results/") for _, path, _ in input_paths(config))


def test_table_missing_tilt_series_names_key_and_path(config, tmp_path):
    _tlt(tmp_path / "TS_01.tlt")
    msg = _err(_table(config, tmp_path), tmp_path)
    assert "config key 'input.tomograms[0].tilt_series'" in msg and "'TS_01.mrc' does not exist" in msg


def test_every_missing_path_is_listed(config, tmp_path):
    _table(config, tmp_path, xf="TS_01.xf", picks="picks.star")
    config["spt_refine"]["ref"] = "maps/ref.mrc"
    msg = _err(config, tmp_path)
    for key in ("input.tomograms[0].tilt_series", "input.tomograms[0].tlt", "input.tomograms[0].xf",
                "input.tomograms[0].picks", "spt_refine.ref"):
        assert f"config key '{key}'" in msg, (key, msg)
    assert "5 bad paths" in msg


def test_relative_paths_resolve_against_the_working_directory(config, tmp_path):
    _mrc(tmp_path / "TS_01.mrc")
    _tlt(tmp_path / "TS_01.tlt")
    validate_config(_table(config, tmp_path), SCHEMA, base_dir=tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        validate_config(copy.deepcopy(config), SCHEMA, base_dir=tmp_path / "elsewhere")


@pytest.mark.parametrize("key,value", [
    (("spt_refine", "ref"), "ref.mrc"),
    (("spa", "startingmodel"), "model.mrc"),
    (("spa", "startingmodel"), "maps/model"),
    (("spa", "usefilt"), "filt.hdf"),
    (("picks", "mask"), "mask.mrc"),
    (("input", "spa_particles"), "particles.mrcs"),  # user SPA data beside the tomography demo
    (("input", "spa_star"), "particles.star"),
])
def test_section_paths_are_checked_in_every_mode(config, tmp_path, key, value):
    config[key[0]][key[1]] = value
    msg = _err(config, tmp_path)
    assert f"config key '{key[0]}.{key[1]}'" in msg and value in msg


def test_keywords_and_generated_paths_are_not_files(config, tmp_path):
    config["spa"]["startingmodel"] = "blob"
    config["spt_refine"]["ref"] = "results/initial_model/sgd_01/output_cls0.hdf"
    validate_config(config, SCHEMA, base_dir=tmp_path)


def test_source_paths(config, tmp_path):
    config["input"]["source"] = "eman2_project"
    config["input"]["eman2_project"] = "my_project"
    assert "config key 'input.eman2_project'" in _err(config, tmp_path)
    config["input"]["source"] = "relion5"
    config["input"]["relion_tomograms_star"] = "tomograms.star"
    assert "config key 'input.relion_tomograms_star'" in _err(copy.deepcopy(config), tmp_path)


def test_apix_override_names_existing_files(config, tmp_path):
    config["input"]["apix_override"] = {"ref.mrc": 4.2}
    msg = _err(config, tmp_path)
    assert "input.apix_override['ref.mrc']" in msg


@pytest.mark.parametrize("key,value", [
    (("spt_refine", "path"), "/tmp/spt_01"),
    (("spt_refine", "path"), "results/../spt_01"),
    (("spt_refine", "path"), "spt/spt_01"),
    (("spt_refine", "path"), "results"),
    (("spa", "path"), ".."),
    (("spa", "path"), "."),
])
def test_output_path_must_stay_under_results(config, tmp_path, key, value):
    config[key[0]][key[1]] = value
    msg = _err(config, tmp_path)
    assert f"config key '{key[0]}.{key[1]}'" in msg and "results/" in msg


def test_tlt_count_differs_from_stack(config, tmp_path):
    _mrc(tmp_path / "TS_01.mrc", n=5)
    _tlt(tmp_path / "TS_01.tlt", n=4)
    msg = _err(_table(config, tmp_path), tmp_path)
    assert "TS_01.tlt" in msg and "TS_01.mrc" in msg and "4 tilt angles" in msg and "5 images" in msg


def test_tlt_count_of_an_eman2_hdf_tilt_series(config, tmp_path):
    with h5py.File(tmp_path / "TS_01.hdf", "w") as f:  # EMAN2 layout, one image per tilt
        g = f.create_group("MDF/images")
        g.attrs["imageid_max"] = np.array([2], np.int32)
        for i in range(3):
            im = g.create_group(str(i))
            im.create_dataset("image", data=np.zeros((8, 8), np.float32))
            im.attrs["EMAN.apix_x"] = np.array([5.24], np.float32)
    _tlt(tmp_path / "TS_01.tlt", n=3)
    validate_config(_table(config, tmp_path, tilt_series="TS_01.hdf"), SCHEMA, base_dir=tmp_path)
    _tlt(tmp_path / "TS_01.tlt", n=4)
    assert "3 images" in _err(config, tmp_path)


def test_tilt_series_pixel_size_at_validation(config, tmp_path):
    _tlt(tmp_path / "TS_01.tlt")
    _mrc(tmp_path / "TS_01.mrc", apix=2 * 5.24)
    msg = _err(_table(config, tmp_path), tmp_path)
    assert "TS_01.mrc" in msg and "10.48 Å" in msg and "microscope.apix is 5.24 Å" in msg and "×2: a binned file" in msg
    _mrc(tmp_path / "TS_01.mrc", apix=1.0)  # the unset default: no silent use of 1.0 or of the config
    msg = _err(config, tmp_path)
    assert "no pixel size" in msg and "m.voxel_size = 5.24" in msg and "input.apix_override" in msg
    config["input"]["apix_override"] = {"TS_01.mrc": 5.24}
    validate_config(config, SCHEMA, base_dir=tmp_path)


def test_load_config_checks_paths(config, tmp_path, monkeypatch):
    config["spt_refine"]["ref"] = "nowhere/ref.mrc"
    cfg = tmp_path / "my.yaml"
    cfg.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"config key 'spt_refine\.ref': file 'nowhere/ref\.mrc' does not exist"):
        load_config(cfg, SCHEMA)


# ------------------------------------------------------------------------------------ pixel sizes of user maps
def _map(path, apix):
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(np.zeros((8, 8, 8), np.float32))
        m.voxel_size = apix
    return path


def test_reference_with_unset_pixel_size(config, tmp_path):
    """The map used to be rescaled as if its 1.0 header were true (0.17x at 5.9 Å/px): now an error."""
    _map(tmp_path / "ref.mrc", 1.0)
    config["spt_refine"]["ref"] = "ref.mrc"
    msg = _err(config, tmp_path)
    assert "ref.mrc" in msg and "no pixel size" in msg and "spt_refine.ref" in msg and "input.apix_override" in msg
    config["input"]["apix_override"] = {"ref.mrc": 4.2}
    validate_config(config, SCHEMA, base_dir=tmp_path)
    _map(tmp_path / "ref.mrc", 4.2)  # or fix the header
    config["input"]["apix_override"] = {}
    validate_config(config, SCHEMA, base_dir=tmp_path)


def test_starting_model_and_template_need_a_pixel_size(config, tmp_path):
    _map(tmp_path / "model.mrc", 0.0)
    config["spa"]["startingmodel"] = "model.mrc"
    assert "spa.startingmodel" in _err(config, tmp_path)


def _hdf_stack(path, apix):
    with h5py.File(path, "w") as f:
        g = f.create_group("MDF/images")
        g.attrs["imageid_max"] = np.array([1], np.int32)
        for i in range(2):
            im = g.create_group(str(i))
            im.create_dataset("image", data=np.zeros((16, 16), np.float32))
            if apix is not None:
                im.attrs["EMAN.apix_x"] = np.array([apix], np.float32)
    return path


_STAR = """data_optics
loop_
_rlnOpticsGroup
_rlnImagePixelSize
_rlnVoltage
1 {apix} 300
data_particles
loop_
_rlnImageName
_rlnOpticsGroup
1@p.mrcs 1
"""


def test_spa_stack_without_pixel_size(config, tmp_path):
    """An HDF stack without apix_x used to get the demo's 3.275 Å."""
    _hdf_stack(tmp_path / "ptcls.hdf", None)
    config["input"]["spa_particles"] = "ptcls.hdf"
    msg = _err(config, tmp_path)
    assert "ptcls.hdf" in msg and "no pixel size" in msg and "3.275" not in msg
    _hdf_stack(tmp_path / "ptcls.hdf", 2.0)
    validate_config(config, SCHEMA, base_dir=tmp_path)
    config["spa"]["apix"] = 3.0  # the config value is a check
    assert "spa.apix is 3 Å" in _err(config, tmp_path)


def test_spa_mrcs_with_star(config, tmp_path):
    """The STAR's optics describe the particles: an unset stack header (1.0) takes the STAR's value,
    a set one must agree with it."""
    with mrcfile.new(str(tmp_path / "p.mrcs")) as m:
        m.set_data(np.zeros((2, 16, 16), np.float32))
        m.set_image_stack()
        m.voxel_size = 1.0
    (tmp_path / "p.star").write_text(_STAR.format(apix=1.06))
    config["input"]["spa_particles"] = "p.mrcs"
    config["input"]["spa_star"] = "p.star"
    validate_config(config, SCHEMA, base_dir=tmp_path)
    with mrcfile.open(str(tmp_path / "p.mrcs"), "r+") as m:
        m.voxel_size = 2.12
    msg = _err(config, tmp_path)
    assert "p.mrcs" in msg and "2.12 Å" in msg and "1.06 Å" in msg and "p.star" in msg


def test_user_tomogram_pixel_size_is_apix_times_bin(config, tmp_path):
    _mrc(tmp_path / "TS_01.mrc")
    _tlt(tmp_path / "TS_01.tlt")
    _map(tmp_path / "tomo.mrc", 5.24 * 4)
    _table(config, tmp_path, tomogram="tomo.mrc", tomogram_bin=4)
    validate_config(config, SCHEMA, base_dir=tmp_path)
    config["input"]["tomograms"][0]["tomogram_bin"] = 2
    msg = _err(config, tmp_path)
    assert "tomo.mrc" in msg and "tomogram_bin" in msg and "×2: a binned file" in msg
