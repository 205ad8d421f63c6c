"""spa_gold: gold-standard refinement (spa.goldstandard, the e2refine_easy scheme) in one job
(emflow.spa.gold.run_gold): the e2refine iterations, then the local likelihood iterations L1, L2, …
(spa.local); per iteration the half maps, the masked phase-randomisation-corrected FSC
(gold/fsc_gold_XX.txt, the reported curve) and the unmasked one (gold/fsc_unmasked_XX.txt); the
FSC-weighted combined map (gold/threed_gold.mrc), gold/gold.json (demo: the combined map of every
iteration against the truth) and gold/gold_fsc.png."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

from emflow.demo.scores import map_vs_truth  # noqa: E402
from emflow.geometry import get_symmetry  # noqa: E402
from emflow.io import atomic_write, read_mrc, write_mrc  # noqa: E402
from emflow.pipeline.spa_plots import gold_fsc_plot  # noqa: E402
from emflow.spa.files import read_particles, write_gold_iteration  # noqa: E402
from emflow.spa.gold import local_names, run_gold  # noqa: E402
from emflow.spa.make3d import read_structure_factor  # noqa: E402


def main(inp, out, spa: dict, iters: list[str], truth_sym: str | None) -> None:
    particles, ctfs, apix = read_particles(inp.particles)
    model, _ = read_mrc(inp.model, expect_apix=apix, apix_key="particles.hdf apix_x")
    setsf = read_structure_factor(spa["m3dsetsf"], particles.shape[-1], apix) if spa["m3dsetsf"] else None
    truth = read_mrc(inp.truth[0])[0] if inp.truth else None
    sym = get_symmetry(truth_sym).matrices if truth_sym else None
    curves = []

    names = iters + local_names(spa["local"]["iterations"])  # the order of the rule's per-iteration outputs

    def write(it: str, r: dict, row: dict) -> None:
        curves.append(write_gold_iteration(out, names.index(it), r, apix))
        if truth is not None:  # demo: the combined map against the truth, beside the gold-standard figure
            row["truth"] = map_vs_truth(r["combined"], truth, apix, sym)
        log.info("iteration %s: %s", it, row)

    r, rows = run_gold(model, particles, spa, iters, apix, ctfs=ctfs, m3dsetsf=setsf, on_iteration=write)
    write_mrc(out.combined, r["combined"], apix)
    gold_fsc_plot(curves, rows, out.plot)
    with atomic_write(out.summary) as tmp, open(tmp, "w") as fh:
        json.dump({"iterations": rows, "gold_0143_a": rows[-1]["gold_0143_a"], "start_phase_random_beyond_a":
                   spa["gold_startres"], "halves": {h: len(m) for h, m in r["members"].items()}}, fh, indent=1)


smk = snakemake  # noqa: F821
main(smk.input, smk.output, smk.params.spa, list(smk.params.iters), smk.params.truth_sym)
