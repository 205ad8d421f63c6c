# Initial model by subtilt SGD (issue #3 item 4; spec §3.5 e2spt_sgd_new). Reads the particle set
# of the manual picks (results/sets/{extract.label}.lst, rules/extract.smk) and writes
#
# results/initial_model/sptsgd_01/output_cls{ic}.mrc/.hdf   final map of class ic
# results/initial_model/sptsgd_01/output_all_cls{ic}.hdf    the map after every iteration
# results/initial_model/sptsgd_01/score.txt                 alignment scores of every iteration
# results/initial_model/sptsgd_01/slices.png, convergence.png
#
# output_cls0.mrc is the template of template matching unless tempmatch.template is set
# (tempmatch_template() in rules/common.smk). params: only the keys the SGD reads
# (emflow/pipeline/params.py); threads: a rule default (--set-threads initial_model_sgd=N).

INITIAL_MODEL = config["initial_model"]


rule initial_model_sgd:
    input:
        lst=f"results/sets/{config['extract']['label']}.lst",
    output:
        maps_mrc=expand("results/initial_model/sptsgd_01/output_cls{ic}.mrc", ic=range(INITIAL_MODEL["ncls"])),
        maps_hdf=expand("results/initial_model/sptsgd_01/output_cls{ic}.hdf", ic=range(INITIAL_MODEL["ncls"])),
        history=expand("results/initial_model/sptsgd_01/output_all_cls{ic}.hdf", ic=range(INITIAL_MODEL["ncls"])),
        scores="results/initial_model/sptsgd_01/score.txt",
        slices_png=report(
            "results/initial_model/sptsgd_01/slices.png",
            caption="../report/initial_model_slices.rst",
            category="4. Subtomogram averaging",
            subcategory="initial model",
            labels={"figure": "central slices"},
        ),
        convergence_png=report(
            "results/initial_model/sptsgd_01/convergence.png",
            caption="../report/initial_model_convergence.rst",
            category="4. Subtomogram averaging",
            subcategory="initial model",
            labels={"figure": "convergence"},
        ),
    log:
        "results/logs/initial_model/initial_model_sgd/sptsgd_01.log",
    benchmark:
        "results/benchmarks/initial_model/initial_model_sgd/sptsgd_01.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.initial_model_mem_mb(
            RSC.set_mb_per_particle(input.lst), INITIAL_MODEL["batch"], attempt
        ),
        runtime=lambda wildcards, input, attempt: RSC.initial_model_runtime(
            RSC.set_mb_per_particle(input.lst), INITIAL_MODEL["batch"], INITIAL_MODEL["niter"], attempt
        ),
    params:
        cfg=rule_params(config, "initial_model_sgd", "initial_model"),
    script:
        "../workflow/scripts/initial_model_sgd.py"


if config["workflows"]["subtomogram"]:
    FINAL_TARGETS.append(rules.initial_model_sgd.output.maps_mrc[0])
