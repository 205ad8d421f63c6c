"""The template-matching jobs (rules tempmatch_search, tempmatch_extract, tempmatch_filter): read the
job's files, call the kernels of :mod:`emflow.sta.tempmatch`, :mod:`emflow.sta.tempmatch_template` and
:mod:`emflow.sta.picks`, write the outputs (atomically). The workflow scripts only map the rule's
named inputs, outputs and params onto these functions."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from emflow.errors import InputError
from emflow.geometry import eman_to_matrix, tilt_matrix
from emflow.io import (
    add_boxes,
    atomic_write,
    read_info_json,
    read_mrc,
    read_star,
    read_tlt,
    write_info_json,
    write_mrc,
    write_star,
)
from emflow.pipeline.log import progress_logger
from emflow.pixel_size import check_pixel_size
from emflow.resample import read_user_map
from emflow.sta import picks as pk
from emflow.sta import tempmatch as tm
from emflow.sta import tempmatch_template as tt
from emflow.sta.importer import imod_to_tlt_params

__all__ = ["search_tomogram", "extract_candidates", "filter_candidates"]

log = logging.getLogger(__name__)


def _read_template(template: str, template_mask: Sequence[str], cfg: Mapping, apix_override: Mapping):
    """Template (+ optional mask) and its pixel size; the user's map from its own header."""
    if cfg["template"]:  # the user's map: pixel size from its own header (a 1.0/0 default is refused)
        tmpl, apix_tmpl = read_user_map(template, "tempmatch.template", apix_override["template"])
    else:  # the SGD initial model (emflow wrote its pixel size)
        tmpl, apix_tmpl = read_mrc(template)
    mask = None
    if cfg["template_mask"]:
        if not cfg["template"]:
            raise InputError("tempmatch.template_mask is set but tempmatch.template is not",
                             source="tempmatch.template_mask",
                             fix="give the template the mask belongs to (tempmatch.template), "
                                 "or set template_mask: null")
        mask, apix_mask = read_user_map(template_mask[0], "tempmatch.template_mask", apix_override["template_mask"])
        if mask.shape != tmpl.shape or abs(apix_mask - apix_tmpl) > 0.01 * apix_tmpl:
            raise InputError(f"the template mask ({mask.shape}, {apix_mask:.3f} Å/px) is not on the template's grid "
                             f"({tmpl.shape}, {apix_tmpl:.3f} Å/px)", source=template_mask[0],
                             fix="make the mask on the template's grid (same box and pixel size)")
    return tmpl, apix_tmpl, mask


def search_tomogram(*, tomogram: str, template: str, template_mask: Sequence[str], info_path: str, tlt: str,
                    scores_out: str, angle_map_out: str, angles_out: str, cfg: Mapping, microscope: Mapping,
                    apix_override: Mapping) -> None:
    """Binned tomogram + template → FLCF score map, best-orientation map and the angle list (json).

    ``cfg`` is the ``tempmatch`` config section, ``microscope`` the ``microscope`` section.
    """
    tomo, apix_tomo = read_mrc(tomogram)
    template_map, apix_tmpl, mask = _read_template(template, template_mask, cfg, apix_override)
    info = read_info_json(info_path)
    log.info("tomogram %s at %.3f Å/px; template %s at %.3f Å/px%s", tomo.shape, apix_tomo, template_map.shape,
             apix_tmpl, " with a mask" if mask is not None else "")
    grid = tt.prepare_template(template_map, apix_tmpl, apix_tomo, box=cfg["template_box_px"], mask=mask,
                               template_contrast=cfg["template_contrast"], tomogram_contrast=cfg["tomogram_contrast"],
                               mirror=cfg["template_mirror"])
    template_map, b = grid.template, grid.box
    if min(tomo.shape) < b:
        raise InputError(f"tomogram {tomo.shape} is smaller than the template box {b} px", source=tomogram,
                         fix="use a smaller tempmatch.template_box_px or a less binned tomogram")

    # Tilt geometry: EMAN tlt_params when the info json has them, else the .tlt in IMOD's convention
    # (axis along y), converted in the one IMOD -> EMAN place
    p = (np.array([r[:5] for r in info["tlt_params"]], np.float64) if info.get("tlt_params")
         else imod_to_tlt_params(read_tlt(tlt)))
    tilts, slice_rots = p[:, 3], tilt_matrix(p[:, 3], p[:, 2], p[:, 4])
    defocus = info.get("defocus")
    if cfg["ctf_weighting"] != "none" and not defocus:
        raise InputError("tempmatch.ctf_weighting needs per-tilt defocus, but the info json has no 'defocus'",
                         source=info_path, fix="estimate the CTF first, or set tempmatch.ctf_weighting: none")
    dose = cfg["dose_per_tilt_e_a2"]
    weight, tomo_filter = tt.template_weight(
        b, apix_tomo, tilts, slice_rots, wedge=cfg["wedge"], ctf_weighting=cfg["ctf_weighting"], defocus_um=defocus,
        voltage_kv=float(info.get("voltage", microscope["voltage_kv"])),
        cs_mm=float(info.get("cs", microscope["cs_mm"])), ampcont=microscope["ampcont"], dose_per_tilt_e_a2=dose,
        lowpass_res_a=cfg["lowpass_res_a"], highpass_res_a=cfg["highpass_res_a"])

    if cfg["mask_radius_a"]:
        radius = cfg["mask_radius_a"] / apix_tomo
    else:  # the sphere enclosing the user's mask, else match_template's default (box/2 − 2)
        radius = tt.mask_radius_px(grid.mask) if grid.mask is not None else None
    delta = tm.search_step_deg(cfg["delta_deg"], apix=apix_tomo, template_box=b, lowpass_res_a=cfg["lowpass_res_a"],
                               particle_diameter_a=cfg["particle_diameter_a"], mask_radius_px=radius)
    eul, rots = tm.search_orientations(cfg["sym"], delta)
    log.info("%d orientations (sym %s, delta %g° from tempmatch.delta_deg=%s), template box %d, %d tilts, ctf %s, "
             "dose %s", len(rots), cfg["sym"], delta, cfg["delta_deg"], b, len(tilts), cfg["ctf_weighting"], dose)
    res = tm.match_template(
        tomo, template_map, rots, weight=weight, mask_radius_px=radius, filter_fn=tomo_filter,
        local_normalisation=cfg["local_normalisation"], clamp_sigma=cfg["clamp_sigma"], tile_size=cfg["tile_size_px"],
        progress=progress_logger(log, "orientations x tiles", 1.0))
    log.info("null statistics: %s", res.stats)

    write_mrc(scores_out, res.scores, apix_tomo)
    write_mrc(angle_map_out, res.best_index.astype(np.float32), apix_tomo)
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
    with atomic_write(angles_out) as tmp, open(tmp, "w") as f:
        json.dump(doc, f, indent=1)


def extract_candidates(*, scores_path: str, angle_map_path: str, angles_path: str, info_path: str, tomo_name: str,
                       candidates_out: str, summary_out: str, cfg: Mapping, microscope: Mapping) -> None:
    """Score map → candidate picks (threshold, NMS, edge/volume filters) as STAR, plus a summary json.

    ``cfg`` is the ``picks`` config section.
    """
    scores, apix_tomo = read_mrc(scores_path)
    angle_map, _ = read_mrc(angle_map_path)
    with open(angles_path) as f:
        doc = json.loads(f.read())
    info = read_info_json(info_path)
    apix_unbin = check_pixel_size(info.get("apix_unbin"), source=info_path, expected=microscope["apix"],
                                  kind="json", what="info json (apix_unbin)")
    b = int(doc["template_box_px"])
    eul = np.asarray(doc["eman_az_alt_phi"], np.float64).reshape(-1, 3)
    rots = eman_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2])
    searched = angle_map >= 0

    st = doc["stats"]
    if cfg["threshold_mode"] == "false_alarms":
        thr = pk.false_alarm_threshold(st["mean"], st["std"], st["n_voxels"] * st["n_rotations"],
                                       cfg["n_false_alarms"])
    else:
        med, sig = pk.robust_background(scores, searched)
        thr = med + cfg["threshold_sigma"] * sig
    min_dist = cfg["min_distance_a"] / apix_tomo if cfg["min_distance_a"] else b / 2
    edge_px = b // 2 if cfg["edge_px"] is None else int(cfg["edge_px"])
    found = pk.find_peaks(scores, thr, min_distance_px=min_dist, max_peaks=cfg["max_picks"], edge_px=edge_px,
                          mask=searched, best_index=np.rint(angle_map).astype(np.int64),
                          min_volume=cfg["min_volume_vox"], max_volume=cfg["max_volume_vox"])
    log.info("threshold %.4g (%s): %d candidates", thr, cfg["threshold_mode"], len(found))
    table = pk.picks_to_star_table(found, rots, tomo_name=tomo_name, shape_zyx=scores.shape,
                                   apix_tomo=apix_tomo, apix_unbin=apix_unbin)
    write_star(candidates_out, {"particles": table})
    summary = {"threshold": thr, "threshold_mode": cfg["threshold_mode"], "n_candidates": len(found),
               "min_distance_px": min_dist, "edge_px": edge_px, "template_box_px": b, "apix": apix_tomo,
               "apix_unbin": apix_unbin, "stats": st}
    with atomic_write(summary_out) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)


def filter_candidates(*, candidates_path: str, summary_path: str, tomogram: str, scores_path: str,
                      mask: Sequence[str], info_path: str, tomo_name: str, star_out: str, info_out: str,
                      review_out: str, cfg: Mapping) -> None:
    """Candidates → filtered picks (score, distance, mask, count) as STAR, info json ``boxes_3d``
    (method "tm") and a review PNG. ``mask`` holds 0 or 1 path (a mask on the tomogram grid)."""
    with open(summary_path) as f:
        summary = json.loads(f.read())
    tomo, apix_tomo = read_mrc(tomogram)
    scores, _ = read_mrc(scores_path)
    apix_unbin = summary["apix_unbin"]
    blocks = read_star(candidates_path)
    table = next(iter(blocks.values()), {})
    if "rlnCoordinateX" in table:
        cand, rots = pk.picks_from_star_table(table, shape_zyx=tomo.shape, apix_tomo=apix_tomo, apix_unbin=apix_unbin)
    else:
        cand, rots = pk.Picks.empty(), np.zeros((0, 3, 3))
    mask_vol = read_mrc(mask[0], check_apix=False)[0] if len(mask) else None  # on the tomogram grid
    min_dist = cfg["min_distance_a"] / apix_tomo if cfg["min_distance_a"] else None
    kept = pk.filter_picks(cand, min_score=cfg["min_score"], min_distance_px=min_dist, mask=mask_vol,
                           max_count=cfg["max_picks"])
    log.info("%d of %d candidates kept", len(kept), len(cand))
    out_table = pk.picks_to_star_table(kept, rots, tomo_name=tomo_name, shape_zyx=tomo.shape,
                                       apix_tomo=apix_tomo, apix_unbin=apix_unbin)
    write_star(star_out, {"particles": out_table})

    info = read_info_json(info_path)
    info.setdefault("apix_unbin", apix_unbin)
    b = summary["template_box_px"]
    coords = pk.binned_to_unbinned(kept.xyz, tomo.shape, apix_tomo, apix_unbin)
    add_boxes(info, coords, cfg["label"], boxsize=int(round(b * apix_tomo / apix_unbin)), method="tm",
              scores=kept.score, replace=True)
    write_info_json(info_out, info)

    threshold = cfg["min_score"] if cfg["min_score"] is not None else summary["threshold"]
    fig = pk.review_figure(tomo, kept, scores, threshold, radius_px=b / 2,
                           title=f"{tomo_name}: {len(kept)} picks ({cfg['label']})", searched=scores != 0)
    with atomic_write(review_out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
