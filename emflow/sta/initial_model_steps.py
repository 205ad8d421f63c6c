"""The SGD initial-model job (rule initial_model_sgd, e2spt_sgd_new, spec §3.5): read the particle set,
run :func:`emflow.sta.initial_model.sgd_initial_model`, write maps, history, scores and figures."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from emflow.errors import InputError
from emflow.io import atomic_write, read_hdf_stack, read_lst, transform_from_dict, write_hdf_stack, write_mrc
from emflow.pipeline import plots
from emflow.pipeline.log import progress_logger
from emflow.pixel_size import check_pixel_size
from emflow.sta.align3d import SubtiltParticle
from emflow.sta.initial_model import SGDParams, sgd_initial_model

__all__ = ["load_particles", "run_sgd"]

log = logging.getLogger(__name__)


def load_particles(lst_path: str, shrink: int) -> tuple[list[SubtiltParticle], float]:
    """Every 3D particle of the set as a SubtiltParticle (subtilts via class_ptcl_src/idxs) and the
    pixel size (Å/px) after ``shrink``."""
    parts, apix = [], None
    for e in read_lst(lst_path):
        _, (h3,) = read_hdf_stack(e.path, [e.index])
        box = int(h3["nx"])
        imgs, heads = read_hdf_stack(h3["class_ptcl_src"], list(h3["class_ptcl_idxs"]))
        xf = [transform_from_dict(h["xform.projection"], source=h3["class_ptcl_src"]) for h in heads]
        proj = np.array([R for R, _ in xf])
        d = np.array([t[:2] for _, t in xf])
        parts.append(SubtiltParticle.from_images(imgs, proj, d, box=box, shrink=shrink))
        apix = check_pixel_size(h3.get("apix_x"), source=e.path, kind="hdf", what="HDF header (apix_x)") * shrink
    if apix is None:
        raise InputError("the particle set is empty: no particles for an initial model", source=lst_path,
                         fix="check the picks and extraction of this label (see the extract_buildset log)")
    return parts, apix


def run_sgd(*, lst: str, maps_mrc: Sequence[str], maps_hdf: Sequence[str], history: Sequence[str], scores_out: str,
            slices_png: str, convergence_png: str, cfg: Mapping) -> None:
    """Set ``lst`` → SGD initial model(s): ``maps_mrc/maps_hdf/history[ic]`` per class, the per-iteration
    scores (text) and two figures. ``cfg`` is the ``initial_model`` config section."""
    parts, apix = load_particles(lst, cfg["shrink"])
    log.info("%d particles, box %d, %.3f Å/px", len(parts), parts[0].box, apix)
    params = SGDParams(res_a=cfg["res_a"], batch=cfg["batch"], keep=cfg["keep"], niter=cfg["niter"], lr=cfg["lr"],
                       ncls=cfg["ncls"], classify=cfg["classify"], sym=cfg["sym"], delta_deg=cfg["delta_deg"],
                       npos=cfg["npos"], fine_deg=cfg["fine_deg"], maxshift_px=cfg["maxshift_px"])
    res = sgd_initial_model(parts, apix, params, np.random.default_rng(cfg["seed"]),
                            progress=progress_logger(log, "SGD alignments", 1.0))
    for ic in range(params.ncls):
        write_mrc(maps_mrc[ic], res.maps[ic], apix)
        write_hdf_stack(maps_hdf[ic], res.maps[ic][None], [{"apix_x": apix}])
        write_hdf_stack(history[ic], list(res.history[:, ic]),
                        [{"apix_x": apix, "sgd_iteration": i} for i in range(len(res.history))])
    with atomic_write(scores_out) as tmp, open(tmp, "w") as f:
        f.write("# iteration particle_index score_cls0 [score_cls1 ...] (lower is better)\n")
        for it, (sc, ids) in enumerate(zip(res.scores, res.particle_ids)):
            for j, pid in enumerate(ids):
                f.write(f"{it} {pid} " + " ".join(f"{v:.5f}" for v in sc[:, j]) + "\n")
    plots.class_central_slices(res.maps, slices_png)
    plots.sgd_convergence(res.mean_score, res.map_change, convergence_png)
    for it in range(len(res.mean_score)):
        log.info("iteration %d: mean kept score %s, map change %s", it + 1, res.mean_score[it], res.map_change[it])
