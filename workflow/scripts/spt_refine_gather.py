"""Snakemake adapter: chunk results of one iteration -> aliptcls3d_XX.lst / aliptcls2d_XX.lst (input order)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.spt_steps import gather_chunks  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule spt_refine_gather's inputs, outputs and params onto :func:`gather_chunks`."""
    inp = smk.input
    gather_chunks(info3d=inp.info3d, info2d=inp.info2d, ali3d=inp.ali3d, ali2d=inp.ali2d, chunks=list(inp.chunks),
                  ali3d_out=smk.output.ali3d, ali2d_out=smk.output.ali2d)


main(snakemake)  # noqa: F821
