"""spa_startmodel: threed_00.mrc from `spa.startingmodel` (truth_lowpass30 | blob | a map path; from_data
arrives as the initial model's path) via emflow.spa.files.start_model."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.io import read_hdf_stack, write_mrc  # noqa: E402
from emflow.pixel_size import check_pixel_size  # noqa: E402
from emflow.spa.files import start_model  # noqa: E402


def main(particles: str, sources: list, out: str, spa: dict) -> None:
    stack, headers = read_hdf_stack(particles, indices=[0])
    box, apix = stack.shape[-1], check_pixel_size(headers[0].get("apix_x"), source=particles, kind="hdf")
    kind = spa["startingmodel"]
    source = sources[0] if kind == "truth_lowpass30" else kind
    write_mrc(out, start_model(kind, box, apix, source, spa["blob_radius_a"]), apix)
    log.info("starting model %s (box %d, %.3f Å/px)", kind, box, apix)


smk = snakemake  # noqa: F821
main(smk.input.particles, list(smk.input.source), smk.output.model, smk.params.spa)
