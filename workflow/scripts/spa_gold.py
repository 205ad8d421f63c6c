"""spa_gold: gold-standard refinement (spa.goldstandard, the e2refine_easy scheme) in one job.

Even/odd halves of particles.hdf refined independently from threed_00 phase-randomised beyond
spa.gold_startres (a different realisation per half); per iteration the half maps
(gold/threed_even_XX.mrc, gold/threed_odd_XX.mrc), their FSC (gold/fsc_gold_XX.txt) and its 0.143
resolution; the FSC-weighted combined map of the last iteration (gold/threed_gold.mrc) and
gold/gold.json. See emflow.spa.gold.
"""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json
import time

from emflow.io import atomic_write, read_mrc, write_fsc_curve, write_mrc
from emflow.spa.files import read_particles
from emflow.spa.gold import gold_iteration, gold_start
from emflow.spa.make3d import read_structure_factor
from emflow.spa.refine_loop import RefineOptions, orientgen_for_iteration

smk = snakemake  # noqa: F821
spa = smk.params.spa
particles, ctfs, apix = read_particles(smk.input.particles)
model, _ = read_mrc(smk.input.model, expect_apix=apix, apix_key="particles.hdf apix_x")
setsf = read_structure_factor(spa["m3dsetsf"], particles.shape[-1], apix) if spa["m3dsetsf"] else None
models = gold_start(model, apix, spa["gold_startres"], seed=0)
rows = []
for k, it in enumerate(smk.params.iters):
    opts = RefineOptions.from_config(spa, apix=apix, m3dsetsf=setsf,
                                     orientgen=orientgen_for_iteration(spa["orientgen"], int(it)))
    t0 = time.perf_counter()
    r = gold_iteration(models, particles, opts, ctfs=ctfs, seed=10 * int(it))
    models = r["next"]
    write_mrc(smk.output.even[k], r["maps"]["even"], apix)
    write_mrc(smk.output.odd[k], r["maps"]["odd"], apix)
    write_fsc_curve(smk.output.fsc[k], r["fsc"], apix)
    rows.append({"iter": it, "gold_0143_a": r["res_0143_a"], "seconds": round(time.perf_counter() - t0, 1)})
    log.info("iteration %s: gold-standard FSC 0.143 at %.1f Å (%.0f s)", it, r["res_0143_a"], rows[-1]["seconds"])
write_mrc(smk.output.combined, r["combined"], apix)
with atomic_write(smk.output.summary) as tmp, open(tmp, "w") as fh:
    json.dump({"iterations": rows, "gold_0143_a": rows[-1]["gold_0143_a"], "start_phase_random_beyond_a":
               spa["gold_startres"], "halves": {"even": len(r["members"]["even"]), "odd": len(r["members"]["odd"])}},
              fh, indent=1)
