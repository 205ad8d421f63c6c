# Report (issues #7, #14): `snakemake --report results/report.html` collects every output marked
# report(...) by a job of the run. A figure is marked where it is drawn, with its caption in
# report/<figure>.rst (Jinja: snakemake.wildcards/params/config), a category per stage and labels:
#   stage PNGs:  tomogram_slices, picks_filter, spa_report, initial_model_sgd, spt_refine_postprocess
#   here:        maps (central sections) and FSC plots of each stage's results, demo scores, run times
# Adding a figure is one rule whose output is report(...), plus its file in FINAL_TARGETS when its
# stage runs (next to the rule). This file reads the stage globals (SPA_DIR, SPT_PATH, ...), so it is
# included after the stages.
# Outputs: results/report/{maps,fsc}/<name>.png, results/report/runtimes.png/.tsv,
#          results/demo_scores.json + results/report/demo_scores.png (demo only).


report: "../report/workflow.rst"


SPT_ON = config["workflows"]["subtomogram"]
SPA_MAPS = SPA_ON and not SPA["check"]  # the single-particle loop runs (not only its input checks)
# demo-only figures exist only for the workflows that run on demo data: a user's SPA run (even
# with input.source demo for the tomograms) gets no demo map and no demo scores
REPORT_DEMO_SPT = DEMO and SPT_ON
REPORT_DEMO_SPA = SPA_MAPS and spa_demo_data() and not SPA["goldstandard"]


# ------------------------------------------------------------------ 3. single particle
rule report_map_spa_final:
    input:
        map=f"{SPA_DIR}/threed_filt_{SPA_ITERS[-1]}.mrc",
    output:
        png=report(
            "results/report/maps/spa_final.png",
            caption="../report/map_spa_final.rst",
            category="3. Single particle",
            subcategory="maps",
            labels={"figure": "final map"},
        ),
    log:
        "results/logs/report/report_map_spa_final/spa_final.log",
    benchmark:
        "results/benchmarks/report/report_map_spa_final/spa_final.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        title=f"SPA map, iteration {SPA_ITERS[-1]}",
    script:
        "../workflow/scripts/report_map.py"


if SPA_MAPS and not SPA["goldstandard"]:
    FINAL_TARGETS.append(str(rules.report_map_spa_final.output.png))


rule report_fsc_spa_truth:
    input:
        fsc=expand(f"{SPA_DIR}/fsc_truth_{{it}}.txt", it=SPA_ITERS),
    output:
        png=report(
            "results/report/fsc/spa_fsc_truth.png",
            caption="../report/fsc_spa_truth.rst",
            category="3. Single particle",
            subcategory="FSC",
            labels={"figure": "FSC vs truth"},
        ),
    log:
        "results/logs/report/report_fsc_spa_truth/spa_fsc_truth.log",
    benchmark:
        "results/benchmarks/report/report_fsc_spa_truth/spa_fsc_truth.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        labels=[f"iteration {it}" for it in SPA_ITERS],
        title="SPA map vs truth, per iteration",
    script:
        "../workflow/scripts/report_fsc.py"


if REPORT_DEMO_SPA:
    FINAL_TARGETS.append(str(rules.report_fsc_spa_truth.output.png))


rule report_map_spa_gold:
    input:
        map=f"{SPA_DIR}/gold/threed_gold.mrc",
    output:
        png=report(
            "results/report/maps/spa_gold.png",
            caption="../report/map_spa_gold.rst",
            category="3. Single particle",
            subcategory="maps",
            labels={"figure": "gold-standard map"},
        ),
    log:
        "results/logs/report/report_map_spa_gold/spa_gold.log",
    benchmark:
        "results/benchmarks/report/report_map_spa_gold/spa_gold.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        title="SPA gold-standard map",
    script:
        "../workflow/scripts/report_map.py"


rule report_fsc_spa_gold:
    input:
        fsc=expand(f"{SPA_DIR}/gold/fsc_gold_{{it}}.txt", it=SPA_GOLD_ITERS),
    output:
        png=report(
            "results/report/fsc/spa_fsc_gold.png",
            caption="../report/fsc_spa_gold.rst",
            category="3. Single particle",
            subcategory="FSC",
            labels={"figure": "gold-standard FSC"},
        ),
    log:
        "results/logs/report/report_fsc_spa_gold/spa_fsc_gold.log",
    benchmark:
        "results/benchmarks/report/report_fsc_spa_gold/spa_fsc_gold.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        labels=[f"iteration {it}" for it in SPA_GOLD_ITERS],
        title="SPA gold-standard FSC (even vs odd half maps)",
    script:
        "../workflow/scripts/report_fsc.py"


if SPA_MAPS and SPA["goldstandard"]:
    FINAL_TARGETS.extend(str(f) for f in (rules.report_map_spa_gold.output.png, rules.report_fsc_spa_gold.output.png))


# ------------------------------------------------------------------ 4. subtomogram averaging
rule report_map_spt_final:
    input:
        map=f"{SPT_PATH}/threed_{SPT_LAST}.mrc",
    output:
        png=report(
            "results/report/maps/spt_final.png",
            caption="../report/map_spt_final.rst",
            category="4. Subtomogram averaging",
            subcategory="maps",
            labels={"figure": "final map"},
        ),
    log:
        "results/logs/report/report_map_spt_final/spt_final.log",
    benchmark:
        "results/benchmarks/report/report_map_spt_final/spt_final.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        title=f"Subtomogram average, iteration {SPT_LAST}",
    script:
        "../workflow/scripts/report_map.py"


rule report_fsc_spt:
    input:
        fsc=expand(f"{SPT_PATH}/fsc_masked_{{k}}.txt", k=[f"{k:02d}" for k in range(1, len(SPT_ITERS) + 1)]),
    output:
        png=report(
            "results/report/fsc/spt_fsc_masked.png",
            caption="../report/fsc_spt_masked.rst",
            category="4. Subtomogram averaging",
            subcategory="FSC, all iterations",
            labels={"figure": "masked gold-standard FSC"},
        ),
    log:
        "results/logs/report/report_fsc_spt/spt_fsc_masked.log",
    benchmark:
        "results/benchmarks/report/report_fsc_spt/spt_fsc_masked.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        labels=[f"iteration {k:02d}" for k in range(1, len(SPT_ITERS) + 1)],
        title="Subtomogram refinement: masked gold-standard FSC per iteration",
    script:
        "../workflow/scripts/report_fsc.py"


if SPT_ON:
    FINAL_TARGETS.extend(str(f) for f in (rules.report_map_spt_final.output.png, rules.report_fsc_spt.output.png))


# ------------------------------------------------------------------ 5. demo ground truth
rule report_map_truth:
    input:
        map="results/demo/truth/reference_{which}.mrc",
    output:
        png=report(
            "results/report/maps/truth_{which}.png",
            caption="../report/map_truth.rst",
            category="5. Demo ground truth",
            subcategory="maps",
            labels={"figure": "true map ({which})"},
        ),
    log:
        "results/logs/report/report_map_truth/{which}.log",
    benchmark:
        "results/benchmarks/report/report_map_truth/{which}.tsv"
    wildcard_constraints:
        which="tomo|spa",
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        title=lambda wildcards: f"true map ({wildcards.which})",
    script:
        "../workflow/scripts/report_map.py"


FINAL_TARGETS.extend(
    f"results/report/maps/truth_{which}.png"
    for which, shown in (("tomo", REPORT_DEMO_SPT), ("spa", REPORT_DEMO_SPA))
    if shown
)


rule report_demo_scores:
    input:
        unpack(report_demo_inputs),
    output:
        scores="results/demo_scores.json",
        png=report(
            "results/report/demo_scores.png",
            caption="../report/demo_scores.rst",
            category="5. Demo ground truth",
            subcategory="scores",
            labels={"figure": "demo scores"},
        ),
    log:
        "results/logs/report/report_demo_scores/demo.log",
    benchmark:
        "results/benchmarks/report/report_demo_scores/demo.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        sym=config["tempmatch"]["sym"],
        apix=config["microscope"]["apix"],
    script:
        "../workflow/scripts/report_demo_scores.py"


if REPORT_DEMO_SPT or REPORT_DEMO_SPA:
    FINAL_TARGETS.append(str(rules.report_demo_scores.output.scores))


# ------------------------------------------------------------------ 6. run times
rule report_runtimes:
    input:
        benchmarks=job_benchmarks,  # the benchmark table of every other job of the run
    output:
        png=report(
            "results/report/runtimes.png",
            caption="../report/runtimes.rst",
            category="6. Run times",
            labels={"figure": "wall time per rule"},
        ),
        table="results/report/runtimes.tsv",
    log:
        "results/logs/report/report_runtimes/all.log",
    benchmark:
        "results/benchmarks/report/report_runtimes/all.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../workflow/scripts/report_runtimes.py"


FINAL_TARGETS.append(str(rules.report_runtimes.output.png))
