# emflow: EMAN2-style subtomogram averaging (workflow A) and e2refine single-particle
# refinement (workflow B) as one Snakemake workflow. This file is a table of contents.
#
# results/
#   demo/        simulated tilt series, particles and ground truth (input.source = demo)
#   import/      .tlt / info json made from user inputs (input.source = table | eman2_project)
#   tomograms/   binned tomograms  {tomo}__bin{bin}.mrc
#   tempmatch/   score / orientation maps and picks per tomogram
#   picks/       filtered picks, review pictures
#   spa/<path>/  e2refine iterations: projections_XX, simmx_XX, classify_XX, classes_XX, threed_XX
#   logs/, benchmarks/   one log and one benchmark table per job

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/stage_inputs.smk"
include: "rules/import.smk"
include: "rules/simulate.smk"
include: "rules/tomogram.smk"
include: "rules/tempmatch.smk"
include: "rules/extract.smk"
include: "rules/spa_initial_model.smk"
include: "rules/spa.smk"
include: "rules/initial_model.smk"
include: "rules/spt_refine.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        FINAL_TARGETS,
