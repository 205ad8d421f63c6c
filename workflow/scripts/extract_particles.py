"""Snakemake adapter (gather): the chunk files of one tomogram × label → its subtilt and 3D-particle
files (image groups copied as stored) and the summary."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.extract_steps import gather_chunks  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule extract_particles's inputs and outputs onto :func:`gather_chunks`."""
    gather_chunks(plan_path=smk.input.plan, chunk_summaries=list(smk.input.chunk_summaries),
                  subtilts=list(smk.input.subtilts), chunks3d=list(smk.input.chunks3d),
                  particles_out=smk.output.particles, particles3d_out=smk.output.particles3d,
                  summary_out=smk.output.summary)


main(snakemake)  # noqa: F821
