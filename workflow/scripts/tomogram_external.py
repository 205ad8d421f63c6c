"""Snakemake adapter: a tomogram reconstructed elsewhere (IMOD layout and hand) → the pipeline's binned
tomogram (what is accepted: :func:`emflow.sta.tomogram_steps.external_tomogram`)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.tomogram_steps import external_tomogram  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule tomogram_external's inputs, outputs and params onto :func:`external_tomogram`."""
    external_tomogram(smk.input.tomogram, smk.input.tilt_series, smk.input.info, smk.output.tomogram,
                      bin=int(smk.wildcards.bin), threads=smk.threads, thickness_px=smk.params.thickness_px,
                      tomogram_bin=smk.params.tomogram_bin)


main(snakemake)  # noqa: F821
