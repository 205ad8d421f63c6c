"""Snakemake adapter (demo only): picks and final maps vs the simulation's truth → demo_scores.json + figure
(``emflow.demo.scores.demo_scores``)."""

import json

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821  (before numpy/numba: threads, numba cache)

from emflow.demo.scores import demo_scores  # noqa: E402
from emflow.io import atomic_write  # noqa: E402
from emflow.pipeline import plots  # noqa: E402


def main(inp, out, sym: str) -> None:
    result = demo_scores(inp.truth, inp.picks, inp.spa_fsc_truth, inp.spa_eval, inp.spt_eval, sym)
    for name, summary in {**result["picks"], **result["maps"]}.items():
        log.info("%s: %s", name, summary)
    with atomic_write(out.scores) as tmp, open(tmp, "w") as fh:
        json.dump(result, fh, indent=1)
    plots.demo_scores(result, out.png)


main(snakemake.input, snakemake.output, snakemake.params.sym)  # noqa: F821
