# Single-particle initial model from the data (issue #15 item 3; EMAN e2initialmodel_sgd):
# stochastic gradient descent from random starts on the prepared particles, several starts kept
# and scored by the agreement of their re-projections with the particles. Writes under
# results/spa/<spa.path>/initial_model/:
#
#   model.mrc       the best start's map at the particles' box and pixel size: the starting model
#                   (threed_00.mrc, rules/spa.smk) when spa.startingmodel is from_data
#   models.hdf      every start's map, best first (header: sgd_score, sgd_start)
#   scores.json     per start: re-projection score, batch scores per iteration, map change; timing
#
# Included before rules/spa.smk: its rule spa_startmodel takes spa_start_source / spa_startmodel_params
# (spa_initial_model_inputs.smk) as input and params.

SPA_INIT = config["spa_initial_model"]
SPA_INIT_DIR = f"results/spa/{config['spa']['path']}/initial_model"


rule spa_initial_model:
    input:
        particles=f"results/spa/{config['spa']['path']}/particles.hdf",
    output:
        model=f"{SPA_INIT_DIR}/model.mrc",
        models=f"{SPA_INIT_DIR}/models.hdf",
        scores=f"{SPA_INIT_DIR}/scores.json",
    log:
        f"results/logs/spa/spa_initial_model/{config['spa']['path']}.log",
    benchmark:
        f"results/benchmarks/spa/spa_initial_model/{config['spa']['path']}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=SPA_INIT,
        sym=config["spa"]["sym"],
    script:
        "../workflow/scripts/spa_initial_model.py"


include: "spa_initial_model_inputs.smk"
