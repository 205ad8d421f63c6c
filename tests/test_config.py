"""The default config is complete and valid; bad keys stop the run naming the key."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

from emflow.errors import InputError
from emflow.pipeline.config import TomogramEntry, tomogram_table, validate_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _schema_keys(schema, prefix=""):
    """Every leaf key path the schema declares (objects recurse)."""
    keys = []
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        if sub.get("type") == "object" and "properties" in sub:
            keys += _schema_keys(sub, path + ".")
        else:
            keys.append(path)
    return keys


def _get(cfg, path):
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


def test_default_config_is_valid(config):
    validate_config(config, SCHEMA)


def test_default_config_writes_every_schema_key(config):
    schema = yaml.safe_load(SCHEMA.read_text())
    missing = []
    for path in _schema_keys(schema):
        try:
            _get(config, path)
        except KeyError:
            missing.append(path)
    assert not missing, f"config/config.yaml lacks keys declared in the schema: {missing}"


def test_every_schema_key_has_description_and_default(config):
    schema = yaml.safe_load(SCHEMA.read_text())

    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, f"{path}{name}.")
            else:
                assert "description" in sub, f"{path}{name} has no description"
    walk(schema, "")


def test_unknown_key_is_named(config):
    bad = copy.deepcopy(config)
    bad["demo"]["tomo"]["snrr"] = 0.1
    with pytest.raises(InputError, match=r"config key 'demo\.tomo\.snrr' is not a known key"):
        validate_config(bad, SCHEMA)


def test_out_of_range_value_is_named(config):
    bad = copy.deepcopy(config)
    bad["microscope"]["ampcont"] = 7
    with pytest.raises(InputError, match=r"config key 'microscope\.ampcont'"):
        validate_config(bad, SCHEMA)


def test_invalid_symmetry_is_named(config):
    bad = copy.deepcopy(config)
    bad["spa"]["sym"] = "x9"
    with pytest.raises(InputError, match=r"config key 'spa\.sym'"):
        validate_config(bad, SCHEMA)


def test_missing_keys_get_schema_defaults(config):
    partial = copy.deepcopy(config)
    del partial["tomogram"]["bin"]
    validate_config(partial, SCHEMA)
    assert partial["tomogram"]["bin"] == 4


def test_demo_table(config):
    table = tomogram_table(config)
    assert list(table) == ["demo_01", "demo_02"]
    assert table["demo_01"].tilt_series.endswith("demo_01.mrc")


def test_table_source_requires_rows(config):
    config["input"]["source"] = "table"
    with pytest.raises(InputError, match="input.tomograms"):
        tomogram_table(config)
    config["input"]["tomograms"] = [
        {"name": "TS_1", "tilt_series": "a.mrc", "tlt": "a.tlt"},
        {"name": "TS_1", "tilt_series": "b.mrc", "tlt": "b.tlt"},
    ]
    with pytest.raises(InputError, match="appears twice"):
        tomogram_table(config)


def test_eman2_project_layout(tmp_path, config):
    (tmp_path / "tiltseries").mkdir()
    (tmp_path / "info").mkdir()
    (tmp_path / "tiltseries" / "tomo1.hdf").write_bytes(b"")
    config["input"]["source"] = "eman2_project"
    config["input"]["eman2_project"] = str(tmp_path)
    with pytest.raises(InputError, match="info/tomo1_info.json"):
        tomogram_table(config)
    (tmp_path / "info" / "tomo1_info.json").write_text("{}")
    table = tomogram_table(config)
    assert table["tomo1"] == TomogramEntry(
        name="tomo1",
        tilt_series=str(tmp_path / "tiltseries" / "tomo1.hdf"),
        tlt=None,
        info_json=str(tmp_path / "info" / "tomo1_info.json"),
        picks=None,  # the json has no boxes_3d (picks then come from template matching)
    )


def test_spa_orientgen_schedule_is_validated_and_expanded(config):
    """A list orientgen is a per-iteration schedule (last repeated); every string must parse."""
    from emflow.spa.refine_loop import check_options, orientgen_for_iteration

    cfg = copy.deepcopy(config)
    cfg["spa"]["orientgen"] = ["eman:delta=6:inc_mirror=0", "eman:delta=3:inc_mirror=0"]
    spa = dict(validate_config(cfg, SCHEMA)["spa"])
    assert [orientgen_for_iteration(spa["orientgen"], i) for i in (1, 2, 5)] == [
        "eman:delta=6:inc_mirror=0", "eman:delta=3:inc_mirror=0", "eman:delta=3:inc_mirror=0"]
    # D7 asymmetric unit: halving the step roughly triples-to-quadruples the projections
    counts = check_options({**spa, "sym": "d7"}, 3)
    assert counts[0] == 56 and counts[1] == counts[2] == 187
    cfg["spa"]["orientgen"] = []
    with pytest.raises(InputError, match=r"config key 'spa\.orientgen'"):
        validate_config(cfg, SCHEMA)
    with pytest.raises(InputError, match="orientgen"):
        check_options({**spa, "orientgen": ["eman:delta=6", "eman:dleta=3"]}, 2)
    with pytest.raises(InputError, match="spa.classaverager"):
        check_options({**spa, "classaverager": "median"}, 1)
