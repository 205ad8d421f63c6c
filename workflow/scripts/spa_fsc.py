"""spa_fsc: FSC of threed_XX against the previous model (convergence) and, for the demo, the truth
(fsc_truth_XX.txt, and truth_eval_XX.json: resolution, FSC at the 2.5 px bar, hand, symmetry)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

from emflow.demo import scores  # noqa: E402
from emflow.fsc import fsc, resolution  # noqa: E402
from emflow.geometry import get_symmetry  # noqa: E402
from emflow.io import atomic_write, read_mrc, write_fsc_curve  # noqa: E402

smk = snakemake  # noqa: F821
vol, apix = read_mrc(smk.input.threed)
prev, _ = read_mrc(smk.input.previous)
c = fsc(vol, prev)
write_fsc_curve(smk.output.fsc, c, apix)
log.info("iteration %s vs previous: FSC 0.5 at %.1f Å", smk.wildcards.it, resolution(c, apix, 0.5))
if smk.input.truth:
    truth, _ = read_mrc(smk.input.truth[0])
    t = fsc(vol, truth)
    write_fsc_curve(smk.output.fsc_truth, t, apix)
    sym = get_symmetry(smk.params.truth_sym).matrices if smk.params.truth_sym else None
    ev = {"iter": smk.wildcards.it, "apix": apix} | scores.map_vs_truth(vol, truth, apix, sym)
    log.info("iteration %s vs truth: %s", smk.wildcards.it, ev)
else:
    with atomic_write(smk.output.fsc_truth) as tmp, open(tmp, "w") as fh:
        fh.write("# no ground truth for user data\n")
    ev = {"iter": smk.wildcards.it, "apix": apix, "truth": None}
with atomic_write(smk.output.truth_eval) as tmp, open(tmp, "w") as fh:
    json.dump(ev, fh, indent=1)
