"""Snakemake adapter: final alignments -> particles_final.star in RELION 5's tomography layout
(``emflow.sta.spt_steps.export_relion``)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.spt_steps import export_relion  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule spt_refine_export's inputs, outputs and params onto :func:`export_relion`."""
    inp = smk.input
    export_relion(info3d=inp.info3d, info2d=inp.info2d, ali3d=inp.ali3d, ali2d=inp.ali2d, star_out=smk.output.star,
                  microscope=smk.params.microscope, shrink=smk.params.shrink)


main(snakemake)  # noqa: F821
