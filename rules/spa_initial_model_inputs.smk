# Input functions of the single-particle initial model (rules/spa_initial_model.smk) used by
# spa_startmodel in rules/spa.smk. With spa.startingmodel from_data the starting model is the SGD map.


def spa_start_source(wildcards):
    """The source input of spa_startmodel; the initial model when spa.startingmodel is from_data."""
    if config["spa"]["startingmodel"] == "from_data":
        return [f"{SPA_INIT_DIR}/model.mrc"]
    return spa_start_inputs(wildcards)


def spa_startmodel_params():
    """spa_startmodel's params: from_data becomes the path of the initial model (read as a map)."""
    p = spa_params("startmodel")
    if p["startingmodel"] == "from_data":
        p = {**p, "startingmodel": f"{SPA_INIT_DIR}/model.mrc"}
    return p
