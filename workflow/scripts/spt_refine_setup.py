"""Snakemake adapter: set .lst + reference -> run tables, identity alignments, threed_00 even/odd
(spec §3.6 steps 0-1)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.spt_steps import setup_run  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map checkpoint spt_refine_setup's inputs, outputs and params onto :func:`setup_run`."""
    inp, spt = smk.input, smk.params.spt
    setup_run(lst=inp.lst, ref=inp.ref, halves=(inp.ref_even, inp.ref_odd) if spt["goldcontinue"] else None,
              out=dict(smk.output.items()), spt=spt, shrink=smk.params.shrink, user_ref=smk.params.user_ref,
              apix_override=smk.params.apix_override)


main(snakemake)  # noqa: F821
