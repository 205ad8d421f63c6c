"""Snakemake adapter: particles.hdf → SGD initial model (e2initialmodel_sgd; emflow.spa.initial_model)."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from emflow.io import atomic_write, read_hdf_stack, write_hdf_stack, write_mrc  # noqa: E402
from emflow.spa.initial_model import SPAInitParams, spa_initial_model  # noqa: E402


def main(particles: str, model: str, models: str, scores: str, cfg: dict, sym: str) -> None:
    """Read the prepared (phase-flipped, protein-white) particles, run the SGD, write the maps."""
    stack, headers = read_hdf_stack(particles)
    apix = float(headers[0]["apix_x"])
    keys = {k: v for k, v in cfg.items() if k != "seed"}
    params = SPAInitParams(sym=sym, **keys)
    log.info("%d particles, box %d, %.3f Å/px, %s", len(stack), stack.shape[-1], apix, params)
    t0 = time.perf_counter()
    res = spa_initial_model(stack, apix, params, np.random.default_rng(cfg["seed"]),
                            progress=progress_logger(log, "SGD iterations", 1.0))
    seconds = time.perf_counter() - t0
    write_mrc(model, res.map, apix)
    write_hdf_stack(models, list(res.maps), [{"sgd_score": float(s), "sgd_start": int(i)}
                                             for s, i in zip(res.scores, res.start_index)], apix=apix)
    summary = {"seconds": seconds, "working_box": res.working_box, "working_apix": res.working_apix,
               "scores": res.scores.tolist(), "start_index": res.start_index.tolist(),
               "batch_scores": res.batch_scores.tolist(), "map_change": res.map_change.tolist(),
               "hand": "undetermined: projections of a map and of its mirror image are identical"}
    with atomic_write(scores) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    log.info("best start %d of %d, re-projection score %.4f (scores %s); %.1f s", res.start_index[0],
             len(res.scores), res.scores[0], np.round(res.scores, 4).tolist(), seconds)


main(snakemake.input.particles, snakemake.output.model, snakemake.output.models,  # noqa: F821
     snakemake.output.scores, dict(snakemake.params.cfg), snakemake.params.sym)  # noqa: F821
