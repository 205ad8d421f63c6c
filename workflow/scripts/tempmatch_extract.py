"""Snakemake adapter: score map → candidate picks (threshold, NMS, edge/volume filters) as STAR."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.tempmatch_steps import extract_candidates  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule tempmatch_extract's inputs, outputs and params onto :func:`extract_candidates`."""
    extract_candidates(scores_path=smk.input.scores, angle_map_path=smk.input.angle_map,
                       angles_path=smk.input.angles, info_path=smk.input.info, tomo_name=smk.wildcards.tomo,
                       candidates_out=smk.output.candidates, summary_out=smk.output.summary,
                       cfg=smk.params.picks, microscope=smk.params.microscope)


main(snakemake)  # noqa: F821
