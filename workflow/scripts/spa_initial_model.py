"""Snakemake adapter: particles.hdf → initial model: stochastic EM (emflow.spa.abinitio) or 2D classes → SGD
(e2refine2d + e2initialmodel_sgd), by spa_initial_model.method."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from emflow.io import atomic_write, write_hdf_stack, write_mrc  # noqa: E402
from emflow.spa.files import read_particles  # noqa: E402
from emflow.spa.initial_model import SPAInitParams, initial_model_run  # noqa: E402


def main(particles: str, model: str, models: str, classes: str, scores: str, cfg: dict, sym: str) -> None:
    """Read the prepared (phase-flipped, protein-white) particles (and their CTFs), run the initial model, write
    the maps."""
    stack, ctfs, apix = read_particles(particles)
    params = SPAInitParams(sym=sym, **{k: v for k, v in cfg.items() if k not in ("seed", "classify2d", "method", "em")})
    log.info("%d particles, box %d, %.3f Å/px, method %s (%s), CTFs %s; %s, 2D classes %s", len(stack),
             stack.shape[-1], apix, cfg["method"], cfg["em"], "yes" if ctfs else "no", params, cfg["classify2d"])
    t0 = time.perf_counter()
    res, cls, summary = initial_model_run(stack, apix, params, dict(cfg["classify2d"]),
                                          np.random.default_rng(cfg["seed"]), progress_logger(log, "initial model", 1.0),
                                          method=cfg["method"], em=dict(cfg["em"]), ctfs=ctfs)
    summary["seconds"] = time.perf_counter() - t0
    write_mrc(model, res.map, apix)
    write_hdf_stack(models, list(res.maps), [{"sgd_score": float(s), "sgd_start": int(i)}
                                             for s, i in zip(res.scores, res.start_index)], apix=apix)
    avgs = np.zeros((0,) + stack.shape[1:], np.float32) if cls is None else cls.averages
    write_hdf_stack(classes, avgs, [] if cls is None else [{"ptcl_repr": int(c)} for c in cls.counts], apix=apix)
    with atomic_write(scores) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    log.info("best start %d of %d, score %.4f (lower is better; scores %s); %.1f s", res.start_index[0],
             len(res.scores), res.scores[0], np.round(res.scores, 4).tolist(), summary["seconds"])
    if sym.lower() != "c1" and res.frame_scores is not None:
        log.info("rotated into the %s frame and symmetrised; match with its own symmetry copies before "
                 "symmetrising %s (1 = exactly symmetric; a low value means the map is not %s-symmetric)", sym,
                 np.round(res.frame_scores, 3).tolist(), sym)


main(snakemake.input.particles, snakemake.output.model, snakemake.output.models,  # noqa: F821
     snakemake.output.classes, snakemake.output.scores, dict(snakemake.params.cfg), snakemake.params.sym)  # noqa: F821
