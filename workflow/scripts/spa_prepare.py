"""spa_prepare: read the particle stack (+ STAR CTFs), convert to protein white (declared contrast),
phase-flip, check the contrast against the data, normalise, write particles.hdf."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np

from emflow.errors import InputError
from emflow.io import read_hdf_stack, read_mrc, read_star, write_hdf_stack
from emflow.pixel_size import particles_pixel_size
from emflow.spa.classaverage import normalize_stack
from emflow.spa.files import (
    check_contrast,
    ctf_header,
    ctfs_from_star,
    to_protein_white,
)
from emflow.spa.refine_loop import phase_flip_particles

smk = snakemake  # noqa: F821
path = str(smk.input.particles)
star = str(smk.input.star) if smk.input.get("star") else None
# the pixel size from the files' own metadata (STAR optics rlnImagePixelSize, else the stack header);
# spa.apix (demo: demo.spa.apix) is a check, input.apix_override the explicit fix for an unset header
apix = particles_pixel_size(path, star, expected=smk.params.apix_expected, key=smk.params.apix_key,
                            override=smk.params.apix_override)
if path.endswith(".hdf"):
    stack, _ = read_hdf_stack(path)
else:
    stack, _ = read_mrc(path, check_apix=False)
stack = np.asarray(stack, np.float32)
if stack.ndim != 3 or stack.shape[1] != stack.shape[2] or stack.shape[1] % 2:
    raise InputError(f"particles must be a stack of square, even boxes, got {stack.shape}", source=path)
table = read_star(star) if star else None
stack = to_protein_white(stack, smk.params.contrast)
ctfs = None
if table:
    ctfs = ctfs_from_star(table, len(stack), star, stack_path=path)
    stack = phase_flip_particles(stack, ctfs, apix)
    log.info("phase-flipped %d particles", len(stack))
z = check_contrast(stack, smk.params.contrast, source="config key 'input.spa_contrast'")
log.info("contrast declared %s → protein white; centre-minus-edge of the %s mean particle: z = %.1f%s",
         smk.params.contrast, "phase-flipped" if ctfs else "raw", z,
         "" if z > 3 else " (inconclusive: the data neither confirm nor contradict the declaration)")
stack = normalize_stack(stack, "normalize.edgemean")
headers = [{"ctf": ctf_header(c, apix)} if ctfs else {} for c in (ctfs or [None] * len(stack))]
write_hdf_stack(smk.output.particles, stack, headers, apix=apix)
log.info("wrote %s: %d particles, box %d, %.3f Å/px", smk.output.particles, len(stack), stack.shape[-1], apix)
