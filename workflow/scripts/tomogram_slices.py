"""Snakemake adapter: tomogram → PNG of its central XY, XZ and YZ slices (quick look for the report)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from emflow.io import atomic_write, read_mrc  # noqa: E402
from emflow.sta.tomo import central_slices  # noqa: E402


def main(tomogram: str, out_png: str, title: str) -> None:
    """Three panels on a shared grey scale (1st-99th percentile of the three slices)."""
    vol, apix = read_mrc(tomogram, mmap=True)
    slices, (lo, hi) = central_slices(vol)
    nz, ny, nx = vol.shape
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), width_ratios=[nx, nx, ny], layout="constrained")
    for ax, (name, img) in zip(axes, slices.items()):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        ax.set_title(f"{name} (central)")
        ax.set_xlabel({"XY": "x", "XZ": "x", "YZ": "y"}[name] + " (px)")
        ax.set_ylabel({"XY": "y", "XZ": "z", "YZ": "z"}[name] + " (px)")
    fig.suptitle(f"{title}: {nx}×{ny}×{nz} at {apix:.3g} Å/px")
    with atomic_write(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    log.info("wrote %s", out_png)


main(snakemake.input.tomogram, snakemake.output.png,  # noqa: F821
     title=f"{snakemake.wildcards.tomo} bin {snakemake.wildcards.bin}")  # noqa: F821
