"""Snakemake adapter: map (MRC) → PNG of its central XY/XZ/YZ sections and projection along z."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.io import read_mrc  # noqa: E402
from emflow.pipeline import plots  # noqa: E402

smk = snakemake  # noqa: F821
vol, apix = read_mrc(smk.input.map)
stats = plots.map_overview(vol, apix, smk.output.png, title=smk.wildcards.map)
log.info("%s %s at %.4g Å/px: %s", smk.input.map, vol.shape, apix, stats)
