"""Snakemake adapter: tilt series + info json (tlt_params) → binned WBP tomogram (MRC)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.tomogram_steps import reconstruct_tomogram  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule tomogram_reconstruct's inputs, outputs and params onto :func:`reconstruct_tomogram`."""
    reconstruct_tomogram(smk.input.tilt_series, smk.input.info, smk.output.tomogram, bin=int(smk.wildcards.bin),
                         threads=smk.threads, thickness_px=smk.params.thickness_px,
                         radial_filter=smk.params.radial_filter, lowpass=smk.params.lowpass, apix=smk.params.apix)


main(snakemake)  # noqa: F821
