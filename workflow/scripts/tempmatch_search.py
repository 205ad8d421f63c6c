"""Snakemake adapter: binned tomogram + template → FLCF score map, best-orientation map, angle list."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.tempmatch_steps import search_tomogram  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule tempmatch_search's inputs, outputs and params onto :func:`search_tomogram`."""
    search_tomogram(tomogram=smk.input.tomogram, template=smk.input.template,
                    template_mask=smk.input.get("template_mask", []), info_path=smk.input.info, tlt=smk.input.tlt,
                    scores_out=smk.output.scores,
                    angle_map_out=smk.output.angle_map, angles_out=smk.output.angles, cfg=smk.params.tm,
                    microscope=smk.params.microscope, apix_override=smk.params.get("apix_override", {}))


main(snakemake)  # noqa: F821
