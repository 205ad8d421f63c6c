"""Snakemake adapter: binned tomogram + template → FLCF score map, best-orientation map, angle list."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import numpy as np  # noqa: E402

from emflow.sta import tempmatch as tm  # noqa: E402
from emflow.errors import InputError  # noqa: E402
from emflow.geometry import tilt_matrix  # noqa: E402
from emflow.io import atomic_write, read_info_json, read_mrc, read_tlt, write_mrc  # noqa: E402

smk = snakemake  # noqa: F821
cfg, mic = smk.params.tm, smk.params.microscope

tomo, apix_tomo = read_mrc(smk.input.tomogram)
template, apix_tmpl = read_mrc(smk.input.template)
info = read_info_json(smk.input.info)
log.info("tomogram %s at %.3f Å/px; template %s at %.3f Å/px", tomo.shape, apix_tomo, template.shape, apix_tmpl)

box = cfg["template_box_px"]
template = tm.prepare_template(template, apix_tmpl, apix_tomo, box=box)
b = template.shape[0]
if min(tomo.shape) < b:
    raise InputError(f"tomogram {tomo.shape} is smaller than the template box {b} px", source=smk.input.tomogram,
                     fix="use a smaller tempmatch.template_box_px or a less binned tomogram")
if cfg["tomogram_contrast"] == "dark":
    template = -template  # raw cryo-ET: protein is dark; the template map is positive density

# Tilt geometry: EMAN tlt_params when the info json has them, else the .tlt (axis along y).
if info.get("tlt_params"):
    p = np.array([r[:5] for r in info["tlt_params"]], np.float64)
    tilts, slice_rots = p[:, 3], tilt_matrix(p[:, 3], p[:, 2], p[:, 4])
else:
    tilts = read_tlt(smk.input.tlt)
    slice_rots = tilt_matrix(tilts)
defocus = info.get("defocus")
if cfg["ctf_weighting"] != "none" and not defocus:
    raise InputError("tempmatch.ctf_weighting needs per-tilt defocus, but the info json has no 'defocus'",
                     source=smk.input.info, fix="estimate the CTF first, or set tempmatch.ctf_weighting: none")
dose = cfg["dose_per_tilt_e_a2"]
exposure = tm.dose_symmetric_exposure(tilts, dose) if dose else None
radial = tm.tilt_radial_weights(
    b, apix_tomo, len(tilts), ctf_mode=cfg["ctf_weighting"], defocus_um=defocus,
    voltage_kv=float(info.get("voltage", mic["voltage_kv"])), cs_mm=float(info.get("cs", mic["cs_mm"])),
    ampcont=mic["ampcont"], exposure_e_a2=exposure)
weight = tm.tilt_weight(b, slice_rots, radial) if cfg["wedge"] else np.ones((b, b, b // 2 + 1), np.float32)
if cfg["ctf_weighting"] != "none" and not cfg["wedge"]:
    weight *= radial.mean(axis=0)[np.minimum(np.rint(tm.radial_frequency((b,) * 3) * b).astype(int),
                                              radial.shape[1] - 1)]
edge = 2.0 / b
band = tm.bandpass(tm.radial_frequency((b,) * 3), apix_tomo, cfg["lowpass_res_a"], cfg["highpass_res_a"], edge)
weight = (weight * band).astype(np.float32)


def tomo_filter(freq):
    """Band-pass of the tomogram (same edges as the template's)."""
    return tm.bandpass(freq, apix_tomo, cfg["lowpass_res_a"], cfg["highpass_res_a"], edge)


radius = cfg["mask_radius_a"] / apix_tomo if cfg["mask_radius_a"] else None
delta = tm.search_step_deg(cfg["delta_deg"], apix=apix_tomo, template_box=b, lowpass_res_a=cfg["lowpass_res_a"],
                           particle_diameter_a=cfg.get("particle_diameter_a"), mask_radius_px=radius)
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
    "tomogram_shape_zyx": list(tomo.shape),
    "stats": {"n_rotations": res.stats.n_rotations, "n_voxels": res.stats.n_voxels,
              "mean": res.stats.mean, "std": res.stats.std},
    "eman_az_alt_phi": np.round(eul, 6).tolist(),
}
with atomic_write(smk.output.angles) as tmp, open(tmp, "w") as f:
    json.dump(doc, f, indent=1)
