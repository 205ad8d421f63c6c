"""Snakemake adapter (demo only): picks and final maps vs the simulation's truth → demo_scores.json + figure."""

from emflow.workflow_log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402
import pathlib  # noqa: E402

import numpy as np  # noqa: E402

from emflow import plots, scores  # noqa: E402
from emflow.geometry import get_symmetry, relion_to_matrix  # noqa: E402
from emflow.io import atomic_write, read_fsc_txt, read_star  # noqa: E402

smk = snakemake  # noqa: F821
sym = get_symmetry(smk.params.sym).matrices
result = {"picks": {}, "orientation_errors_deg": {}, "maps": {},
          "notes": "picks: one-to-one (Hungarian) match within the particle radius; orientation error up to "
                   f"the template symmetry {smk.params.sym}; maps: FSC vs the true map, Å at 0.5 and 0.143"}
for truth_path, picks_path in zip(smk.input.truth, smk.input.picks):
    truth = json.loads(pathlib.Path(truth_path).read_text())
    table = next(iter(read_star(picks_path).values()), {})
    apix_unbin = float(truth["apix"])
    if "rlnCenteredCoordinateXAngst" in table:
        xyz = np.stack([np.asarray(table[f"rlnCenteredCoordinate{a}Angst"], np.float64) for a in "XYZ"], 1) / apix_unbin
        rots = relion_to_matrix(*(np.asarray(table[k], np.float64) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    else:
        xyz, rots = np.zeros((0, 3)), np.zeros((0, 3, 3))
    name = truth.get("tomogram", pathlib.Path(truth_path).name)
    summary, errors = scores.score_tomogram_picks(xyz, rots.reshape(-1, 3, 3), truth, sym)
    result["picks"][name] = summary
    result["orientation_errors_deg"][name] = np.round(errors, 3).tolist()
    if truth.get("picks_px"):  # the demo's simulated manual picks: a check of the frames used above
        manual, _ = scores.score_tomogram_picks(np.asarray(truth["picks_px"]), None, truth)
        result.setdefault("manual_picks", {})[name] = manual
    log.info("%s: %s", name, summary)
for path in smk.input.spa_fsc_truth:
    freq, fsc = read_fsc_txt(path)
    result["maps"]["spa_final"] = scores.fsc_summary(freq, fsc) | {"file": path}
    log.info("SPA final map vs truth: %s", result["maps"]["spa_final"])
with atomic_write(smk.output.scores) as tmp, open(tmp, "w") as fh:
    json.dump(result, fh, indent=1)
plots.demo_scores(result, smk.output.png)
