"""Subtilt refinement from the user's own reference, and continuing a gold-standard run (issue 12
items 3 and 7), through the workflow.

On a copy of the session's finished tiny run (fixture ``tiny_workflow``):

(a) ``spt_refine.ref`` = the demo's true map stored as a user would have it (3.1 Å/px instead of the
    particles' 5.24, another box): the starting references are that map resampled to the particles'
    grid (they match the true map tophat-filtered at ``startres`` after the same resampling), and
    one p iteration is scored against the truth;
(b) ``goldcontinue`` from the finished run ``spt_01`` (``ref: results/spt/spt_01/threed_01.hdf``):
    the halves start from ``threed_01_even/odd.hdf`` (different maps, their FSC is that of the
    previous run's halves), not from one shared map.
"""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import yaml
from workflow_runner import copy_run, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def run_copy(tiny_workflow, tmp_path_factory):
    return copy_run(tiny_workflow, tmp_path_factory.mktemp("user_reference") / "run")


def _refine(work, spt: dict, name: str, it: str = "01"):
    (work / f"{name}.yaml").write_text(yaml.safe_dump({"spt_refine": spt}))
    _, seconds = run_snakemake(work, "local", [f"{spt['path']}/truth_eval_{it}.json", "--cores", "2",
                                               "--configfile", ".test/config.yaml", f"{name}.yaml"])
    return json.loads((work / spt["path"] / f"truth_eval_{it}.json").read_text()), seconds


def _map(path):
    from emflow.sta.spt_files import read_map

    return read_map(str(path))


def test_user_reference_at_another_pixel_size(run_copy):
    from emflow import filters
    from emflow.io import read_mrc
    from emflow.resample import resample_map

    work = run_copy
    truth, apix = read_mrc(work / "results/demo/truth/reference_tomo.mrc")
    (work / "user").mkdir(exist_ok=True)
    user_apix, user_box = 3.1, 2 * int(round(truth.shape[0] * apix / 3.1 * 0.6))
    with mrcfile.new(work / "user/my_reference.mrc", overwrite=True) as m:
        m.set_data(resample_map(truth, apix, user_apix, user_box))
        m.voxel_size = user_apix
    spt = {"path": "results/spt/spt_user", "ref": "user/my_reference.mrc"}
    ev, seconds = _refine(work, spt, "user_ref")
    even, apix_p = _map(work / "results/spt/spt_user/threed_00_even.hdf")
    expect = filters.lowpass_tophat(resample_map(truth, apix, apix_p, even.shape[0]), apix_p, 50.0)
    sphere = np.linalg.norm(np.indices(even.shape) - even.shape[0] // 2, axis=0) < 0.4 * even.shape[0]
    cc = np.corrcoef(even[sphere], expect[sphere])[0, 1]
    print(f"\n[user reference] {seconds:.0f} s; start map vs truth (50 Å) CC {cc:.3f}; after one p: gold "
          f"{ev['gold_0143_a']:.1f} Å, vs truth {ev['fsc_truth_0143_a']:.1f} Å (0.143), median orientation error "
          f"{ev['median_orientation_deg']:.1f}°")
    assert cc > 0.95
    assert ev["fsc_truth_0143_a"] < 40.0


def test_goldcontinue_starts_from_the_previous_halves(run_copy):
    from emflow.fsc import fsc

    work = run_copy
    prev = json.loads((work / "results/spt/spt_01/resolution_01.json").read_text())
    spt = {"path": "results/spt/spt_cont", "ref": "results/spt/spt_01/threed_01.hdf", "goldcontinue": True,
           "startres": round(float(prev["res_0143_masked_a"]), 1)}
    ev, seconds = _refine(work, spt, "goldcontinue")
    even, _ = _map(work / "results/spt/spt_cont/threed_00_even.hdf")
    odd, _ = _map(work / "results/spt/spt_cont/threed_00_odd.hdf")
    prev_e, _ = _map(work / "results/spt/spt_01/threed_01_even.hdf")
    prev_o, _ = _map(work / "results/spt/spt_01/threed_01_odd.hdf")
    f_new, f_prev = fsc(even, odd).fsc, fsc(prev_e, prev_o).fsc
    n = even.shape[0] // 2
    print(f"\n[goldcontinue] {seconds:.0f} s; start halves FSC (shells {n // 2}-{n - 1}) {f_new[n // 2:n].mean():.3f} "
          f"(previous run's halves {f_prev[n // 2:n].mean():.3f}); after one p: gold {ev['gold_0143_a']:.1f} Å, "
          f"vs truth {ev['fsc_truth_0143_a']:.1f} Å")
    assert not np.allclose(even, odd)
    assert f_new[n // 2:n].mean() < 0.9  # not one shared map (FSC 1)
    assert abs(f_new[n // 2:n].mean() - f_prev[n // 2:n].mean()) < 0.15
