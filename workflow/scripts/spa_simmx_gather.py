"""spa_simmx_gather: stack the chunk rows into simmx_XX.hdf (6 images n_proj × n_ptcl)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.io import hdf_count, write_hdf_stack  # noqa: E402
from emflow.spa.simmx import PLANES  # noqa: E402


def main(chunks: list, projections: str, particles: str, out: str) -> None:
    mx = np.full((6, hdf_count(particles), hdf_count(projections)), np.nan, np.float32)
    for path in chunks:
        with np.load(path) as z:
            mx[:, z["rows"]] = z["simmx"]
    if np.isnan(mx[0]).any():
        raise InputError("simmx chunks do not cover every particle", source=str(chunks[0]),
                         fix="delete the simmx chunk folder and rerun (spa.chunk_size changed?)")
    write_hdf_stack(out, mx, [{"simmx_plane": name, "PROJ_FILE_ATTR": str(projections),
                               "PART_FILE_ATTR": str(particles)} for name in PLANES])
    log.info("simmx %d particles × %d projections; %.1f%% computed", mx.shape[1], mx.shape[2],
             100 * np.isfinite(mx[0]).mean())


smk = snakemake  # noqa: F821
main(list(smk.input.chunks), smk.input.projections, smk.input.particles, smk.output.simmx)
