"""Snakemake adapter: final alignments -> particles_final.star in RELION 5's tomography layout
(``emflow.io.relion_tomo.write_relion5_particles``: optics with rlnTomoTiltSeriesPixelSize, rlnTomoName,
rlnCenteredCoordinateX/Y/ZAngst, rlnAngleRot/Tilt/Psi)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import os  # noqa: E402

import numpy as np  # noqa: E402

from emflow.geometry import matrix_to_eman  # noqa: E402
from emflow.io.relion_tomo import write_relion5_particles  # noqa: E402
from emflow.sta.spt_files import read_state, read_tables  # noqa: E402

smk = snakemake  # noqa: F821
inp, out, mic = smk.input, smk.output, smk.params.microscope
table = read_tables(inp.info3d, inp.info2d)
state = read_state(table, inp.ali3d, inp.ali2d)
# the refined centre is coord + t (px of the extraction shrink) → unbinned px from the tomogram centre
xyz = (table.coord + state.shift) * smk.params.shrink
tomo = np.array([os.path.basename(p).split("__")[0] for p in table.path3d])
particles = {name: (xyz[tomo == name], matrix_to_eman(state.rot[tomo == name])) for name in dict.fromkeys(tomo.tolist())}
order = np.concatenate([np.flatnonzero(tomo == name) for name in particles])
write_relion5_particles(out.star, particles, apix=float(mic["apix"]), voltage_kv=mic["voltage_kv"], cs_mm=mic["cs_mm"],
                        ampcont=mic["ampcont"], extra={"rlnRandomSubset": (table.cls + 1)[order],
                                                       "rlnLogLikeliContribution": -np.asarray(state.score3d)[order]})
log.info("%d particles of %d tomograms written (RELION 5: rlnCenteredCoordinate*Angst, rlnTomoName)", table.n3d,
         len(particles))
