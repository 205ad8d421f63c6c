"""Bad user input: every case must fail with a message that names the file or config key at fault and
says how to fix it, and must leave no output under its final name (issue #7).

Most cases run the real workflow script (``tests/workflow_runner.run_script``) or the stage function the
script calls, so the validation users hit is the one tested; two cases go through a real ``snakemake``
run of a one-rule workflow that uses the real script.
"""

from __future__ import annotations

import errno
import json
import pathlib
import textwrap

import numpy as np
import pytest
import yaml
from workflow_runner import REPO, run_script, run_snakemake

from emflow.errors import InputError
from emflow.io import atomic_write, write_info_json, write_mrc, write_tlt

TILTS = np.arange(-30.0, 31.0, 10.0)  # 7 tilts


def _tilt_series(path, n=len(TILTS), shape=(32, 32), apix=10.0, value=None):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(n, *shape)).astype(np.float32)
    if value is not None:
        data[n // 2, 3, 4] = value
    write_mrc(path, data, apix)
    return path


def _info(path, n=len(TILTS), apix=10.0):
    info = {"apix_unbin": apix, "tlt_params": [[0.0, 0.0, 0.0, float(t), 0.0] for t in TILTS[:n]]}
    write_info_json(path, info)
    return path


def _assert_message(exc: InputError, source: str, *fix_words: str) -> None:
    msg = str(exc)
    assert source in msg, f"message does not name {source!r}: {msg}"
    assert "Fix:" in msg, f"message has no fix: {msg}"
    for w in fix_words:
        assert w in msg, f"message lacks {w!r}: {msg}"


def _no_outputs(folder: pathlib.Path, *names: str) -> None:
    for n in names:
        assert not (folder / n).exists(), f"{n} exists after a failed job"
    leftovers = [p.name for p in folder.rglob(".*.tmp*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def _reconstruct(tmp_path, tilt_series, info):
    run_script("tomogram_reconstruct.py", input={"tilt_series": tilt_series, "info": info},
               output={"tomogram": tmp_path / "out" / "tomo__bin2.mrc"},
               params={"thickness_px": 8, "radial_filter": "ramp", "lowpass": "none", "apix": 10.0},
               wildcards={"tomo": "tomo", "bin": "2"}, log=tmp_path / "log.txt", threads=1)


def _import(tmp_path, tilt_series, tlt, apix=10.0, apix_override=None):
    entry = {"name": "t1", "tilt_series": str(tilt_series), "tlt": str(tlt), "info_json": None, "xf": None,
             "picks": None, "defocus_um": None}
    run_script("import_tomogram.py", input={"tilt_series": tilt_series, "user_files": [tlt]},
               output={"tlt": tmp_path / "out" / "t1.tlt", "info": tmp_path / "out" / "info" / "t1_info.json"},
               params={"entry": entry, "apix": apix, "voltage_kv": 300.0, "cs_mm": 2.7, "ampcont": 0.1,
                       "apix_override": apix_override},
               wildcards={"tomo": "t1"}, log=tmp_path / "log.txt")


# --------------------------------------------------------------------------------------- MRC files
def test_truncated_mrc(tmp_path):
    ts = _tilt_series(tmp_path / "ts.mrc")
    with open(ts, "r+b") as f:
        f.truncate(1024 + 32 * 32 * 4 * 3)  # 3 of 7 images
    with pytest.raises(InputError) as e:
        _reconstruct(tmp_path, ts, _info(tmp_path / "info.json"))
    _assert_message(e.value, str(ts), "truncated", "re-copy")
    _no_outputs(tmp_path / "out", "tomo__bin2.mrc")


def test_mrc_without_voxel_size(tmp_path):
    """A map with voxel size 0 and no configured value to fall back on (tempmatch template)."""
    from emflow.io import read_mrc

    path = tmp_path / "template.mrc"
    write_mrc(path, np.zeros((8, 8, 8), np.float32), 1.0)
    import mrcfile

    with mrcfile.open(path, "r+") as m:
        m.voxel_size = 0.0
    with pytest.raises(InputError) as e:
        read_mrc(path)
    _assert_message(e.value, str(path), "no pixel size", "alterheader")


def test_mrc_voxel_size_differs_from_config(tmp_path):
    ts = _tilt_series(tmp_path / "ts.mrc", apix=13.0)
    tlt = tmp_path / "ts.tlt"
    write_tlt(tlt, TILTS)
    with pytest.raises(InputError) as e:
        _import(tmp_path, ts, tlt, apix=10.0)
    _assert_message(e.value, str(ts), "microscope.apix")
    _no_outputs(tmp_path / "out", "t1.tlt", "info/t1_info.json")


@pytest.mark.parametrize("kind", ["mrc_default_1A", "hdf_without_apix"])
def test_tilt_series_without_pixel_size(tmp_path, kind):
    """No silent fallback to the config (or to 1.0): the fix writes the header or names the override."""
    if kind == "mrc_default_1A":
        ts = _tilt_series(tmp_path / "ts.mrc", apix=1.0)
    else:
        import h5py

        ts = tmp_path / "ts.hdf"
        with h5py.File(ts, "w") as f:  # EMAN2 layout (libEM/io/hdfio2.cpp) without EMAN.apix_x
            g = f.create_group("MDF/images")
            g.attrs["imageid_max"] = np.array([len(TILTS) - 1], np.int32)
            for i in range(len(TILTS)):
                g.create_group(str(i)).create_dataset("image", data=np.zeros((32, 32), np.float32))
    tlt = tmp_path / "ts.tlt"
    write_tlt(tlt, TILTS)
    with pytest.raises(InputError) as e:
        _import(tmp_path, ts, tlt, apix=10.0)
    _assert_message(e.value, str(ts), "no pixel size", "input.apix_override")
    assert "microscope.apix to 1" not in str(e.value)
    _no_outputs(tmp_path / "out", "t1.tlt", "info/t1_info.json")
    _import(tmp_path, ts, tlt, apix=10.0, apix_override=10.0)  # declared by the user: accepted
    assert (tmp_path / "out" / "t1.tlt").exists()


def test_tilt_count_differs_from_tlt(tmp_path):
    ts = _tilt_series(tmp_path / "ts.mrc", n=7)
    tlt = tmp_path / "ts.tlt"
    write_tlt(tlt, TILTS[:5])
    with pytest.raises(InputError) as e:
        _import(tmp_path, ts, tlt)
    _assert_message(e.value, str(tlt), "7 images but 5 tilt angles", "one tilt angle per image")
    _no_outputs(tmp_path / "out", "t1.tlt", "info/t1_info.json")


def test_tilt_count_differs_from_info_json(tmp_path):
    ts = _tilt_series(tmp_path / "ts.mrc", n=7)
    info = _info(tmp_path / "info.json", n=6)
    with pytest.raises(InputError) as e:
        _reconstruct(tmp_path, ts, info)
    _assert_message(e.value, str(info), "6 tilts", str(ts))
    _no_outputs(tmp_path / "out", "tomo__bin2.mrc")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_tilt_series(tmp_path, bad):
    ts = _tilt_series(tmp_path / "ts.mrc", value=bad)
    with pytest.raises(InputError) as e:
        _reconstruct(tmp_path, ts, _info(tmp_path / "info.json"))
    _assert_message(e.value, str(ts), "NaN/Inf", "regenerate")
    _no_outputs(tmp_path / "out", "tomo__bin2.mrc")


# --------------------------------------------------------------------------------------- picks
def test_pick_outside_tomogram():
    from emflow.sta.extract import check_picks

    coords = np.array([[0.0, 0.0, 0.0], [300.0, 0.0, 0.0]])  # x beyond nx/2 = 128
    with pytest.raises(InputError) as e:
        check_picks(coords, (256, 256, 64), 32, source="picks.star", skip_edge=True)
    _assert_message(e.value, "picks.star", "outside the tomogram", "unbinned pixels")


def test_pick_too_near_edge_for_box():
    from emflow.sta.extract import check_picks

    coords = np.array([[0.0, 0.0, 0.0], [120.0, 0.0, 0.0]])  # 120 + 32/2 > 128
    with pytest.raises(InputError) as e:
        check_picks(coords, (256, 256, 64), 32, source="picks.star", skip_edge=False)
    _assert_message(e.value, "picks.star", "image edge", "extract.skip_edge")
    keep, excluded = check_picks(coords, (256, 256, 64), 32, source="picks.star", skip_edge=True)
    assert keep.tolist() == [True, False] and excluded[0]["index"] == 1


def _tempmatch_search(tmp_path, tomogram, template, **overrides):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    from emflow.pipeline.config import validate_config

    validate_config(cfg, REPO / "config" / "schema.yaml")
    tm = cfg["tempmatch"] | overrides
    info = _info(tmp_path / "info.json")
    tlt = tmp_path / "ts.tlt"
    write_tlt(tlt, TILTS)
    out = tmp_path / "out"
    run_script("tempmatch_search.py", input={"tomogram": tomogram, "template": template, "info": info, "tlt": tlt},
               output={"scores": out / "s.mrc", "angle_map": out / "a.mrc", "angles": out / "a.json"},
               params={"tm": tm, "microscope": cfg["microscope"]}, wildcards={"tomo": "t"},
               log=tmp_path / "log.txt")


def test_box_larger_than_tomogram(tmp_path):
    tomo = tmp_path / "tomo.mrc"
    write_mrc(tomo, np.random.default_rng(1).normal(size=(8, 24, 24)).astype(np.float32), 10.0)
    template = tmp_path / "template.mrc"
    write_mrc(template, np.ones((16, 16, 16), np.float32), 10.0)
    with pytest.raises(InputError) as e:
        _tempmatch_search(tmp_path, tomo, template, template_box_px=16, ctf_weighting="none")
    _assert_message(e.value, str(tomo), "smaller than the template box", "tempmatch.template_box_px")
    _no_outputs(tmp_path / "out", "s.mrc", "a.mrc", "a.json")


def test_empty_pick_list(tmp_path):
    """A picks file with no particle of the requested label."""
    from emflow.sta.extract import read_picks

    info = tmp_path / "info.json"
    write_info_json(info, {"apix_unbin": 10.0, "class_list": {"0": {"name": "ribo", "boxsize": 32}},
                           "boxes_3d": []})
    with pytest.raises(InputError) as e:
        read_picks(info, "tm")
    _assert_message(e.value, str(info), "no particle class named 'tm'")


def test_empty_particle_set(tmp_path):
    """Every pick excluded: extract_buildset writes the (empty) set but the log says so, with the fix.

    Not an error yet: the tiny test config yields no template-matching picks (docs/report.md).
    """
    summaries, parts = [], []
    for t in ("a", "b"):
        s = tmp_path / f"{t}.json"
        s.write_text(json.dumps({"tomo": t, "label": "tm", "n_picks": 0, "n_particles": 0, "particle_table": [],
                                 "particles3d": str(tmp_path / f"{t}.hdf")}))
        summaries.append(s)
        parts.append(tmp_path / f"{t}.hdf")
    log = tmp_path / "log.txt"
    run_script("extract_buildset.py", input={"particles3d": parts, "summaries": summaries},
               output={"lst": tmp_path / "out" / "tm.lst"}, params={"spliteo": True},
               wildcards={"label": "tm"}, log=log)
    text = log.read_text()
    assert "EMPTY SET" in text and "tm.lst" in text and "Fix:" in text and "picks.min_score" in text


# --------------------------------------------------------------------------------------- config strings
def test_invalid_symmetry_string():
    from emflow.geometry import get_symmetry
    from emflow.pipeline.config import validate_config

    with pytest.raises(InputError) as e:
        get_symmetry("x9")
    _assert_message(e.value, "x9", "c1")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["tempmatch"]["sym"] = "x9"
    with pytest.raises(InputError) as e:
        validate_config(cfg, REPO / "config" / "schema.yaml")
    _assert_message(e.value, "tempmatch.sym", "schema.yaml")


def test_invalid_iteration_string():
    parse_iters = pytest.importorskip("emflow.sta.spt_refine", reason="subtomogram refinement stage "
                                      "(emflow.sta.spt_refine.parse_iters) not written yet").parse_iters
    with pytest.raises(InputError) as e:
        parse_iters("p3,x9")
    _assert_message(e.value, "spt_refine.iters", "'x9'", "p3")


# --------------------------------------------------------------------------------------- reference maps
def test_reference_map_wrong_box(tmp_path):
    """User starting model whose box differs from the particles' (spa.startingmodel)."""
    from emflow.io import write_hdf_stack

    parts = tmp_path / "particles.hdf"
    write_hdf_stack(parts, np.zeros((2, 16, 16), np.float32), [{"apix_x": 5.0}, {"apix_x": 5.0}])
    model = tmp_path / "model.mrc"
    write_mrc(model, np.ones((24, 24, 24), np.float32), 5.0)
    with pytest.raises(InputError) as e:
        run_script("spa_startmodel.py", input={"particles": parts, "source": []},
                   output={"model": tmp_path / "out" / "threed_00.mrc"},
                   params={"spa": {"startingmodel": str(model), "blob_radius_a": None}}, log=tmp_path / "log.txt")
    _assert_message(e.value, "spa.startingmodel", "resample", "e2proc3d.py")
    _no_outputs(tmp_path / "out", "threed_00.mrc")


def test_reference_map_wrong_pixel_size(tmp_path):
    """Same box but a pixel size 20 % off: silently using it would scale the model."""
    from emflow.io import write_hdf_stack

    parts = tmp_path / "particles.hdf"
    write_hdf_stack(parts, np.zeros((2, 16, 16), np.float32), [{"apix_x": 5.0}, {"apix_x": 5.0}])
    model = tmp_path / "model.mrc"
    write_mrc(model, np.ones((16, 16, 16), np.float32), 6.0)
    with pytest.raises(InputError) as e:
        run_script("spa_startmodel.py", input={"particles": parts, "source": []},
                   output={"model": tmp_path / "out" / "threed_00.mrc"},
                   params={"spa": {"startingmodel": str(model), "blob_radius_a": None}}, log=tmp_path / "log.txt")
    _assert_message(e.value, "spa.startingmodel", "6.000", "5.000", "e2proc3d.py")
    _no_outputs(tmp_path / "out", "threed_00.mrc")


# --------------------------------------------------------------------------------------- disk full
def test_disk_full_during_write(tmp_path, monkeypatch):
    """ENOSPC in the middle of writing: nothing under the final name, temporary file removed."""
    import mrcfile

    real_new = mrcfile.new

    def new_then_fail(path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)  # a partial file exists when the disk fills
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(mrcfile, "new", new_then_fail)
    target = tmp_path / "out" / "map.mrc"
    with pytest.raises(OSError) as e:
        write_mrc(target, np.ones((8, 8, 8), np.float32), 1.0)
    assert e.value.errno == errno.ENOSPC
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(mrcfile, "new", real_new)

    # the same through atomic_write directly, for any writer
    with pytest.raises(OSError):
        with atomic_write(target) as tmp:
            pathlib.Path(tmp).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------------------- real snakemake runs
_ONE_RULE = """
rule tomogram_reconstruct:
    input:
        tilt_series="ts.mrc",
        info="info.json",
    output:
        tomogram="results/tomograms/t__bin{bin}.mrc",
    params:
        thickness_px=8, radial_filter="ramp", lowpass="none", apix=10.0,
    log:
        "results/logs/tomogram/tomogram_reconstruct/t__bin{bin}.log",
    threads: 1
    script:
        "%s"
"""


@pytest.mark.parametrize("case", ["truncated", "nan"])
def test_snakemake_job_fails_cleanly(tmp_path, case):
    """Through Snakemake: the job fails, the log holds the message, the output does not exist."""
    script = REPO / "workflow" / "scripts" / "tomogram_reconstruct.py"
    (tmp_path / "Snakefile").write_text(textwrap.dedent(_ONE_RULE % script))
    ts = _tilt_series(tmp_path / "ts.mrc", value=np.nan if case == "nan" else None)
    if case == "truncated":
        with open(ts, "r+b") as f:
            f.truncate(1024 + 100)
    _info(tmp_path / "info.json")
    out, _ = run_snakemake(tmp_path, None, ["--cores", "1", "results/tomograms/t__bin2.mrc"], timeout=300, check=False)
    assert "Error in rule" in out, out[-3000:]
    log = (tmp_path / "results/logs/tomogram/tomogram_reconstruct/t__bin2.log").read_text()
    words = {"truncated": ("file is truncated", "re-copy"), "nan": ("NaN/Inf", "regenerate")}[case]
    for w in words:
        assert w in log, log[-2000:]
    assert "ts.mrc" in log
    _no_outputs(tmp_path / "results" / "tomograms", "t__bin2.mrc")
