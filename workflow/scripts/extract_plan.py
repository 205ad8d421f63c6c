"""Snakemake adapter (checkpoint): picks of one tomogram × label → the extraction plan (kept picks,
excluded picks, box sizes, particle chunks for the extract_chunk jobs)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.extract_steps import plan_extraction  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map checkpoint extract_plan's inputs, outputs and params onto :func:`plan_extraction`."""
    plan_extraction(tilt_series=smk.input.tilt_series, picks=smk.input.picks, plan_out=smk.output.plan,
                    tomo=smk.wildcards.tomo, label=smk.wildcards.label, extract=smk.params.extract,
                    thickness_unbin_px=smk.params.thickness_unbin_px)


main(snakemake)  # noqa: F821
