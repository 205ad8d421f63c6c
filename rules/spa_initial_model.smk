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
# Included before rules/spa.smk: spa_start_source / spa_startmodel_params are its rule's inputs.

SPA_INIT = config["spa_initial_model"]
SPA_INIT_DIR = f"results/spa/{config['spa']['path']}/initial_model"


def spa_start_source(wildcards):
    """Input of rule spa_startmodel: the initial model when spa.startingmodel is from_data."""
    if config["spa"]["startingmodel"] == "from_data":
        return [f"{SPA_INIT_DIR}/model.mrc"]
    return spa_start_inputs(wildcards)


def spa_startmodel_params():
    """spa_startmodel's params: from_data becomes the path of the initial model (read as a map)."""
    p = spa_params("startmodel")
    if p["startingmodel"] == "from_data":
        p = {**p, "startingmodel": f"{SPA_INIT_DIR}/model.mrc"}
    return p


rule spa_initial_model:
    input:
        particles=f"results/spa/{config['spa']['path']}/particles.hdf",
    output:
        model=f"{SPA_INIT_DIR}/model.mrc",
        models=f"{SPA_INIT_DIR}/models.hdf",
        scores=f"{SPA_INIT_DIR}/scores.json",
    params:
        cfg=SPA_INIT,
        sym=config["spa"]["sym"],
    log:
        f"results/logs/spa/spa_initial_model/{config['spa']['path']}.log",
    benchmark:
        f"results/benchmarks/spa/spa_initial_model/{config['spa']['path']}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/emflow.yaml"
    script:
        "../workflow/scripts/spa_initial_model.py"
