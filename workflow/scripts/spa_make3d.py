"""spa_make3d: Fourier reconstruction of the class averages (threed_XX), then mass/automask (threed_filt_XX)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.filters import normalize_by_mass  # noqa: E402
from emflow.io import read_hdf_stack, transform_from_dict, write_hdf_stack, write_mrc  # noqa: E402
from emflow.masks import auto_mask  # noqa: E402
from emflow.pixel_size import check_pixel_size  # noqa: E402
from emflow.spa.make3d import make3d, read_structure_factor  # noqa: E402
from emflow.spa.refine_loop import RefineOptions  # noqa: E402

smk = snakemake  # noqa: F821
spa = smk.params.spa
avgs, headers = read_hdf_stack(smk.input.classes)
apix = check_pixel_size(headers[0].get("apix_x"), source=smk.input.classes, kind="hdf")
R = np.stack([transform_from_dict(h["xform.projection"])[0] for h in headers])
w = np.array([h.get("ptcl_repr", 0) for h in headers], float)
setsf = read_structure_factor(spa["m3dsetsf"], avgs.shape[-1], apix) if spa["m3dsetsf"] else None
opts = RefineOptions.from_config(spa, apix=apix, m3dsetsf=setsf)
vol, info = make3d(np.asarray(avgs, np.float32), R, w, opts.make3d_options())
log.info("inserted %d class averages, excluded %d by slice quality", len(info["used"]), len(info["excluded"]))
header = {"ptcl_repr": int(w.sum()), "threed_ptcl_idxs": [int(i) for i in info["used"]],
          "threed_excl_ptcl_idxs": [int(i) for i in info["excluded"]], "threed_ptcl_src": str(smk.input.classes)}
write_hdf_stack(smk.output.threed, vol[None], [header], apix=apix)
write_mrc(smk.output.threed_mrc, vol, apix)
filt = vol
if spa["mass"] > 0:
    filt = normalize_by_mass(filt, apix, spa["mass"])
    log.info("normalised to %.0f kDa", spa["mass"])
if spa["automask3d"]:
    thr, radius, nshells, nshellsgauss, nmaxseed = spa["automask3d"]
    mask = auto_mask(filt, apix, threshold=thr, nshells=int(nshells), nshellsgauss=int(nshellsgauss),
                     nmaxseed=int(nmaxseed), radius=radius)
    filt = filt * mask
write_mrc(smk.output.threed_filt, np.asarray(filt, np.float32), apix)
