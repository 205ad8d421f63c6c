# Report (issue #7): the pictures users look at, collected by `snakemake --report results/report.html`.
# Must be the LAST include of the Snakefile: it looks at the rules and FINAL_TARGETS of every stage.
#
# Stages plug in by adding entries (in their own .smk, or here while they land) to three registries:
#   REPORT_FIGURES[name] = {"source": png, "category": ..., "subcategory": ..., "caption": rst text}
#       an existing PNG of a stage, copied into the report by rule report_figure
#   REPORT_MAPS[name] = {"map": mrc, "category": ..., "caption": rst text}
#       a map drawn as central sections + projection by rule report_map
#   REPORT_FSC[name] = {"files": [fsc txt, ...], "labels": [...], "title": ..., "category": ..., "caption": ...}
#       FSC curves (emflow.io.read_fsc_txt format) on one plot by rule report_fsc
# Outputs: results/report/{figures,maps,fsc}/<name>.png, results/report/runtimes.png,
#          results/demo_scores.json + results/report/demo_scores.png (demo only).

REPORT_FIGURES = globals().get("REPORT_FIGURES", {})
REPORT_MAPS = globals().get("REPORT_MAPS", {})
REPORT_FSC = globals().get("REPORT_FSC", {})


# ------------------------------------------------------------------ registrations of existing stages
if config["workflows"]["subtomogram"]:
    for _t in tomogram_names():
        REPORT_FIGURES[f"tomogram_{_t}"] = {
            "source": f"results/tomograms/{_t}__bin{BIN}_slices.png",
            "category": "1. Tomograms",
            "subcategory": _t,
            "caption": f"Central XY, XZ and YZ slices of tomogram **{_t}** (weighted back-projection at bin "
            f"{BIN}), shared grey scale (1st–99th percentile). Particles should be visible as "
            "compact blobs; streaks along z are the missing wedge.",
        }
        if _has_rule("picks_filter"):
            REPORT_FIGURES[f"picks_{_t}"] = {
                "source": f"results/picks/{_t}__review.png",
                "category": "2. Template matching",
                "subcategory": _t,
                "caption": f"Template-matching picks of **{_t}**: tomogram slices with the accepted picks "
                "circled, and the histogram of FLCF scores with the detection threshold. A clear "
                "tail of high scores separated from the noise peak means reliable picks.",
            }

if config["workflows"]["single_particle"] and not config["spa"]["check"] and config["spa"]["goldstandard"]:
    REPORT_MAPS["spa_gold"] = {
        "map": f"{SPA_DIR}/gold/threed_gold.mrc",
        "category": "3. Single particle",
        "caption": "Gold-standard single-particle map: the even and odd half maps averaged and weighted per "
        "shell by C_ref = sqrt(2·FSC/(1+FSC)) of their FSC.",
    }
    REPORT_FSC["spa_fsc_gold"] = {
        "files": [f"{SPA_DIR}/gold/fsc_gold_{it}.txt" for it in SPA_ITERS],
        "labels": [f"iteration {it}" for it in SPA_ITERS],
        "title": "SPA gold-standard FSC (even vs odd half maps)",
        "category": "3. Single particle",
        "caption": "FSC between the independently refined half maps per iteration (unmasked); the 0.143 "
        "crossing is the resolution reported in gold/gold.json.",
    }
elif config["workflows"]["single_particle"] and not config["spa"]["check"] and _has_rule("spa_report"):
    REPORT_FIGURES["spa_convergence"] = {
        "source": f"{SPA_DIR}/convergence.png",
        "category": "3. Single particle",
        "subcategory": "refinement",
        "caption": "Convergence of the e2refine loop: FSC against the true map (demo) and between "
        "successive iterations. Curves that stop moving mean the refinement has converged.",
    }
    REPORT_FIGURES["spa_classes"] = {
        "source": f"{SPA_DIR}/classes_{SPA_ITERS[-1]}.png",
        "category": "3. Single particle",
        "subcategory": "class averages",
        "caption": f"Class averages of the last iteration ({SPA_ITERS[-1]}), most populated first; the "
        "title of each is class number: particles. They should look like clean projections.",
    }
    REPORT_MAPS["spa_final"] = {
        "map": f"{SPA_DIR}/threed_filt_{SPA_ITERS[-1]}.mrc",
        "category": "3. Single particle",
        "caption": f"Final single-particle map (iteration {SPA_ITERS[-1]}, after mass normalisation / mask).",
    }
    if spa_demo_data():
        REPORT_FSC["spa_fsc_truth"] = {
            "files": [f"{SPA_DIR}/fsc_truth_{it}.txt" for it in SPA_ITERS],
            "labels": [f"iteration {it}" for it in SPA_ITERS],
            "title": "SPA map vs truth, per iteration",
            "category": "3. Single particle",
            "caption": "FSC of each iteration's map against the true map (demo only). The crossings of "
            "0.5 and 0.143 are the resolutions reported in demo_scores.json.",
        }

if config["workflows"]["subtomogram"] and _has_rule("initial_model_sgd"):
    REPORT_FIGURES["initial_model_slices"] = {
        "source": rules.initial_model_sgd.output.slices_png,
        "category": "4. Subtomogram averaging",
        "subcategory": "initial model",
        "caption": "Initial model(s) from stochastic gradient descent on the subtilts (e2spt_sgd): central "
        "slices of each class. A plausible low-resolution shape, not a sphere or noise, is expected.",
    }
    REPORT_FIGURES["initial_model_convergence"] = {
        "source": rules.initial_model_sgd.output.convergence_png,
        "category": "4. Subtomogram averaging",
        "subcategory": "initial model",
        "caption": "Convergence of the SGD initial model: alignment score and map change per iteration.",
    }

if config["workflows"]["subtomogram"] and _has_rule("spt_refine_postprocess"):
    for _k in range(1, len(SPT_ITERS) + 1):
        REPORT_FIGURES[f"spt_fsc_{_k:02d}"] = {
            "source": f"{SPT_PATH}/fsc_{_k:02d}.png",
            "category": "4. Subtomogram averaging",
            "subcategory": "gold-standard FSC",
            "caption": f"Gold-standard FSC between the even and odd half maps of iteration {_k:02d} "
            f"({SPT_ITERS[_k - 1]!s}), unmasked, masked and with a tight mask. The 0.143 crossing "
            "of the masked curve is the resolution used for the next iteration's filter.",
        }
    REPORT_FSC["spt_fsc_masked"] = {
        "files": [f"{SPT_PATH}/fsc_masked_{k:02d}.txt" for k in range(1, len(SPT_ITERS) + 1)],
        "labels": [f"iteration {k:02d}" for k in range(1, len(SPT_ITERS) + 1)],
        "title": "Subtomogram refinement: masked gold-standard FSC per iteration",
        "category": "4. Subtomogram averaging",
        "caption": "Masked even/odd FSC of every refinement iteration on one plot: curves moving right mean "
        "the refinement is still improving.",
    }
    REPORT_MAPS["spt_final"] = {
        "map": f"{SPT_PATH}/threed_{SPT_LAST}.mrc",
        "category": "4. Subtomogram averaging",
        "caption": f"Final subtomogram average (iteration {SPT_LAST}).",
    }

# Demo-only entries exist only for the workflows that run on demo data: a user's SPA run (even
# with input.source demo for the tomograms) gets no demo map and no demo scores.
REPORT_DEMO_SPT = DEMO and config["workflows"]["subtomogram"]
REPORT_DEMO_SPA = (
    config["workflows"]["single_particle"]
    and spa_demo_data()
    and not config["spa"]["check"]
    and not config["spa"]["goldstandard"]
)
if REPORT_DEMO_SPT:
    REPORT_MAPS["truth_tomo"] = {
        "map": truth_map_tomo(),
        "category": "5. Demo ground truth",
        "caption": "The true map of the demo tomograms' particle (resampled from the bundled PDB-derived "
        "structure), the template for template matching.",
    }
if REPORT_DEMO_SPA:
    REPORT_MAPS["truth_spa"] = {
        "map": truth_map_spa(),
        "category": "5. Demo ground truth",
        "caption": "The true map of the demo single-particle set.",
    }


REPORT_TARGETS = (
    [f"results/report/figures/{name}.png" for name in REPORT_FIGURES]
    + [f"results/report/maps/{name}.png" for name in REPORT_MAPS]
    + [f"results/report/fsc/{name}.png" for name in REPORT_FSC]
    + (["results/demo_scores.json", "results/report/demo_scores.png"] if REPORT_DEMO_SPT or REPORT_DEMO_SPA else [])
)
# The run-time chart waits for every stage and every other report figure, so it shows them all.
REPORT_STAGE_TARGETS = list(FINAL_TARGETS) + REPORT_TARGETS
FINAL_TARGETS.extend(REPORT_TARGETS + ["results/report/runtimes.png"])


report: "../report/workflow.rst"


REPORT_NAME = "[A-Za-z0-9_.-]+"


rule report_figure:
    input:
        png=report_figure_source,
    output:
        png=report(
            "results/report/figures/{fig}.png",
            caption="../report/figure.rst",
            category=report_figure_category,
            subcategory=report_figure_subcategory,
            labels={"figure": "{fig}"},
        ),
    log:
        "results/logs/report/report_figure/{fig}.log",
    benchmark:
        "results/benchmarks/report/report_figure/{fig}.tsv"
    wildcard_constraints:
        fig=REPORT_NAME,
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        caption=report_figure_caption,
    script:
        "../workflow/scripts/report_figure.py"


rule report_map:
    input:
        map=report_map_source,
    output:
        png=report(
            "results/report/maps/{map}.png",
            caption="../report/figure.rst",
            category=report_map_category,
            subcategory="maps",
            labels={"map": "{map}"},
        ),
    log:
        "results/logs/report/report_map/{map}.log",
    benchmark:
        "results/benchmarks/report/report_map/{map}.tsv"
    wildcard_constraints:
        map=REPORT_NAME,
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        caption=report_map_caption,
    script:
        "../workflow/scripts/report_map.py"


rule report_fsc:
    input:
        fsc=report_fsc_sources,
    output:
        png=report(
            "results/report/fsc/{fsc}.png",
            caption="../report/figure.rst",
            category=report_fsc_category,
            subcategory="FSC",
            labels={"FSC": "{fsc}"},
        ),
    log:
        "results/logs/report/report_fsc/{fsc}.log",
    benchmark:
        "results/benchmarks/report/report_fsc/{fsc}.tsv"
    wildcard_constraints:
        fsc=REPORT_NAME,
    conda:
        "../envs/emflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        entry=report_fsc_entry,
        caption=report_fsc_caption,
    script:
        "../workflow/scripts/report_fsc.py"


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


rule report_runtimes:
    input:
        stages=REPORT_STAGE_TARGETS,
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
    params:
        benchmarks="results/benchmarks",
    script:
        "../workflow/scripts/report_runtimes.py"
