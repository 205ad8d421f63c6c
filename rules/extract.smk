# Subtilt extraction and particle sets (issue #3 items 1-3, 7; issue #13 item 1; spec §3.2-3.3,
# e2spt_extract and e2spt_buildsets). Per tomogram × label the picks are extracted from the tilt
# series (not the tomogram): 2D subtilts with xform.projection + CTF, and one 3D particle each.
# Scatter/gather so a cluster can spread one tomogram's particles and no job holds them all:
#
# results/extract/plan/{tomo}__{label}.json         checkpoint: kept picks, boxes, particle chunks
#                                                   (extract.chunk_size particles each)
# results/extract/chunks/{tomo}__{label}/*_{chunk}  one job per chunk (temporary): the tilt series
#                                                   memory-mapped, particles streamed to HDF in blocks
#                                                   sized by the job's resources.mem_mb; deleted by the
#                                                   gather once its outputs are complete (Snakemake keeps
#                                                   temp() files while any checkpoint is pending, i.e.
#                                                   to the end of a full run: emflow.sta.extract_steps)
# results/extract/particles/{tomo}__{label}.hdf     subtilts (EMAN2 HDF)      } gather: chunk files
# results/extract/particles3d/{tomo}__{label}.hdf   3D particles              } joined as stored
# results/extract/summary/{tomo}__{label}.json      counts, excluded picks, particle coordinates
# results/sets/{label}.lst                          all tomograms' particles, even/odd "class"
#
# Labels: extract.label (manual picks in the tomogram's info json; the demo's "initribo") and
# picks.label (template-matching picks accepted by picks_filter, extracted at bin 1 from
# results/picks/info/{tomo}_info.json).

EXTRACT = config["extract"]
TM_LABEL = config["picks"]["label"]
# the extract keys each extraction rule reads
EXTRACT_PLAN_KEYS = ("boxsize_unbin", "shrink", "padtwod", "skip_edge", "chunk_size")
EXTRACT_CHUNK_KEYS = ("shrink", "maxtilt_deg", "phase_flip", "mask_subtilts", "min_tilt_fraction", "compress_bits")


checkpoint extract_plan:
    input:
        tilt_series=tilt_series,
        picks=extract_picks_file,
    output:
        plan="results/extract/plan/{tomo}__{label}.json",
    log:
        "results/logs/extract/extract_plan/{tomo}__{label}.log",
    benchmark:
        "results/benchmarks/extract/extract_plan/{tomo}__{label}.tsv"
    wildcard_constraints:
        label="[A-Za-z0-9_-]+",
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.import_mem_mb(input.size_mb, attempt),
        runtime=RSC.MIN_RUNTIME,
    params:
        extract={k: EXTRACT[k] for k in EXTRACT_PLAN_KEYS},
        thickness_unbin_px=config["tomogram"]["thickness_px"] * config["tomogram"]["bin"],
    script:
        "../workflow/scripts/extract_plan.py"


rule extract_chunk:
    input:
        tilt_series=tilt_series,
        info=info_json,
        plan="results/extract/plan/{tomo}__{label}.json",
    output:
        particles=temp("results/extract/chunks/{tomo}__{label}/particles_{chunk}.hdf"),
        particles3d=temp("results/extract/chunks/{tomo}__{label}/particles3d_{chunk}.hdf"),
        summary=temp("results/extract/chunks/{tomo}__{label}/summary_{chunk}.json"),
    log:
        "results/logs/extract/extract_chunk/{tomo}__{label}_{chunk}.log",
    benchmark:
        "results/benchmarks/extract/extract_chunk/{tomo}__{label}_{chunk}.tsv"
    wildcard_constraints:
        label="[A-Za-z0-9_-]+",
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        # the job sizes its particle blocks to this (emflow.sta.extract.particles_per_block)
        mem_mb=RSC.extract_chunk_mem,
        runtime=RSC.extract_chunk_time,
    params:
        extract={k: EXTRACT[k] for k in EXTRACT_CHUNK_KEYS},
        microscope=config["microscope"],
        final=lambda w: {
            "particles": f"results/extract/particles/{w.tomo}__{w.label}.hdf",
            "particles3d": f"results/extract/particles3d/{w.tomo}__{w.label}.hdf",
        },
    script:
        "../workflow/scripts/extract_chunk.py"


rule extract_particles:
    input:
        unpack(extract_chunk_files),
        plan="results/extract/plan/{tomo}__{label}.json",
    output:
        particles3d="results/extract/particles3d/{tomo}__{label}.hdf",
        particles="results/extract/particles/{tomo}__{label}.hdf",
        summary="results/extract/summary/{tomo}__{label}.json",
    log:
        "results/logs/extract/extract_particles/{tomo}__{label}.log",
    benchmark:
        "results/benchmarks/extract/extract_particles/{tomo}__{label}.tsv"
    wildcard_constraints:
        label="[A-Za-z0-9_-]+",
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.gather_mem_mb(input.size_mb, attempt),
        runtime=lambda wildcards, input, attempt: RSC.gather_runtime(input.size_mb, attempt),
    script:
        "../workflow/scripts/extract_particles.py"


rule extract_buildset:
    input:
        unpack(set_particle_files),
    output:
        lst="results/sets/{label}.lst",
    log:
        "results/logs/extract/extract_buildset/{label}.log",
    benchmark:
        "results/benchmarks/extract/extract_buildset/{label}.tsv"
    wildcard_constraints:
        label="[A-Za-z0-9_-]+",
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.gather_mem_mb(input.size_mb, attempt),
        runtime=RSC.MIN_RUNTIME,
    params:
        spliteo=EXTRACT["spliteo"],
    script:
        "../workflow/scripts/extract_buildset.py"


if config["workflows"]["subtomogram"]:
    FINAL_TARGETS.append(f"results/sets/{EXTRACT['label']}.lst")
    # the template-matching set needs rule picks_filter (rules/tempmatch.smk, included before this file)
    if any(r.name == "picks_filter" for r in workflow.rules) and TM_LABEL != EXTRACT["label"]:
        FINAL_TARGETS.append(f"results/sets/{TM_LABEL}.lst")
