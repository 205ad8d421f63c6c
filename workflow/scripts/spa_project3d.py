"""spa_project3d: reference projections of the previous model (e2project3d + normalize.circlemean)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.geometry import eman_to_matrix  # noqa: E402
from emflow.io import read_mrc, transform_to_dict, write_hdf_stack  # noqa: E402
from emflow.spa.refine_loop import RefineOptions, project3d, projection_orientations  # noqa: E402

smk = snakemake  # noqa: F821
model, apix = read_mrc(smk.input.model)
opts = RefineOptions.from_config(smk.params.spa, apix=apix)
eulers = projection_orientations(opts)
proj = project3d(model, eulers, opts.projector)
R = eman_to_matrix(eulers[:, 0], eulers[:, 1], eulers[:, 2])
headers = [{"xform.projection": transform_to_dict(r), "ptcl_repr": 0, "model_id": 0} for r in R]
write_hdf_stack(smk.output.projections, proj, headers, apix=apix)
log.info("%d projections (%s, sym %s, projector %s)", len(proj), opts.orientgen, opts.sym, opts.projector)
