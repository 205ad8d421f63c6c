"""Snakemake adapter: bundled structures → the demo's true maps at the simulation pixel sizes."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.demo.simulate import resample_map  # noqa: E402
from emflow.io import read_mrc, write_mrc  # noqa: E402


def main(tomo_map: str, spa_map: str, out_tomo: str, out_spa: str, apix_tomo: float, apix_spa: float,
         box_spa: int) -> None:
    """Resample the tomography structure to ``apix_tomo`` and the SPA one to ``apix_spa``/``box_spa``."""
    ref, apix = read_mrc(tomo_map)
    vol = resample_map(ref, apix, apix_tomo)
    write_mrc(out_tomo, vol, apix_tomo)
    log.info("%s: %s at %.4g Å → box %d at %.4g Å", tomo_map, ref.shape, apix, vol.shape[0], apix_tomo)
    ref, apix = read_mrc(spa_map)
    vol = resample_map(ref, apix, apix_spa, box=box_spa)
    write_mrc(out_spa, vol, apix_spa)
    log.info("%s: %s at %.4g Å → box %d at %.4g Å", spa_map, ref.shape, apix, vol.shape[0], apix_spa)


main(snakemake.input.tomo_map, snakemake.input.spa_map, snakemake.output.tomo, snakemake.output.spa,  # noqa: F821
     snakemake.params.apix_tomo, snakemake.params.apix_spa, snakemake.params.box_spa)  # noqa: F821
