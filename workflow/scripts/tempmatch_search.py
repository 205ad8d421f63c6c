"""Snakemake adapter: binned tomogram + template → FLCF score map, best-orientation map, angle list."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.geometry import tilt_matrix  # noqa: E402
from emflow.io import atomic_write, read_info_json, read_mrc, read_tlt, write_mrc  # noqa: E402
from emflow.resample import read_user_map  # noqa: E402
from emflow.sta import tempmatch as tm  # noqa: E402
from emflow.sta import tempmatch_template as tt  # noqa: E402
from emflow.sta.importer import imod_to_tlt_params  # noqa: E402

smk = snakemake  # noqa: F821
cfg, mic = smk.params.tm, smk.params.microscope

tomo, apix_tomo = read_mrc(smk.input.tomogram)
if cfg["template"]:  # the user's map: pixel size from its own header (a 1.0/0 default is refused)
    template, apix_tmpl = read_user_map(smk.input.template, "tempmatch.template", smk.params.apix_override["template"])
else:  # the SGD initial model (emflow wrote its pixel size)
    template, apix_tmpl = read_mrc(smk.input.template)
mask = None
if cfg["template_mask"]:
    if not cfg["template"]:
        raise InputError("tempmatch.template_mask is set but tempmatch.template is not", source="tempmatch.template_mask",
                         fix="give the template the mask belongs to (tempmatch.template), or set template_mask: null")
    mask, apix_mask = read_user_map(smk.input.template_mask[0], "tempmatch.template_mask",
                                    smk.params.apix_override["template_mask"])
    if mask.shape != template.shape or abs(apix_mask - apix_tmpl) > 0.01 * apix_tmpl:
        raise InputError(f"the template mask ({mask.shape}, {apix_mask:.3f} Å/px) is not on the template's grid "
                         f"({template.shape}, {apix_tmpl:.3f} Å/px)", source=smk.input.template_mask[0],
                         fix="make the mask on the template's grid (same box and pixel size)")
info = read_info_json(smk.input.info)
log.info("tomogram %s at %.3f Å/px; template %s at %.3f Å/px%s", tomo.shape, apix_tomo, template.shape, apix_tmpl,
         " with a mask" if mask is not None else "")

grid = tt.prepare_template(template, apix_tmpl, apix_tomo, box=cfg["template_box_px"], mask=mask,
                           template_contrast=cfg["template_contrast"], tomogram_contrast=cfg["tomogram_contrast"],
                           mirror=cfg["template_mirror"])
template, b = grid.template, grid.box
if min(tomo.shape) < b:
    raise InputError(f"tomogram {tomo.shape} is smaller than the template box {b} px", source=smk.input.tomogram,
                     fix="use a smaller tempmatch.template_box_px or a less binned tomogram")

# Tilt geometry: EMAN tlt_params when the info json has them, else the .tlt in IMOD's convention
# (axis along y), converted in the one IMOD -> EMAN place
p = (np.array([r[:5] for r in info["tlt_params"]], np.float64) if info.get("tlt_params")
     else imod_to_tlt_params(read_tlt(smk.input.tlt)))
tilts, slice_rots = p[:, 3], tilt_matrix(p[:, 3], p[:, 2], p[:, 4])
defocus = info.get("defocus")
if cfg["ctf_weighting"] != "none" and not defocus:
    raise InputError("tempmatch.ctf_weighting needs per-tilt defocus, but the info json has no 'defocus'",
                     source=smk.input.info, fix="estimate the CTF first, or set tempmatch.ctf_weighting: none")
dose = cfg["dose_per_tilt_e_a2"]
weight, tomo_filter = tt.template_weight(
    b, apix_tomo, tilts, slice_rots, wedge=cfg["wedge"], ctf_weighting=cfg["ctf_weighting"], defocus_um=defocus,
    voltage_kv=float(info.get("voltage", mic["voltage_kv"])), cs_mm=float(info.get("cs", mic["cs_mm"])),
    ampcont=mic["ampcont"], dose_per_tilt_e_a2=dose, lowpass_res_a=cfg["lowpass_res_a"],
    highpass_res_a=cfg["highpass_res_a"])

if cfg["mask_radius_a"]:
    radius = cfg["mask_radius_a"] / apix_tomo
else:  # the sphere enclosing the user's mask, else match_template's default (box/2 − 2)
    radius = tt.mask_radius_px(grid.mask) if grid.mask is not None else None
delta = tm.search_step_deg(cfg["delta_deg"], apix=apix_tomo, template_box=b, lowpass_res_a=cfg["lowpass_res_a"],
                           particle_diameter_a=cfg["particle_diameter_a"], mask_radius_px=radius)
eul, rots = tm.search_orientations(cfg["sym"], delta)
log.info("%d orientations (sym %s, delta %g° from tempmatch.delta_deg=%s), template box %d, %d tilts, ctf %s, dose %s",
         len(rots), cfg["sym"], delta, cfg["delta_deg"], b, len(tilts), cfg["ctf_weighting"], dose)
res = tm.match_template(
    tomo, template, rots, weight=weight, mask_radius_px=radius, filter_fn=tomo_filter,
    local_normalisation=cfg["local_normalisation"], clamp_sigma=cfg["clamp_sigma"], tile_size=cfg["tile_size_px"],
    progress=progress_logger(log, "orientations x tiles", 1.0))
log.info("null statistics: %s", res.stats)

write_mrc(smk.output.scores, res.scores, apix_tomo)
write_mrc(smk.output.angle_map, res.best_index.astype(np.float32), apix_tomo)
doc = {
    "convention": "EMAN az, alt, phi (deg); particle = template transformed by R (emflow.geometry.eman_to_matrix)",
    "sym": cfg["sym"], "delta_deg": delta, "template_box_px": b, "apix": apix_tomo,
    "template": cfg["template"] or "SGD initial model", "template_apix": apix_tmpl,
    "template_mirror": cfg["template_mirror"], "mask_radius_px": radius,
    "tomogram_shape_zyx": list(tomo.shape),
    "stats": {"n_rotations": res.stats.n_rotations, "n_voxels": res.stats.n_voxels,
              "mean": res.stats.mean, "std": res.stats.std},
    "eman_az_alt_phi": np.round(eul, 6).tolist(),
}
with atomic_write(smk.output.angles) as tmp, open(tmp, "w") as f:
    json.dump(doc, f, indent=1)
