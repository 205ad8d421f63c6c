"""Snakemake adapter: candidates → filtered picks (score, distance, mask, count) as STAR +
info json boxes_3d (method "tm") + a review PNG."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.tempmatch_steps import filter_candidates  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule picks_filter's inputs, outputs and params onto :func:`filter_candidates`."""
    filter_candidates(candidates_path=smk.input.candidates, summary_path=smk.input.summary,
                      tomogram=smk.input.tomogram, scores_path=smk.input.scores, mask=list(smk.input.mask),
                      info_path=smk.input.info, tomo_name=smk.wildcards.tomo, star_out=smk.output.star,
                      info_out=smk.output.info, review_out=smk.output.review, cfg=smk.params.picks)


main(snakemake)  # noqa: F821
