"""Snakemake adapter: map (MRC) → PNG of its central XY/XZ/YZ sections and projection along z."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.io import read_mrc  # noqa: E402
from emflow.pipeline import plots  # noqa: E402


def draw_map(map_path: str, png: str, title: str) -> None:
    """Central sections + projection of ``map_path`` into ``png``, titled ``title``."""
    vol, apix = read_mrc(map_path)
    stats = plots.map_overview(vol, apix, png, title=title)
    log.info("%s %s at %.4g Å/px: %s", map_path, vol.shape, apix, stats)


draw_map(snakemake.input.map, snakemake.output.png, snakemake.params.title)  # noqa: F821
