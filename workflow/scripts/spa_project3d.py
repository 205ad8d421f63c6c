"""spa_project3d: reference projections of the previous model (refine_loop.stage_project)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.io import read_mrc  # noqa: E402
from emflow.spa.files import write_projections  # noqa: E402
from emflow.spa.refine_loop import RefineOptions, stage_project  # noqa: E402


def main(model_path: str, out: str, spa: dict) -> None:
    model, apix = read_mrc(model_path)
    opts = RefineOptions.from_config(spa, apix=apix)
    _, proj, R = stage_project(model, opts)
    write_projections(out, proj, R, apix)
    log.info("%d projections (%s, sym %s, projector %s)", len(proj), opts.orientgen, opts.sym, opts.projector)


main(snakemake.input.model, snakemake.output.projections, snakemake.params.spa)  # noqa: F821
