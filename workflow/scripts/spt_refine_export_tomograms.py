"""Snakemake adapter: the refinement's tomograms -> tomograms.star (RELION 5 layout) beside
particles_final.star (``emflow.io.relion_tomo.export_relion5_tomograms``)."""

from emflow.io.relion_tomo import export_relion5_tomograms
from emflow.pipeline.log import setup_logging


def main(inp, out, names: list[str], thickness_unbin_px: int) -> None:
    export_relion5_tomograms(out.star, names, inp.info, inp.tilt_series, thickness_unbin_px)
    log.info("%d tomograms written to %s (RELION 5 tomograms.star + tilt_series/*.star)", len(names), out.star)


log = setup_logging(snakemake)  # noqa: F821
main(snakemake.input, snakemake.output, snakemake.params.names, snakemake.params.thickness_unbin_px)  # noqa: F821
