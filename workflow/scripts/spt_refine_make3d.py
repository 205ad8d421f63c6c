"""Snakemake adapter: partial even/odd reconstruction of one particle chunk (keep + score weights) -> npz."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.spt_steps import reconstruct_chunk  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule spt_refine_make3d's inputs, outputs and params onto :func:`reconstruct_chunk`."""
    reconstruct_chunk(inp=dict(smk.input.items()), rec_out=smk.output.rec, chunk=int(smk.wildcards.chunk),
                      spt=smk.params.spt, microscope=smk.params.microscope)


main(snakemake)  # noqa: F821
