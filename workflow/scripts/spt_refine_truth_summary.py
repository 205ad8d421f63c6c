"""Snakemake adapter (demo): per-iteration truth evaluations -> truth_eval.json (table + bars)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

from emflow.io import atomic_write  # noqa: E402

keys = ("iteration", "kind", "aligned_at_a", "gold_0143_a", "fsc_truth_05_a", "fsc_truth_0143_a",
        "median_orientation_deg", "median_translation_px", "n_inliers", "n_particles")
rows = []
for path in snakemake.input.evals:  # noqa: F821
    with open(path) as f:
        d = json.load(f)
    rows.append({k: d[k] for k in keys})
last = rows[-1]
summary = {"iterations": rows, "final": last,
           "bars": {"truth_05_within_1.3x_gold": last["fsc_truth_05_a"] <= 1.3 * last["gold_0143_a"],
                    "orientation_le_3deg": last["median_orientation_deg"] <= 3.0,
                    "translation_le_1px": last["median_translation_px"] <= 1.0}}
with atomic_write(snakemake.output.json) as tmp, open(tmp, "w") as f:  # noqa: F821
    json.dump(summary, f, indent=1)
for r in rows:
    log.info("%(iteration)02d %(kind)s gold %(gold_0143_a).1f Å truth0.5 %(fsc_truth_05_a).1f Å "
             "%(median_orientation_deg).2f° %(median_translation_px).2f px", r)
