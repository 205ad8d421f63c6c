"""spa_classaverage: class averages (classes_XX.hdf, with class_ssnr) and cls_result_XX.hdf
(refine_loop.stage_classaverage)."""
from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.io import read_hdf_stack  # noqa: E402
from emflow.spa.files import read_particles, read_projections, write_classes  # noqa: E402
from emflow.spa.refine_loop import RefineOptions, stage_classaverage  # noqa: E402


def main(particles_path: str, classify_path: str, projections_path: str, usefilt: list, out: str, result: str,
         spa: dict) -> None:
    particles, ctfs, apix = read_particles(particles_path)
    uf = np.asarray(read_hdf_stack(usefilt[0])[0], np.float32) if usefilt else None
    classmx = np.asarray(read_hdf_stack(classify_path)[0], np.float32)
    proj, _, R = read_projections(projections_path)
    avgs, info = stage_classaverage(particles, classmx, proj, RefineOptions.from_config(spa, apix=apix), ctfs=ctfs,
                                    usefilt=uf, progress=progress_logger(log, "classaverage", 1.0))
    write_classes(out, result, avgs, info, R, projections_path, particles_path, apix)
    log.info("%d classes, %d non-empty, %d particles used", len(avgs), (info["ptcl_repr"] > 0).sum(),
             info["ptcl_repr"].sum())


smk = snakemake  # noqa: F821
main(smk.input.particles, smk.input.classify, smk.input.projections, list(smk.input.usefilt), smk.output.classes,
     smk.output.result, smk.params.spa)
