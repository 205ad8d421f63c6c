"""spa_fsc: FSC of threed_XX against the previous model (convergence) and, for the demo, the truth
(fsc_truth_XX.txt, and truth_eval_XX.json: resolution, FSC at the 2.5 px bar, hand, symmetry)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

from emflow.demo import scores  # noqa: E402
from emflow.fsc import fsc, resolution  # noqa: E402
from emflow.geometry import get_symmetry  # noqa: E402
from emflow.io import atomic_write, read_mrc, write_fsc_curve  # noqa: E402


def main(threed: str, previous: str, truth: list, out, it: str, truth_sym: str | None) -> None:
    vol, apix = read_mrc(threed)
    c = fsc(vol, read_mrc(previous)[0])
    write_fsc_curve(out.fsc, c, apix)
    log.info("iteration %s vs previous: FSC 0.5 at %.1f Å", it, resolution(c, apix, 0.5))
    ev: dict = {"iter": it, "apix": apix, "truth": None}
    if truth:
        ref = read_mrc(truth[0])[0]
        t = fsc(vol, ref)
        write_fsc_curve(out.fsc_truth, t, apix)
        sym = get_symmetry(truth_sym).matrices if truth_sym else None
        ev = {"iter": it, "apix": apix} | scores.map_vs_truth(vol, ref, apix, sym)
        log.info("iteration %s vs truth: %s", it, ev)
    else:
        with atomic_write(out.fsc_truth) as tmp, open(tmp, "w") as fh:
            fh.write("# no ground truth for user data\n")
    with atomic_write(out.truth_eval) as tmp, open(tmp, "w") as fh:
        json.dump(ev, fh, indent=1)


smk = snakemake  # noqa: F821
main(smk.input.threed, smk.input.previous, list(smk.input.truth), smk.output, smk.wildcards.it, smk.params.truth_sym)
