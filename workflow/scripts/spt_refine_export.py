"""Snakemake adapter: final alignments -> particles_final.star (RELION 3.1+, optics + particles, 3D coordinates)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import os  # noqa: E402

import numpy as np  # noqa: E402

from emflow.geometry import matrix_to_relion  # noqa: E402
from emflow.io import write_star  # noqa: E402
from emflow.sta.spt_files import read_map, read_state, read_tables  # noqa: E402

smk = snakemake  # noqa: F821
inp, out, mic = smk.input, smk.output, smk.params.microscope
table = read_tables(inp.info3d, inp.info2d)
state = read_state(table, inp.ali3d, inp.ali2d)
vol, apix = read_map(inp.threed)
# RELION's angles rotate the reference into the particle (same sense as R); the refined centre is coord + t
eul = matrix_to_relion(state.rot)
xyz = (table.coord + state.shift) * smk.params.shrink  # unbinned px from the tomogram centre
tomo = [os.path.basename(p).split("__")[0] for p in table.path3d]
optics = {"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnVoltage": [float(mic["voltage_kv"])],
          "rlnSphericalAberration": [float(mic["cs_mm"])], "rlnAmplitudeContrast": [float(mic["ampcont"])],
          "rlnImagePixelSize": [float(apix)], "rlnImageSize": [int(vol.shape[0])], "rlnImageDimensionality": [3]}
particles = {"rlnTomoName": tomo, "rlnImageName": [f"{i + 1}@{p}" for i, p in zip(table.idx3d, table.path3d)],
             "rlnCenteredCoordinateXAngst": xyz[:, 0] * mic["apix"], "rlnCenteredCoordinateYAngst": xyz[:, 1] * mic["apix"],
             "rlnCenteredCoordinateZAngst": xyz[:, 2] * mic["apix"],
             "rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1], "rlnAnglePsi": eul[:, 2],
             "rlnRandomSubset": table.cls + 1, "rlnLogLikeliContribution": -state.score3d,
             "rlnOpticsGroup": np.ones(table.n3d, dtype=np.int64)}
write_star(out.star, {"optics": optics, "particles": particles})
log.info("%d particles written", table.n3d)
