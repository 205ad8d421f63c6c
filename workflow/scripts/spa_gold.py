"""spa_gold: gold-standard refinement (spa.goldstandard, the e2refine_easy scheme) in one job
(emflow.spa.gold.run_gold): per iteration the half maps, the masked phase-randomisation-corrected FSC
(gold/fsc_gold_XX.txt, the reported curve) and the unmasked one (gold/fsc_unmasked_XX.txt); the
FSC-weighted combined map (gold/threed_gold.mrc), gold/gold.json and gold/gold_fsc.png."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

from emflow.io import atomic_write, read_mrc, write_fsc_txt, write_mrc  # noqa: E402
from emflow.pipeline.spa_plots import gold_fsc_plot  # noqa: E402
from emflow.spa.files import read_particles  # noqa: E402
from emflow.spa.gold import run_gold  # noqa: E402
from emflow.spa.make3d import read_structure_factor  # noqa: E402


def main(inp, out, spa: dict, iters: list[str]) -> None:
    particles, ctfs, apix = read_particles(inp.particles)
    model, _ = read_mrc(inp.model, expect_apix=apix, apix_key="particles.hdf apix_x")
    setsf = read_structure_factor(spa["m3dsetsf"], particles.shape[-1], apix) if spa["m3dsetsf"] else None
    curves = []

    def write(it: str, r: dict, row: dict) -> None:
        k, g = iters.index(it), r["fsc_all"]
        write_mrc(out.even[k], r["maps"]["even"], apix)
        write_mrc(out.odd[k], r["maps"]["odd"], apix)
        write_fsc_txt(out.fsc[k], g["true"].freq[1:] / apix, g["true"].fsc[1:])  # as spa_fsc
        write_fsc_txt(out.fsc_unmasked[k], g["unmasked"].freq[1:] / apix, g["unmasked"].fsc[1:])
        curves.append({"freq": g["true"].freq / apix, "true": g["true"].fsc, "unmasked": g["unmasked"].fsc})
        log.info("iteration %s: %s", it, row)

    r, rows = run_gold(model, particles, spa, iters, apix, ctfs=ctfs, m3dsetsf=setsf, on_iteration=write)
    write_mrc(out.combined, r["combined"], apix)
    gold_fsc_plot(curves, rows, out.plot)
    with atomic_write(out.summary) as tmp, open(tmp, "w") as fh:
        json.dump({"iterations": rows, "gold_0143_a": rows[-1]["gold_0143_a"], "start_phase_random_beyond_a":
                   spa["gold_startres"], "halves": {h: len(m) for h, m in r["members"].items()}}, fh, indent=1)


main(snakemake.input, snakemake.output, snakemake.params.spa, list(snakemake.params.iters))  # noqa: F821
