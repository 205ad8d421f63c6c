"""Snakemake adapter: results/sets/<label>.lst → SGD initial model(s) (e2spt_sgd_new, spec §3.5)."""

from emflow.pipeline.log import setup_logging

setup_logging(snakemake)  # noqa: F821

from emflow.sta.initial_model_steps import run_sgd  # noqa: E402  (after setup_logging: numba cache, threads)


def main(smk) -> None:
    """Map rule initial_model_sgd's inputs, outputs and params onto :func:`run_sgd`."""
    out = smk.output
    run_sgd(lst=smk.input.lst, maps_mrc=list(out.maps_mrc), maps_hdf=list(out.maps_hdf), history=list(out.history),
            scores_out=out.scores, slices_png=out.slices_png, convergence_png=out.convergence_png, cfg=smk.params.cfg)


main(snakemake)  # noqa: F821
