"""spa_classaverage: class averages (classes_XX.hdf, with class_ssnr) and cls_result_XX.hdf
(refine_loop.stage_classaverage), reading the particles a block at a time: the block follows the job's
mem_mb (resources.spa_classaverage_block), so the job's memory does not grow with the stack."""
from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.io import read_hdf_stack  # noqa: E402
from emflow.pipeline.resources import spa_classaverage_block, spa_stack  # noqa: E402
from emflow.spa.files import read_particles, read_projections, write_classes  # noqa: E402
from emflow.spa.refine_loop import RefineOptions, stage_classaverage  # noqa: E402


def main(particles_path: str, classify_path: str, projections_path: str, usefilt: list, out: str, result: str,
         spa: dict, mem_mb: float) -> None:
    n, box = spa_stack(particles_path)
    apix = read_particles(particles_path, [0])[2]

    def read(rows):
        stack, ctfs, _ = read_particles(particles_path, rows)
        uf = np.asarray(read_hdf_stack(usefilt[0], indices=rows)[0], np.float32) if usefilt else None
        return stack, ctfs, uf

    classmx = np.asarray(read_hdf_stack(classify_path)[0], np.float32)
    proj, _, R = read_projections(projections_path)
    block = spa_classaverage_block(mem_mb, box, len(proj))
    log.info("%d particles, box %d, %d classes; blocks of %d particles (%d MB job)", n, box, len(proj),
             min(block, n), mem_mb)
    avgs, info = stage_classaverage((n, read), classmx, proj, RefineOptions.from_config(spa, apix=apix), block=block,
                                    progress=progress_logger(log, "classaverage", 1.0))
    write_classes(out, result, avgs, info, R, projections_path, particles_path, apix)
    log.info("%d classes, %d non-empty, %d particles used", len(avgs), (info["ptcl_repr"] > 0).sum(),
             info["ptcl_repr"].sum())


smk = snakemake  # noqa: F821
main(smk.input.particles, smk.input.classify, smk.input.projections, list(smk.input.usefilt), smk.output.classes,
     smk.output.result, smk.params.spa, float(smk.resources.mem_mb))
