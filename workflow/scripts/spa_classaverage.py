"""spa_classaverage: iterative class averages (classes_XX.hdf) and cls_result_XX.hdf."""
from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.io import read_hdf_stack, transform_to_dict, write_hdf_stack  # noqa: E402
from emflow.spa.classaverage import class_average  # noqa: E402
from emflow.spa.classify import CLASSMX_PLANES  # noqa: E402
from emflow.spa.files import read_particles, read_projections  # noqa: E402
from emflow.spa.refine_loop import RefineOptions, ctf_arrays  # noqa: E402

smk = snakemake  # noqa: F821
particles, ctfs, apix = read_particles(smk.input.particles)
usefilt = np.asarray(read_hdf_stack(smk.input.usefilt[0])[0], np.float32) if smk.input.usefilt else None
classmx = np.asarray(read_hdf_stack(smk.input.classify)[0], np.float32)
proj, eulers, R = read_projections(smk.input.projections)
opts = RefineOptions.from_config(smk.params.spa, apix=apix)
ctf_abs, snr_full, _ = ctf_arrays(ctfs, particles.shape[-1], apix, signal=proj)
avgs, info = class_average(particles, classmx, proj, opts.classaverage_options(), usefilt=usefilt, ctf_abs=ctf_abs,
                           particle_snr=snr_full, progress=progress_logger(log, "classaverage", 1.0))
headers = []
for c in range(len(avgs)):
    headers.append({"xform.projection": transform_to_dict(R[c]), "projection_image": str(smk.input.projections),
                    "projection_image_idx": c, "ptcl_repr": int(info["ptcl_repr"][c]),
                    "class_ptcl_idxs": [int(i) for i in info["members"][c]],
                    "exc_class_ptcl_idxs": [int(i) for i in info["excluded"][c]],
                    "class_ptcl_src": str(smk.input.particles),
                    "class_qual": float(np.nan_to_num(info["quality"][c], nan=0.0))})
write_hdf_stack(smk.output.classes, avgs, headers, apix=apix)
write_hdf_stack(smk.output.result, info["result"], [{"classmx_plane": p} for p in CLASSMX_PLANES])
log.info("%d classes, %d non-empty, %d particles used", len(avgs), (info["ptcl_repr"] > 0).sum(), info["ptcl_repr"].sum())
