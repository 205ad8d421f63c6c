# Workflow B, the e2refine single-particle loop (issue #5): per iteration XX
#   project3d → simmx (scattered over particle chunks, gathered) → classify → classaverage → make3d
# with EMAN2's file names under results/spa/<spa.path>/:
#   particles.hdf (phase-flipped input with CTF headers), threed_00.mrc (starting model),
#   projections_XX.hdf, simmx_XX.hdf, classify_XX.hdf, classes_XX.hdf, cls_result_XX.hdf,
#   threed_XX.hdf/.mrc, threed_filt_XX.mrc (mass/automask; the next iteration's model),
#   fsc_XX.txt (vs the previous model), fsc_truth_XX.txt + truth_eval_XX.json (demo: resolution,
#   hand and symmetry against the truth), convergence.png,
#   classes_XX.png, summary.json.
# spa.goldstandard: one job (spa_gold) refines the even/odd halves instead, writing gold/: the half maps,
#   fsc_gold_XX.txt (masked, phase-randomisation corrected: the reported curve), fsc_unmasked_XX.txt,
#   threed_gold.mrc (FSC-weighted), gold.json (0.143 resolutions; demo: vs the truth), gold_fsc.png.
# Every script calls the stage functions of emflow.spa.refine_loop that run_iteration chains.

# Each rule gets as params only the `spa:` keys its stage reads (STAGE_KEYS), so a changed
# class-averaging key reruns class averaging onwards, not the projections or the simmx.

import math

from emflow.spa.gold import local_names
from emflow.spa.refine_loop import STAGE_KEYS, check_options

SPA = config["spa"]
SPA_ON = config["workflows"]["single_particle"]
SPA_DIR = f"results/spa/{SPA['path']}"
SPA_ITERS = [f"{i:02d}" for i in range(max(1, SPA["startiter"]), SPA["iter"] + 1)]
# spa_gold: the e2refine iterations, then the local likelihood iterations (L1, L2, …; spa.local)
SPA_GOLD_ITERS = SPA_ITERS + local_names(SPA["local"]["iterations"])
if SPA_ON:
    spa_check_inputs()  # particles given, contrast declared: before the stack's header is read
    spa_check_startiter()  # a resumed loop starts from an existing model
# the particle count comes from the stack's header: read only when the SPA workflow runs
SPA_CHUNKS = [f"{c:03d}" for c in range(math.ceil(spa_n_particles() / SPA["chunk_size"]))] if SPA_ON else []


if SPA_ON:
    SPA_PROJECTIONS = check_options(SPA, SPA["iter"])  # every e2refine option parses, before any job runs
    if SPA["check"]:  # EMAN --check: options validated above, inputs by spa_prepare, the starting model's box
        # and pixel size by spa_startmodel; nothing else runs
        import sys

        from emflow.spa.refine_loop import calibrate_cost, estimate_iteration_seconds

        from emflow.spa.files import particles_box_apix

        if spa_demo_data():
            SPA_BOX_APIX = config["demo"]["spa"]["box"], config["demo"]["spa"]["apix"]
        else:
            SPA_BOX_APIX = particles_box_apix(
                str(spa_particles()), spa_particles_star() or None, spa_apix_expected(), spa_apix_override()
            )
        SPA_COST = calibrate_cost(SPA, *SPA_BOX_APIX, ctf=spa_demo_data() or bool(spa_particles_star()))
        print(
            f"spa check: {spa_n_particles()} particles; reference projections per iteration "
            f"{SPA_PROJECTIONS}; simmx pairs (particles × projections) per iteration "
            f"{[spa_n_particles() * n for n in SPA_PROJECTIONS]}; estimated seconds per iteration (one "
            f"process on this machine, from a calibration run: simmx {SPA_COST['simmx_pair'] * 1e3:.2f} ms/pair, "
            f"class averaging {SPA_COST['classaverage_ptcl'] * 1e3:.1f} ms/particle) "
            f"{[round(estimate_iteration_seconds(SPA_COST, spa_n_particles(), n)) for n in SPA_PROJECTIONS]}",
            file=sys.stderr,
        )
        if SPA["goldstandard"] and SPA["local"]["iterations"]:
            print(
                f"spa check: then {SPA['local']['iterations']} local likelihood iterations, about "
                f"{RSC.SPA_LOCAL_S_PER_MPIX * spa_n_particles() * SPA_BOX_APIX[0] ** 2 / 1e6:.0f} s each (the "
                "coefficient measured on the 80S benchmark, emflow/pipeline/resources.py; the first two, with a "
                "global search, up to 3x that)",
                file=sys.stderr,
            )
        FINAL_TARGETS.extend([f"{SPA_DIR}/particles.hdf", f"{SPA_DIR}/threed_00.mrc"])
    elif SPA["goldstandard"]:  # e2refine_easy scheme: independent even/odd halves (rule spa_gold)
        FINAL_TARGETS.append(f"{SPA_DIR}/gold/gold.json")
    else:
        FINAL_TARGETS.extend([f"{SPA_DIR}/convergence.png", f"{SPA_DIR}/summary.json"])


rule spa_prepare:
    input:
        particles=spa_particles(),
        star=spa_particles_star() or [],
    output:
        particles=f"{SPA_DIR}/particles.hdf",
    log:
        f"results/logs/spa/spa_prepare/{SPA['path']}.log",
    benchmark:
        f"results/benchmarks/spa/spa_prepare/{SPA['path']}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_prepare_mem_mb(input.size_mb, attempt),
        runtime=lambda wildcards, input, attempt: RSC.spa_prepare_runtime(input.size_mb, attempt),
    params:
        spa=spa_params("prepare"),
        microscope=config["microscope"],
        contrast=spa_contrast(),
        apix_expected=spa_apix_expected(),
        apix_key="demo.spa.apix" if spa_demo_data() else "spa.apix",
        apix_override=spa_apix_override(),
    script:
        "../workflow/scripts/spa_prepare.py"


rule spa_startmodel:
    input:
        particles=f"{SPA_DIR}/particles.hdf",
        source=spa_start_source,  # rules/spa_initial_model.smk: the SGD map when startingmodel is from_data
    output:
        model=f"{SPA_DIR}/threed_00.mrc",
    log:
        f"results/logs/spa/spa_startmodel/{SPA['path']}.log",
    benchmark:
        f"results/benchmarks/spa/spa_startmodel/{SPA['path']}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_volume_mem_mb(RSC.spa_stack(input.particles)[1], attempt),
        runtime=lambda wildcards, input, attempt: RSC.spa_volume_runtime(RSC.spa_stack(input.particles)[1], 0, attempt),
    params:
        spa=spa_startmodel_params(),
    script:
        "../workflow/scripts/spa_startmodel.py"


rule spa_project3d:
    input:
        model=spa_previous_model,
    output:
        projections=f"{SPA_DIR}/projections_{{it}}.hdf",
    log:
        f"results/logs/spa/spa_project3d/{SPA['path']}_{{it}}.log",
    benchmark:
        f"results/benchmarks/spa/spa_project3d/{SPA['path']}_{{it}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_volume_mem_mb(RSC.spa_stack(input.model)[1], attempt),
        runtime=lambda wildcards, input, attempt: RSC.spa_volume_runtime(
            RSC.spa_stack(input.model)[1], SPA_PROJECTIONS[int(wildcards.it) - 1], attempt
        ),
    params:
        spa=spa_project3d_params,
    script:
        "../workflow/scripts/spa_project3d.py"


rule spa_simmx:
    input:
        particles=f"{SPA_DIR}/particles.hdf",
        projections=f"{SPA_DIR}/projections_{{it}}.hdf",
        usefilt=spa_usefilt,
    output:
        chunk=f"{SPA_DIR}/simmx_{{it}}/chunk_{{chunk}}.npz",
    log:
        f"results/logs/spa/spa_simmx/{SPA['path']}_{{it}}_{{chunk}}.log",
    benchmark:
        f"results/benchmarks/spa/spa_simmx/{SPA['path']}_{{it}}_{{chunk}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_simmx_mem_mb(
            RSC.file_mb(input.particles), RSC.spa_stack(input.particles)[0], SPA["chunk_size"], attempt
        ),
        runtime=lambda wildcards, input, attempt: RSC.spa_simmx_runtime(
            min(SPA["chunk_size"], RSC.spa_stack(input.particles)[0]), *RSC.spa_stack(input.projections), attempt
        ),
    params:
        spa=spa_params("simmx"),
    script:
        "../workflow/scripts/spa_simmx.py"


rule spa_simmx_gather:
    input:
        chunks=spa_simmx_chunks,
        projections=f"{SPA_DIR}/projections_{{it}}.hdf",
        particles=f"{SPA_DIR}/particles.hdf",
    output:
        simmx=f"{SPA_DIR}/simmx_{{it}}.hdf",
    log:
        f"results/logs/spa/spa_simmx_gather/{SPA['path']}_{{it}}.log",
    benchmark:
        f"results/benchmarks/spa/spa_simmx_gather/{SPA['path']}_{{it}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_stack_mem_mb(sum(map(RSC.file_mb, input.chunks)), attempt),
        runtime=lambda wildcards, attempt: RSC.minutes(0.0, attempt),
    script:
        "../workflow/scripts/spa_simmx_gather.py"


rule spa_classify:
    input:
        simmx=f"{SPA_DIR}/simmx_{{it}}.hdf",
    output:
        classify=f"{SPA_DIR}/classify_{{it}}.hdf",
    log:
        f"results/logs/spa/spa_classify/{SPA['path']}_{{it}}.log",
    benchmark:
        f"results/benchmarks/spa/spa_classify/{SPA['path']}_{{it}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_stack_mem_mb(RSC.file_mb(input.simmx), attempt),
        runtime=lambda wildcards, attempt: RSC.minutes(0.0, attempt),
    params:
        spa=spa_params("classify"),
    script:
        "../workflow/scripts/spa_classify.py"


rule spa_classaverage:
    input:
        particles=f"{SPA_DIR}/particles.hdf",
        classify=f"{SPA_DIR}/classify_{{it}}.hdf",
        projections=f"{SPA_DIR}/projections_{{it}}.hdf",
        usefilt=spa_usefilt,
    output:
        classes=f"{SPA_DIR}/classes_{{it}}.hdf",
        result=f"{SPA_DIR}/cls_result_{{it}}.hdf",
    log:
        f"results/logs/spa/spa_classaverage/{SPA['path']}_{{it}}.log",
    benchmark:
        f"results/benchmarks/spa/spa_classaverage/{SPA['path']}_{{it}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_classaverage_mem_mb(
            RSC.file_mb(input.particles), attempt, *RSC.spa_stack(input.projections)
        ),
        runtime=lambda wildcards, input, attempt: RSC.spa_classaverage_runtime(*RSC.spa_stack(input.particles), attempt),
    params:
        spa=spa_params("classaverage"),
    script:
        "../workflow/scripts/spa_classaverage.py"


rule spa_make3d:
    input:
        classes=f"{SPA_DIR}/classes_{{it}}.hdf",
    output:
        threed=f"{SPA_DIR}/threed_{{it}}.hdf",
        threed_mrc=f"{SPA_DIR}/threed_{{it}}.mrc",
        threed_filt=f"{SPA_DIR}/threed_filt_{{it}}.mrc",
    log:
        f"results/logs/spa/spa_make3d/{SPA['path']}_{{it}}.log",
    benchmark:
        f"results/benchmarks/spa/spa_make3d/{SPA['path']}_{{it}}.tsv"
    wildcard_constraints:
        it="|".join(SPA_ITERS),  # spa.startiter: earlier models are inputs, never remade
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_volume_mem_mb(RSC.spa_stack(input.classes)[1], attempt),
        runtime=lambda wildcards, input, attempt: RSC.spa_volume_runtime(*RSC.spa_stack(input.classes)[::-1], attempt),
    params:
        spa=spa_params("make3d"),
    script:
        "../workflow/scripts/spa_make3d.py"


rule spa_fsc:
    input:
        threed=f"{SPA_DIR}/threed_{{it}}.mrc",
        previous=spa_fsc_previous,
        truth=spa_truth_map(),
    output:
        fsc=f"{SPA_DIR}/fsc_{{it}}.txt",
        fsc_truth=f"{SPA_DIR}/fsc_truth_{{it}}.txt",
        truth_eval=f"{SPA_DIR}/truth_eval_{{it}}.json",
    log:
        f"results/logs/spa/spa_fsc/{SPA['path']}_{{it}}.log",
    benchmark:
        f"results/benchmarks/spa/spa_fsc/{SPA['path']}_{{it}}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_volume_mem_mb(RSC.spa_stack(input.threed)[1], attempt),
        runtime=lambda wildcards, attempt: RSC.minutes(0.0, attempt),
    params:
        truth_sym=spa_truth_symmetry(),
    script:
        "../workflow/scripts/spa_fsc.py"


rule spa_report:
    input:
        fsc=expand(f"{SPA_DIR}/fsc_{{it}}.txt", it=SPA_ITERS),
        fsc_truth=expand(f"{SPA_DIR}/fsc_truth_{{it}}.txt", it=SPA_ITERS),
        truth_eval=expand(f"{SPA_DIR}/truth_eval_{{it}}.json", it=SPA_ITERS),
        classes=f"{SPA_DIR}/classes_{SPA_ITERS[-1]}.hdf",
    output:
        convergence=report(
            f"{SPA_DIR}/convergence.png",
            caption="../report/spa_convergence.rst",
            category="3. Single particle",
            subcategory="refinement",
            labels={"figure": "convergence"},
        ),
        gallery=report(
            f"{SPA_DIR}/classes_{SPA_ITERS[-1]}.png",
            caption="../report/spa_classes.rst",
            category="3. Single particle",
            subcategory="refinement",
            labels={"figure": "class averages"},
        ),
        summary=f"{SPA_DIR}/summary.json",
    log:
        f"results/logs/spa/spa_report/{SPA['path']}.log",
    benchmark:
        f"results/benchmarks/spa/spa_report/{SPA['path']}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_volume_mem_mb(RSC.spa_stack(input.classes)[1], attempt),
        runtime=lambda wildcards, attempt: RSC.minutes(0.0, attempt),
    params:
        iters=SPA_ITERS,
    script:
        "../workflow/scripts/spa_report.py"


rule spa_gold:
    input:
        particles=f"{SPA_DIR}/particles.hdf",
        model=f"{SPA_DIR}/threed_00.mrc",
        truth=spa_truth_map(),
    output:
        even=expand(f"{SPA_DIR}/gold/threed_even_{{it}}.mrc", it=SPA_GOLD_ITERS),
        odd=expand(f"{SPA_DIR}/gold/threed_odd_{{it}}.mrc", it=SPA_GOLD_ITERS),
        fsc=expand(f"{SPA_DIR}/gold/fsc_gold_{{it}}.txt", it=SPA_GOLD_ITERS),
        fsc_unmasked=expand(f"{SPA_DIR}/gold/fsc_unmasked_{{it}}.txt", it=SPA_GOLD_ITERS),
        combined=f"{SPA_DIR}/gold/threed_gold.mrc",
        summary=f"{SPA_DIR}/gold/gold.json",
        plot=f"{SPA_DIR}/gold/gold_fsc.png",
    log:
        f"results/logs/spa/spa_gold/{SPA['path']}.log",
    benchmark:
        f"results/benchmarks/spa/spa_gold/{SPA['path']}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_gold_mem_mb(RSC.file_mb(input.particles), attempt),
        runtime=lambda wildcards, input, attempt: RSC.spa_gold_runtime(
            *RSC.spa_stack(input.particles),
            SPA_PROJECTIONS,
            attempt,
            SPA["local"]["iterations"],
        ),
    params:
        spa={**spa_gold_params(), "gold_speed": SPA["gold_speed"]},
        iters=SPA_ITERS,
        truth_sym=spa_truth_symmetry(),
    script:
        "../workflow/scripts/spa_gold.py"
