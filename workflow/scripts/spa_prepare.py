"""spa_prepare: read the particle stack (+ STAR CTFs), phase-flip, normalise, write particles.hdf."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.io import read_hdf_stack, read_mrc, read_star, write_hdf_stack  # noqa: E402
from emflow.spa.classaverage import normalize_stack  # noqa: E402
from emflow.spa.files import ctf_header, ctfs_from_star  # noqa: E402
from emflow.spa.refine_loop import phase_flip_particles  # noqa: E402

smk = snakemake  # noqa: F821
spa = smk.params.spa
path = str(smk.input.particles)
if path.endswith(".hdf"):
    stack, headers = read_hdf_stack(path)
    apix = float(headers[0].get("apix_x", 0)) or None
else:
    stack, apix = read_mrc(path)
apix = float(spa["apix"] or apix or smk.params.demo_apix)
stack = np.asarray(stack, np.float32)
if stack.ndim != 3 or stack.shape[1] != stack.shape[2] or stack.shape[1] % 2:
    raise InputError(f"particles must be a stack of square, even boxes, got {stack.shape}", source=path)
ctfs = None
star = smk.input.get("star") if hasattr(smk.input, "get") else None
if star:
    ctfs = ctfs_from_star(read_star(str(star)), len(stack), smk.params.microscope, str(star))
    stack = phase_flip_particles(stack, ctfs, apix)
    log.info("phase-flipped %d particles (protein-white convention)", len(stack))
stack = normalize_stack(stack, "normalize.edgemean")
headers = [{"ctf": ctf_header(c, apix)} if ctfs else {} for c in (ctfs or [None] * len(stack))]
write_hdf_stack(smk.output.particles, stack, headers, apix=apix)
log.info("wrote %s: %d particles, box %d, %.3f Å/px", smk.output.particles, len(stack), stack.shape[-1], apix)
