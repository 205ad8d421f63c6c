"""Snakemake adapter (demo): one iteration vs the simulation truth -> truth_eval_XX.json + fsc_truth_XX.png."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.spt_steps import truth_eval_iteration  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule spt_refine_truth_eval's inputs, outputs and params onto :func:`truth_eval_iteration`."""
    inp = dict(smk.input.items())
    inp["truth"] = list(smk.input.truth)
    truth_eval_iteration(inp=inp, out=dict(smk.output.items()), it=int(smk.wildcards.it), shrink=smk.params.shrink)


main(snakemake)  # noqa: F821
