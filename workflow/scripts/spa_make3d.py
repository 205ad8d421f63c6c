"""spa_make3d: Fourier reconstruction of the class averages (threed_XX), then mass/automask3d
(threed_filt_XX, the next model) (refine_loop.stage_make3d)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.io import write_hdf_stack, write_mrc  # noqa: E402
from emflow.spa.files import read_classes  # noqa: E402
from emflow.spa.make3d import read_structure_factor  # noqa: E402
from emflow.spa.refine_loop import RefineOptions, stage_make3d  # noqa: E402


def main(classes: str, out_hdf: str, out_mrc: str, out_filt: str, spa: dict) -> None:
    avgs, R, w, apix = read_classes(classes)
    setsf = read_structure_factor(spa["m3dsetsf"], avgs.shape[-1], apix) if spa["m3dsetsf"] else None
    vol, filt, info = stage_make3d(avgs, R, w, RefineOptions.from_config(spa, apix=apix, m3dsetsf=setsf))
    log.info("inserted %d class averages, excluded %d by slice quality", len(info["used"]), len(info["excluded"]))
    header = {"ptcl_repr": int(w.sum()), "threed_ptcl_idxs": [int(i) for i in info["used"]],
              "threed_excl_ptcl_idxs": [int(i) for i in info["excluded"]], "threed_ptcl_src": str(classes)}
    write_hdf_stack(out_hdf, vol[None], [header], apix=apix)
    write_mrc(out_mrc, vol, apix)
    write_mrc(out_filt, filt, apix)


smk = snakemake  # noqa: F821
main(smk.input.classes, smk.output.threed, smk.output.threed_mrc, smk.output.threed_filt, smk.params.spa)
