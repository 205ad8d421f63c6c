"""spa_simmx: similarity matrix rows of one particle chunk × all projections (two-stage optional)."""
from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.io import atomic_write, read_hdf_stack  # noqa: E402
from emflow.masks import soft_circle  # noqa: E402
from emflow.spa.files import read_particles, read_projections  # noqa: E402
from emflow.spa.refine_loop import RefineOptions, ctf_arrays  # noqa: E402
from emflow.spa.simmx import simmx, twostage_pairs  # noqa: E402

smk = snakemake  # noqa: F821
spa = smk.params.spa
chunk = int(smk.wildcards.chunk)
particles, ctfs, apix = read_particles(smk.input.particles)
lo, hi = chunk * spa["chunk_size"], min(len(particles), (chunk + 1) * spa["chunk_size"])
rows = np.arange(lo, hi)
align_set = particles if not smk.input.usefilt else read_hdf_stack(smk.input.usefilt[0])[0]
align_set = np.asarray(align_set, np.float32)[rows]
ctfs = None if ctfs is None else [ctfs[i] for i in rows]
proj, _, _ = read_projections(smk.input.projections)
opts = RefineOptions.from_config(spa, apix=apix)
so = opts.simmx_options()
_, snr_full, snr_shrunk = ctf_arrays(ctfs, particles.shape[-1], apix, max(1, opts.shrink), signal=proj)
mask = None
if opts.simmask > 0:
    mask = (soft_circle(particles.shape[-1], opts.simmask, 0.0) > 0.5).astype(np.float32)
pairs = None
if opts.twostage > 0:
    pairs = twostage_pairs(align_set, proj, so, opts.twostage, particle_snr=snr_full)
    log.info("two-stage: %.1f%% of entries computed", 100 * pairs.mean())
mx = simmx(align_set, proj, so, mask=mask, particle_snr=snr_shrunk, pairs=pairs,
           progress=progress_logger(log, f"simmx chunk {chunk}", 1.0))
with atomic_write(smk.output.chunk, suffix=".npz") as tmp:
    with open(tmp, "wb") as fh:
        np.savez(fh, simmx=mx, rows=rows)
log.info("chunk %d: particles %d..%d × %d projections", chunk, lo, hi - 1, len(proj))
