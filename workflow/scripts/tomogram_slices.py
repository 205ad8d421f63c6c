"""Snakemake adapter: tomogram → PNG of its central XY, XZ and YZ slices (quick look for the report)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.io import read_mrc  # noqa: E402  (after setup_logging: numba cache, threads)
from emflow.pipeline import plots  # noqa: E402
from emflow.sta.tomo import central_slices  # noqa: E402


def main(tomogram: str, out_png: str, title: str) -> None:
    """Three panels on a shared grey scale (1st-99th percentile of the three slices)."""
    vol, apix = read_mrc(tomogram, mmap=True)
    slices, limits = central_slices(vol)
    plots.tomogram_slices(slices, limits, vol.shape, apix, title, out_png)
    log.info("wrote %s", out_png)


main(snakemake.input.tomogram, snakemake.output.png,  # noqa: F821
     title=f"{snakemake.wildcards.tomo} bin {snakemake.wildcards.bin}")  # noqa: F821
