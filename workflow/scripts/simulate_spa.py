"""Snakemake adapter: true map → simulated single-particle stack (.mrcs), RELION STAR and truth STAR."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from emflow.demo.metadata import spa_image_names, spa_particle_columns  # noqa: E402
from emflow.demo.simulate import simulate_spa  # noqa: E402
from emflow.io import read_mrc, write_mrc, write_particles_star  # noqa: E402


def main(reference: str, out_particles: str, out_star: str, out_truth: str, seed: int, spa: dict,
         voltage_kv: float, cs_mm: float, ampcont: float, threads: int) -> None:
    """Simulate ``demo.spa.n_particles`` images; STAR files reference the stack by its file name."""
    ref, ref_apix = read_mrc(reference, expect_apix=spa["apix"])
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    stack, truth = simulate_spa(
        ref, ref_apix, apix=spa["apix"], box=spa["box"], n=spa["n_particles"], rng=rng,
        defocus_range_um=(spa["defocus_min_um"], spa["defocus_max_um"]), snr=spa["snr"],
        max_shift_px=spa["max_shift_px"], voltage_kv=voltage_kv, cs_mm=cs_mm, ampcont=ampcont,
        progress=progress_logger(log, "particles", 1.0), workers=threads,
    )
    log.info("simulated %d particles of %d px in %.1f s; noise sigma %.4g", len(stack), truth.box,
             time.monotonic() - start, truth.noise_sigma)
    write_mrc(out_particles, stack, truth.apix)
    # Image names are relative to the folder of each STAR file ("000001@particles.mrcs" next to
    # the stack; "../spa/particles.mrcs" from truth/), so the folder can be moved as a whole.
    columns = spa_particle_columns(truth)
    for star in (out_star, out_truth):
        rel = os.path.relpath(out_particles, os.path.dirname(star))
        write_particles_star(star, spa_image_names(len(stack), rel), **columns)


main(snakemake.input.reference, snakemake.output.particles, snakemake.output.star,  # noqa: F821
     snakemake.output.truth, threads=snakemake.threads,  # noqa: F821
     **{k: getattr(snakemake.params, k) for k in ("seed", "spa", "voltage_kv", "cs_mm", "ampcont")})  # noqa: F821
