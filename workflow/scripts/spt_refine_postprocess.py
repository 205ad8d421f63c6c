"""Snakemake adapter: merge partial reconstructions, postprocess (FSCs, masks, filtering), next resolution, plot."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.spt_steps import postprocess_iteration  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule spt_refine_postprocess's inputs, outputs and params onto :func:`postprocess_iteration`."""
    postprocess_iteration(recs=list(smk.input.recs), res_in=smk.input.res_in, out=dict(smk.output.items()),
                          it=int(smk.wildcards.it), spt=smk.params.spt)


main(snakemake)  # noqa: F821
