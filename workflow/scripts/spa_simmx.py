"""spa_simmx: similarity matrix rows of one particle chunk × all projections (refine_loop.stage_simmx)."""
from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.io import atomic_write, hdf_count, read_hdf_stack  # noqa: E402
from emflow.spa.files import read_particles, read_projections  # noqa: E402
from emflow.spa.refine_loop import RefineOptions, stage_simmx  # noqa: E402


def main(particles_path: str, projections_path: str, usefilt: list, out: str, spa: dict, chunk: int) -> None:
    # only this chunk's images and headers: reading all 4,000 cost each job ~1 s
    rows = np.arange(chunk * spa["chunk_size"], min(hdf_count(particles_path), (chunk + 1) * spa["chunk_size"]))
    particles, ctfs, apix = read_particles(particles_path, rows)
    align_set = np.asarray(read_hdf_stack(usefilt[0], indices=rows)[0] if usefilt else particles, np.float32)
    proj, _, R = read_projections(projections_path)
    mx, pairs = stage_simmx(align_set, proj, RefineOptions.from_config(spa, apix=apix),
                            ctfs=ctfs,
                            progress=progress_logger(log, f"simmx chunk {chunk}", 1.0), rotations=R)
    if pairs is not None:
        log.info("two-stage: %.1f%% of entries computed", 100 * pairs.mean())
    with atomic_write(out, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, simmx=mx, rows=rows)
    log.info("chunk %d: particles %d..%d × %d projections", chunk, rows[0], rows[-1], len(proj))


smk = snakemake  # noqa: F821
main(smk.input.particles, smk.input.projections, list(smk.input.usefilt), smk.output.chunk, smk.params.spa,
     int(smk.wildcards.chunk))
