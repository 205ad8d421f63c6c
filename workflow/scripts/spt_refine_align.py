"""Snakemake adapter: one chunk of particles, one iteration (p: align3d; t/r/d: subtilt refinement) -> npz."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.spt_steps import align_chunk  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule spt_refine_align's inputs, outputs and params onto :func:`align_chunk`."""
    align_chunk(inp=dict(smk.input.items()), chunk_out=smk.output.chunk, it=int(smk.wildcards.it),
                chunk=int(smk.wildcards.chunk), spt=smk.params.spt, microscope=smk.params.microscope)


main(snakemake)  # noqa: F821
