# Subtilt extraction and particle sets (issue #3 items 1-3, 7; spec §3.2-3.3, e2spt_extract and
# e2spt_buildsets). One job per tomogram × label extracts every pick of that label from the tilt
# series (not the tomogram): 2D subtilts with xform.projection + CTF, and one 3D particle each.
#
# results/extract/particles/{tomo}__{label}.hdf     subtilts (EMAN2 HDF)
# results/extract/particles3d/{tomo}__{label}.hdf   3D particles
# results/extract/summary/{tomo}__{label}.json      counts, excluded picks, particle coordinates
# results/sets/{label}.lst                          all tomograms' particles, even/odd "class"
#
# Labels: extract.label (manual picks in the tomogram's info json; the demo's "initribo") and
# picks.label (template-matching picks accepted by picks_filter, extracted at bin 1 from
# results/picks/info/{tomo}_info.json). The number of picks is data-dependent but each job
# handles all picks of its tomogram, so no checkpoint is needed.

EXTRACT = config["extract"]
TM_LABEL = config["picks"]["label"]


rule extract_particles:
    input:
        tilt_series=tilt_series,
        info=info_json,
        picks=extract_picks_file,
    output:
        particles3d="results/extract/particles3d/{tomo}__{label}.hdf",
        particles="results/extract/particles/{tomo}__{label}.hdf",
        summary="results/extract/summary/{tomo}__{label}.json",
    wildcard_constraints:
        label="[A-Za-z0-9_-]+",
    params:
        extract=EXTRACT,
        microscope=config["microscope"],
        thickness_unbin_px=config["tomogram"]["thickness_px"] * config["tomogram"]["bin"],
    log:
        "results/logs/extract/extract_particles/{tomo}__{label}.log",
    benchmark:
        "results/benchmarks/extract/extract_particles/{tomo}__{label}.tsv"
    threads: EXTRACT["threads"]
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/emflow.yaml"
    script:
        "../workflow/scripts/extract_particles.py"


rule extract_buildset:
    input:
        unpack(set_particle_files),
    output:
        lst="results/sets/{label}.lst",
    wildcard_constraints:
        label="[A-Za-z0-9_-]+",
    params:
        spliteo=EXTRACT["spliteo"],
    log:
        "results/logs/extract/extract_buildset/{label}.log",
    benchmark:
        "results/benchmarks/extract/extract_buildset/{label}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/emflow.yaml"
    script:
        "../workflow/scripts/extract_buildset.py"


if config["workflows"]["subtomogram"]:
    FINAL_TARGETS.append(f"results/sets/{EXTRACT['label']}.lst")
    # the template-matching set needs rule picks_filter (rules/tempmatch.smk, included before this file)
    if any(r.name == "picks_filter" for r in workflow.rules) and TM_LABEL != EXTRACT["label"]:
        FINAL_TARGETS.append(f"results/sets/{TM_LABEL}.lst")
