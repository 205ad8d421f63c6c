"""spa_prepare: read the particle stack (+ STAR CTFs), convert to protein white (declared contrast),
phase-flip, check the contrast against the data, normalise, write particles.hdf."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.io import read_hdf_stack, read_mrc, read_star, write_hdf_stack  # noqa: E402
from emflow.spa.classaverage import normalize_stack  # noqa: E402
from emflow.spa.files import (check_contrast, ctf_header, ctfs_from_star, resolve_apix,  # noqa: E402
                              star_optics_values, to_protein_white)
from emflow.spa.refine_loop import phase_flip_particles  # noqa: E402

smk = snakemake  # noqa: F821
path = str(smk.input.particles)
if path.endswith(".hdf"):
    stack, headers = read_hdf_stack(path)
    header_apix = float(headers[0].get("apix_x", 0) or 0) if headers else 0.0
else:
    stack, header_apix = read_mrc(path)
stack = np.asarray(stack, np.float32)
if stack.ndim != 3 or stack.shape[1] != stack.shape[2] or stack.shape[1] % 2:
    raise InputError(f"particles must be a stack of square, even boxes, got {stack.shape}", source=path)
star = str(smk.input.star) if smk.input.get("star") else None
table = read_star(star) if star else None
star_apix = star_optics_values(table, "rlnImagePixelSize", star, required=False) if table else None
apix = resolve_apix(header_apix, star_apix, smk.params.apix_expected, path, star)
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
