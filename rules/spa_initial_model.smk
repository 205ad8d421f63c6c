# Single-particle initial model from the data (issue #15 item 3), by spa_initial_model.method:
# stochastic_em (default; emflow.spa.abinitio, RELION/cryoSPARC-style): minibatches of particles scored
# against every pose of an SO(3) grid with a Gaussian likelihood (their CTF amplitudes modelled),
# posterior-weighted online-EM updates, several random starts ranked by marginal log-likelihood; or
# sgd (EMAN e2refine2d + e2initialmodel_sgd): reference-free 2D classes of the prepared particles
# (spa_initial_model.classify2d), then stochastic gradient descent from random starts on the class
# averages weighted by their counts (or on the particles with classify2d.enabled false), the starts
# scored by the agreement of their re-projections with the images. Writes under
# results/spa/<spa.path>/initial_model/:
#
#   model.mrc       the best start's map at the particles' box and pixel size: the starting model
#                   (threed_00.mrc, rules/spa.smk) when spa.startingmodel is from_data
#   models.hdf      every start's map, best first (header: sgd_score, sgd_start)
#   classes2d.hdf   the 2D class averages, largest first (header ptcl_repr: particle count); empty
#                   with method stochastic_em or classify2d.enabled false
#   scores.json     per start: re-projection score, batch scores per iteration, map change; timing;
#                   2D classification: counts, per-iteration changes, scores and seconds
#
# Included before rules/spa.smk: its rule spa_startmodel takes spa_start_source / spa_startmodel_params
# (spa_initial_model_inputs.smk) as input and params.

SPA_INIT_DIR = f"results/spa/{config['spa']['path']}/initial_model"


rule spa_initial_model:
    input:
        particles=f"results/spa/{config['spa']['path']}/particles.hdf",
    output:
        model=f"{SPA_INIT_DIR}/model.mrc",
        models=f"{SPA_INIT_DIR}/models.hdf",
        classes=f"{SPA_INIT_DIR}/classes2d.hdf",
        scores=f"{SPA_INIT_DIR}/scores.json",
    log:
        f"results/logs/spa/spa_initial_model/{config['spa']['path']}.log",
    benchmark:
        f"results/benchmarks/spa/spa_initial_model/{config['spa']['path']}.tsv"
    conda:
        "../envs/emflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input, attempt: RSC.spa_initial_model_mem_mb(RSC.file_mb(input.particles), attempt),
        runtime=lambda wildcards, input, attempt: RSC.spa_initial_model_runtime(
            *RSC.spa_stack(input.particles), config["spa_initial_model"], attempt
        ),
    params:
        cfg=rule_params(config, "spa_initial_model", "spa_initial_model"),
        sym=config["spa"]["sym"],
    script:
        "../workflow/scripts/spa_initial_model.py"


include: "spa_initial_model_inputs.smk"
