"""Snakemake adapter: tilt series + info json + plan → subtilts and 3D particles of one particle chunk,
streamed to disk in blocks sized by the job's memory (resources.mem_mb)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.extract_steps import extract_chunk  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule extract_chunk's inputs, outputs, params and resources onto :func:`extract_chunk`."""
    extract_chunk(tilt_series=smk.input.tilt_series, info_path=smk.input.info, plan_path=smk.input.plan,
                  chunk=smk.wildcards.chunk, particles_out=smk.output.particles,
                  particles3d_out=smk.output.particles3d, summary_out=smk.output.summary,
                  extract=smk.params.extract, microscope=smk.params.microscope, names=smk.params.final,
                  threads=smk.threads, mem_mb=smk.resources.mem_mb)


main(snakemake)  # noqa: F821
