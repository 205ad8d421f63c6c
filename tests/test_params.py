"""Which config keys each rule receives (emflow/pipeline/params.py, emflow.sta.spt_refine.STAGE_KEYS):
science keys of the schema only, no thread counts, and one iteration's keys per refinement job."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

from emflow.errors import InputError
from emflow.pipeline.params import RULE_KEYS, reject_runtime_keys, rule_params
from emflow.sta.spt_refine import STAGE_KEYS, iteration_params, stage_params

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _schema_section(dotted):
    node = SCHEMA
    for part in dotted.split("."):
        node = node["properties"][part]
    return node["properties"]


def test_every_rule_key_is_a_science_key_of_the_schema_and_config():
    for rule, sections in RULE_KEYS.items():
        for section, keys in sections.items():
            known = _schema_section(section)
            missing = [k for k in keys if k not in known]
            assert not missing, f"{rule} reads {section}.{missing}, not in config/schema.yaml"
            assert "threads" not in keys
            rule_params(CONFIG, rule, section)  # every key present in config/config.yaml
    spt = _schema_section("spt_refine")
    for stage, keys in STAGE_KEYS.items():
        assert set(keys) <= set(spt), stage
    for section in ("tempmatch", "initial_model", "spt_refine"):
        assert "threads" not in _schema_section(section) and "threads" not in CONFIG[section]


def test_old_thread_keys_are_refused_with_the_set_threads_line():
    cfg = copy.deepcopy(CONFIG)
    reject_runtime_keys(cfg)
    cfg["spt_refine"]["threads"] = 8
    with pytest.raises(InputError) as e:
        reject_runtime_keys(cfg)
    msg = str(e.value)
    assert "spt_refine.threads" in msg and "--set-threads spt_refine_align=8" in msg


def test_an_iteration_gets_only_its_own_keys():
    spt = dict(CONFIG["spt_refine"], iters="p,p,t,r,d", localrefine=True)
    before = [iteration_params(spt, it) for it in range(1, 6)]
    assert before[0]["kind"] == "p" and before[0]["mode"] == "global" and "delta_deg" in before[0]
    assert before[1]["mode"] == "local" and "maxang" in before[1] and "delta_deg" not in before[1]
    assert before[2]["kind"] == "t" and "smooth" in before[2] and "maxang" not in before[2]
    assert all("iters" not in p and "threads" not in p for p in before)
    longer = dict(spt, iters="p,p,t,r,d,p,t")  # appended iterations change no earlier job
    assert [iteration_params(longer, it) for it in range(1, 6)] == before
    assert stage_params(longer, "setup") == stage_params(spt, "setup")
    assert iteration_params(dict(spt, delta_deg=7.5), 2) == before[1]  # delta_deg: global p only
    assert iteration_params(dict(spt, delta_deg=7.5), 1) != before[0]
    assert iteration_params(spt, 5, "postprocess") == {**stage_params(spt, "postprocess"), "kind": "d"}
    with pytest.raises(InputError):
        iteration_params(spt, 6)
