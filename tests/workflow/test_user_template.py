"""Template matching with the user's own template and mask (issue 12 item 3), through the workflow.

On a copy of the session's finished tiny run (fixture ``tiny_workflow``): the demo's true map is
stored as a user would get it from EMDB — another pixel size (3.1 Å/px instead of the tomogram's
20.96), another box, protein bright — with a spherical mask on the same grid, given as
``tempmatch.template`` / ``tempmatch.template_mask``; only the picks are rebuilt. The picks are scored
against the simulation's truth (F1, one-to-one within the particle radius). A map whose header says
1.0 Å/px stops the search with an error naming the file and how to set the header.
"""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import yaml
from workflow_runner import copy_run, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

USER_APIX = 3.1


def _picks_f1(work, tomo) -> dict:
    from emflow.demo.scores import score_tomogram_picks
    from emflow.io import read_star

    truth = json.loads((work / f"results/demo/truth/{tomo}_truth.json").read_text())
    table = next(iter(read_star(work / f"results/picks/{tomo}__picks.star").values()), {})
    if "rlnCenteredCoordinateXAngst" not in table:
        xyz = np.zeros((0, 3))
    else:
        xyz = np.stack([np.asarray(table[f"rlnCenteredCoordinate{a}Angst"], float) for a in "XYZ"], 1)
        xyz = xyz / float(truth["apix"])
    return score_tomogram_picks(xyz, None, truth)[0]


def _write_map(path, vol, apix):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(vol, np.float32))
        m.voxel_size = apix


@pytest.fixture(scope="module")
def user_run(tiny_workflow, tmp_path_factory):
    from emflow.io import read_mrc
    from emflow.resample import resample_map

    work = copy_run(tiny_workflow, tmp_path_factory.mktemp("user_template") / "run")
    truth, apix = read_mrc(work / "results/demo/truth/reference_tomo.mrc")
    box = 2 * int(round(truth.shape[0] * apix / USER_APIX * 0.6))  # an EMDB-like map: fine pixels, roomy box
    user = resample_map(truth, apix, USER_APIX, box)
    (work / "user").mkdir()
    _write_map(work / "user/emdb_like.mrc", user, USER_APIX)
    r = np.sqrt(sum(g ** 2 for g in np.meshgrid(*[np.arange(box) - box // 2] * 3, indexing="ij"))) * USER_APIX
    _write_map(work / "user/emdb_like_mask.mrc", (r < 0.45 * truth.shape[0] * apix).astype(np.float32), USER_APIX)
    _write_map(work / "user/no_pixel_size.mrc", user, 1.0)
    tomo = sorted(p.name.split("__")[0] for p in (work / "results/picks").glob("*__picks.star"))[0]
    return work, tomo


def _run(work, tomo, override, name, check=True):
    (work / f"{name}.yaml").write_text(yaml.safe_dump(override))
    return run_snakemake(work, "local", [f"results/picks/{tomo}__picks.star", "--cores", "2",
                                         "--configfile", ".test/config.yaml", f"{name}.yaml"], check=check)


def test_user_template_and_mask_find_the_particles(user_run):
    work, tomo = user_run
    sgd = _picks_f1(work, tomo)
    override = {"tempmatch": {"template": "user/emdb_like.mrc", "template_mask": "user/emdb_like_mask.mrc"}}
    out, seconds = _run(work, tomo, override, "user_template")
    assert "tempmatch_search" in out
    user = _picks_f1(work, tomo)
    doc = json.loads((work / f"results/tempmatch/{tomo}__angles.json").read_text())
    print(f"\n[user template] {seconds:.0f} s; F1 with the SGD template {sgd['f1']:.2f}, with the user's "
          f"{USER_APIX} Å map + mask {user['f1']:.2f} (precision {user['precision']:.2f}, recall {user['recall']:.2f}); "
          f"template box {doc['template_box_px']} px, FLCF sphere {doc['mask_radius_px']:.1f} px")
    assert doc["template_apix"] == pytest.approx(USER_APIX, rel=1e-4)
    assert user["f1"] >= 0.8


def test_user_template_without_pixel_size_is_refused(user_run):
    work, tomo = user_run
    out, _ = _run(work, tomo, {"tempmatch": {"template": "user/no_pixel_size.mrc"}}, "bad_template", check=False)
    assert "no_pixel_size.mrc" in out and "voxel_size" in out, out[-3000:]
