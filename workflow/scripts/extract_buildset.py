"""Snakemake adapter: per-tomogram 3D particle files of one label → sets/<label>.lst (e2spt_buildsets)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.extract_steps import build_set  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule extract_buildset's inputs, outputs and params onto :func:`build_set`."""
    build_set(list(smk.input.particles3d), list(smk.input.summaries), smk.output.lst, smk.params.spliteo)


main(snakemake)  # noqa: F821
