"""Snakemake adapter: results/sets/<label>.lst → SGD initial model(s) (e2spt_sgd_new, spec §3.5)."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import os  # noqa: E402

import numpy as np  # noqa: E402

from emflow.io import atomic_write, read_hdf_stack, read_lst, transform_from_dict, write_hdf_stack, write_mrc  # noqa: E402
from emflow.pixel_size import check_pixel_size  # noqa: E402
from emflow.sta.align3d import SubtiltParticle  # noqa: E402
from emflow.sta.initial_model import SGDParams, sgd_initial_model  # noqa: E402


def load_particles(lst_path, shrink):
    """Every 3D particle of the set as a SubtiltParticle (subtilts via class_ptcl_src/idxs)."""
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
    return parts, apix


def central_slices_png(path, maps):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(maps), 3, figsize=(7.5, 2.6 * len(maps)), squeeze=False)
    for ic, m in enumerate(maps):
        c = m.shape[0] // 2
        for j, (img, name) in enumerate(((m[c], "xy (z=c)"), (m[:, c], "xz (y=c)"), (m[:, :, c], "yz (x=c)"))):
            axes[ic, j].imshow(img, cmap="gray", origin="lower")
            axes[ic, j].set_title(f"class {ic} {name}", fontsize=8)
            axes[ic, j].axis("off")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def convergence_png(path, res):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    it = np.arange(1, len(res.mean_score) + 1)
    for ic in range(res.mean_score.shape[1]):
        a.plot(it, res.mean_score[:, ic], "o-", label=f"class {ic}")
        b.semilogy(it, np.maximum(res.map_change[:, ic], 1e-6), "o-", label=f"class {ic}")
    a.set_xlabel("iteration"), a.set_ylabel("mean score of kept particles (lower = better)")
    b.set_xlabel("iteration"), b.set_ylabel("1 − CC(map, previous map)")
    a.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(sm):
    cfg = sm.params.cfg
    parts, apix = load_particles(sm.input.lst, cfg["shrink"])
    log.info("%d particles, box %d, %.3f Å/px", len(parts), parts[0].box, apix)
    params = SGDParams(res_a=cfg["res_a"], batch=cfg["batch"], keep=cfg["keep"], niter=cfg["niter"], lr=cfg["lr"],
                       ncls=cfg["ncls"], classify=cfg["classify"], sym=cfg["sym"], delta_deg=cfg["delta_deg"],
                       npos=cfg["npos"], fine_deg=cfg["fine_deg"], maxshift_px=cfg["maxshift_px"])
    res = sgd_initial_model(parts, apix, params, np.random.default_rng(cfg["seed"]),
                            progress=progress_logger(log, "SGD alignments", 1.0))
    out = os.path.dirname(sm.output.maps_mrc[0])
    for ic in range(params.ncls):
        write_mrc(os.path.join(out, f"output_cls{ic}.mrc"), res.maps[ic], apix)
        write_hdf_stack(os.path.join(out, f"output_cls{ic}.hdf"), res.maps[ic][None], [{"apix_x": apix}])
        write_hdf_stack(os.path.join(out, f"output_all_cls{ic}.hdf"), list(res.history[:, ic]),
                        [{"apix_x": apix, "sgd_iteration": i} for i in range(len(res.history))])
    with atomic_write(sm.output.scores) as tmp, open(tmp, "w") as f:
        f.write("# iteration particle_index score_cls0 [score_cls1 ...] (lower is better)\n")
        for it, (sc, ids) in enumerate(zip(res.scores, res.particle_ids)):
            for j, pid in enumerate(ids):
                f.write(f"{it} {pid} " + " ".join(f"{v:.5f}" for v in sc[:, j]) + "\n")
    central_slices_png(sm.output.slices_png, res.maps)
    convergence_png(sm.output.convergence_png, res)
    for it in range(len(res.mean_score)):
        log.info("iteration %d: mean kept score %s, map change %s", it + 1, res.mean_score[it], res.map_change[it])


main(snakemake)  # noqa: F821
