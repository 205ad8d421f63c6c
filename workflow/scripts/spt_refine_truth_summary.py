"""Snakemake adapter (demo): per-iteration truth evaluations -> truth_eval.json (table + bars)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.spt_steps import summarize_truth_evals  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule spt_refine_truth_summary's inputs, outputs and params onto :func:`summarize_truth_evals`."""
    summarize_truth_evals(list(smk.input.evals), smk.output.json)


main(snakemake)  # noqa: F821
