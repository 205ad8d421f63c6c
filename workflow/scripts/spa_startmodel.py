"""spa_startmodel: threed_00.mrc from `spa.startingmodel` (truth_lowpass30 | blob | a map path)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.filters import lowpass_tophat  # noqa: E402
from emflow.io import read_hdf_stack, read_mrc, write_mrc  # noqa: E402
from emflow.pixel_size import check_pixel_size  # noqa: E402
from emflow.spa.initial_model import blob_model  # noqa: E402

smk = snakemake  # noqa: F821
spa = smk.params.spa
stack, headers = read_hdf_stack(smk.input.particles, indices=[0])
box, apix = stack.shape[-1], check_pixel_size(headers[0].get("apix_x"), source=smk.input.particles, kind="hdf")
kind = spa["startingmodel"]
if kind == "blob":
    model = blob_model(box, apix, radius_a=spa["blob_radius_a"])
else:
    source = smk.input.source[0] if kind == "truth_lowpass30" else kind
    model, mapix = read_mrc(source)
    resample = (f"resample the model to box {box} at {apix:.3f} Å/px, e.g. `e2proc3d.py {source} model_resampled.mrc "
                f"--scale={mapix / apix:.4f} --clip={box} --apix={apix:.3f}`, and set spa.startingmodel to the result")
    if model.shape != (box, box, box):
        raise InputError(f"starting model box {model.shape} differs from particle box {box}", source="spa.startingmodel",
                         fix=resample)
    if abs(mapix - apix) > 0.01 * apix:
        raise InputError(f"starting model pixel size {mapix:.3f} Å differs from the particles' {apix:.3f} Å",
                         source="spa.startingmodel", fix=resample)
    if kind == "truth_lowpass30":
        model = lowpass_tophat(model, apix, 30.0)
write_mrc(smk.output.model, np.asarray(model, np.float32), apix)
log.info("starting model %s (box %d, %.3f Å/px)", kind, box, apix)
