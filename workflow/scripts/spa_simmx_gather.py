"""spa_simmx_gather: stack the chunk rows into simmx_XX.hdf (6 images n_proj × n_ptcl)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.io import hdf_count, write_hdf_stack  # noqa: E402
from emflow.spa.simmx import PLANES  # noqa: E402

smk = snakemake  # noqa: F821
n_ptcl, n_proj = hdf_count(smk.input.particles), hdf_count(smk.input.projections)
mx = np.full((6, n_ptcl, n_proj), np.nan, np.float32)
for path in smk.input.chunks:
    with np.load(path) as z:
        mx[:, z["rows"]] = z["simmx"]
if np.isnan(mx[0]).any():
    raise InputError("simmx chunks do not cover every particle", source=str(smk.input.chunks[0]),
                     fix="delete the simmx chunk folder and rerun (spa.chunk_size changed?)")
headers = [{"simmx_plane": name, "PROJ_FILE_ATTR": str(smk.input.projections), "PART_FILE_ATTR": str(smk.input.particles)}
           for name in PLANES]
write_hdf_stack(smk.output.simmx, mx, headers)
log.info("simmx %d particles × %d projections; %.1f%% computed", n_ptcl, n_proj, 100 * np.isfinite(mx[0]).mean())
