"""Snakemake adapter (demo only): picks and final maps vs the simulation's truth → demo_scores.json + figure."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402
import pathlib  # noqa: E402

import numpy as np  # noqa: E402

from emflow.demo import scores  # noqa: E402
from emflow.geometry import get_symmetry, relion_to_matrix  # noqa: E402
from emflow.io import atomic_write, read_fsc_txt, read_star  # noqa: E402
from emflow.pipeline import plots  # noqa: E402

smk = snakemake  # noqa: F821
sym = get_symmetry(smk.params.sym).matrices
result = {"picks": {}, "orientation_errors_deg": {}, "maps": {},
          "notes": "picks: one-to-one (Hungarian) match within the particle radius; orientation error up to "
                   f"the template symmetry {smk.params.sym}, after the template's own frame "
                   "(template_frame_deg, fitted to all matches) is removed; maps: FSC vs the true map, Å at 0.5 and 0.143"}


def read_picks(truth_path, picks_path):
    """(truth dict, picks xyz (n, 3) unbinned px from the centre, R_p (n, 3, 3)) of one tomogram."""
    truth = json.loads(pathlib.Path(truth_path).read_text())
    table = next(iter(read_star(picks_path).values()), {})
    truth.setdefault("tomogram", pathlib.Path(truth_path).name)
    if "rlnCenteredCoordinateXAngst" not in table:
        return truth, np.zeros((0, 3)), np.zeros((0, 3, 3))
    xyz = np.stack([np.asarray(table[f"rlnCenteredCoordinate{a}Angst"], np.float64) for a in "XYZ"], 1)
    rots = relion_to_matrix(*(np.asarray(table[k], np.float64) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    return truth, xyz / float(truth["apix"]), rots.reshape(-1, 3, 3)


tomos = [read_picks(t, p) for t, p in zip(smk.input.truth, smk.input.picks)]
# the template (e.g. the SGD model) has its own frame, common to all tomograms: found from all matches
pairs = [scores.matched_rotations(xyz, rots, truth) for truth, xyz, rots in tomos]
est, true = (np.concatenate([p[k] for p in pairs]) if pairs else np.zeros((0, 3, 3)) for k in (0, 1))  # SPA-only demo
frame = scores.template_frame(est, true, sym) if len(est) else np.eye(3)
result["template_frame_deg"] = float(scores.orientation_errors(frame[None], np.eye(3)[None])[0])
for truth, xyz, rots in tomos:
    name = truth["tomogram"]
    summary, errors = scores.score_tomogram_picks(xyz, rots, truth, sym, frame=frame)
    result["picks"][name] = summary
    result["orientation_errors_deg"][name] = np.round(errors, 3).tolist()
    if truth.get("picks_px"):  # the demo's simulated manual picks: a check of the frames used above
        manual, _ = scores.score_tomogram_picks(np.asarray(truth["picks_px"]), None, truth)
        result.setdefault("manual_picks", {})[name] = manual
    log.info("%s: %s", name, summary)
for path, eval_path in zip(smk.input.spa_fsc_truth, smk.input.spa_eval):
    freq, fsc = read_fsc_txt(path)
    ev = json.loads(pathlib.Path(eval_path).read_text())
    result["maps"]["spa_final"] = scores.fsc_summary(freq, fsc) | {
        "file": path, **{k: ev.get(k) for k in ("fsc_truth_05_px", "bar_px", "fsc_at_bar", "hand_correct",
                                                 "hand_fsc_true", "hand_fsc_mirror", "symmetry_fsc",
                                                 "truth_symmetry_fsc")}}
    log.info("SPA final map vs truth: %s", result["maps"]["spa_final"])
for path in smk.input.spt_eval:
    final = json.loads(pathlib.Path(path).read_text())["final"]
    result["maps"]["spt_final"] = {"fsc_0.5_A": final["fsc_truth_05_a"], "fsc_0.143_A": final["fsc_truth_0143_a"],
                                   "gold_0.143_A": final["gold_0143_a"], "file": path,
                                   "median_orientation_deg": final["median_orientation_deg"],
                                   "median_translation_px": final["median_translation_px"]}
    log.info("subtilt refinement final map vs truth: %s", result["maps"]["spt_final"])
with atomic_write(smk.output.scores) as tmp, open(tmp, "w") as fh:
    json.dump(result, fh, indent=1)
plots.demo_scores(result, smk.output.png)
