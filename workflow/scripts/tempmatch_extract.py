"""Snakemake adapter: score map → candidate picks (threshold, NMS, edge/volume filters) as STAR."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import numpy as np  # noqa: E402

from emflow.geometry import eman_to_matrix  # noqa: E402
from emflow.io import atomic_write, read_info_json, read_mrc, write_star  # noqa: E402
from emflow.pixel_size import check_pixel_size  # noqa: E402
from emflow.sta import picks as pk  # noqa: E402

smk = snakemake  # noqa: F821
cfg = smk.params.picks
scores, apix_tomo = read_mrc(smk.input.scores)
angle_map, _ = read_mrc(smk.input.angle_map)
doc = json.loads(open(smk.input.angles).read())
info = read_info_json(smk.input.info)
apix_unbin = check_pixel_size(info.get("apix_unbin"), source=smk.input.info, expected=smk.params.microscope["apix"],
                              kind="json", what="info json (apix_unbin)")
b = int(doc["template_box_px"])
eul = np.asarray(doc["eman_az_alt_phi"], np.float64).reshape(-1, 3)
rots = eman_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2])
searched = angle_map >= 0

st = doc["stats"]
if cfg["threshold_mode"] == "false_alarms":
    thr = pk.false_alarm_threshold(st["mean"], st["std"], st["n_voxels"] * st["n_rotations"], cfg["n_false_alarms"])
else:
    med, sig = pk.robust_background(scores, searched)
    thr = med + cfg["threshold_sigma"] * sig
min_dist = cfg["min_distance_a"] / apix_tomo if cfg["min_distance_a"] else b / 2
edge_px = b // 2 if cfg["edge_px"] is None else int(cfg["edge_px"])
found = pk.find_peaks(scores, thr, min_distance_px=min_dist, max_peaks=cfg["max_picks"], edge_px=edge_px,
                      mask=searched, best_index=np.rint(angle_map).astype(np.int64),
                      min_volume=cfg["min_volume_vox"], max_volume=cfg["max_volume_vox"])
log.info("threshold %.4g (%s): %d candidates", thr, cfg["threshold_mode"], len(found))
table = pk.picks_to_star_table(found, rots, tomo_name=smk.wildcards.tomo, shape_zyx=scores.shape,
                               apix_tomo=apix_tomo, apix_unbin=apix_unbin)
write_star(smk.output.candidates, {"particles": table})
summary = {"threshold": thr, "threshold_mode": cfg["threshold_mode"], "n_candidates": len(found),
           "min_distance_px": min_dist, "edge_px": edge_px, "template_box_px": b, "apix": apix_tomo,
           "apix_unbin": apix_unbin, "stats": st}
with atomic_write(smk.output.summary) as tmp, open(tmp, "w") as f:
    json.dump(summary, f, indent=1)
