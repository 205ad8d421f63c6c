"""spa_prepare: read the particle stack (+ STAR CTFs) a block at a time, convert to protein white (declared
contrast), phase-flip, normalise, write particles.hdf, and check the contrast against the data before the file
is committed (emflow.spa.files.prepare_particles)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.spa.files import prepare_particles  # noqa: E402


def main(path: str, star: str | None, out: str, contrast: str, apix_expected, apix_key: str, apix_override) -> None:
    n, box, apix, z, flipped = prepare_particles(path, star, contrast, apix_expected, apix_key, apix_override, out)
    log.info("contrast declared %s → protein white; centre-minus-edge of the %s mean particle: z = %.1f%s", contrast,
             "phase-flipped" if flipped else "raw", z,
             "" if z > 3 else " (inconclusive: the data neither confirm nor contradict the declaration)")
    log.info("wrote %s: %d particles, box %d, %.3f Å/px", out, n, box, apix)


smk = snakemake  # noqa: F821
main(str(smk.input.particles), str(smk.input.star) if smk.input.get("star") else None, smk.output.particles,
     smk.params.contrast, smk.params.apix_expected, smk.params.apix_key, smk.params.apix_override)
