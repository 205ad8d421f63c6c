"""Snakemake adapter: candidates → filtered picks (score, distance, mask, count) as STAR +
info json boxes_3d (method "tm") + a review PNG."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import numpy as np  # noqa: E402

from emflow.io import add_boxes, atomic_write, read_info_json, read_mrc, read_star, write_info_json, write_star  # noqa: E402
from emflow.sta import picks as pk  # noqa: E402

smk = snakemake  # noqa: F821
cfg = smk.params.picks
summary = json.loads(open(smk.input.summary).read())
tomo, apix_tomo = read_mrc(smk.input.tomogram)
scores, _ = read_mrc(smk.input.scores)
apix_unbin = summary["apix_unbin"]
blocks = read_star(smk.input.candidates)
table = next(iter(blocks.values()), {})
if "rlnCoordinateX" in table:
    cand, rots = pk.picks_from_star_table(table, shape_zyx=tomo.shape, apix_tomo=apix_tomo, apix_unbin=apix_unbin)
else:
    cand, rots = pk.Picks.empty(), np.zeros((0, 3, 3))
mask = read_mrc(smk.input.mask[0], check_apix=False)[0] if len(smk.input.mask) else None  # on the tomogram grid
min_dist = cfg["min_distance_a"] / apix_tomo if cfg["min_distance_a"] else None
kept = pk.filter_picks(cand, min_score=cfg["min_score"], min_distance_px=min_dist, mask=mask,
                       max_count=cfg["max_picks"])
log.info("%d of %d candidates kept", len(kept), len(cand))
out_table = pk.picks_to_star_table(kept, rots, tomo_name=smk.wildcards.tomo, shape_zyx=tomo.shape,
                                   apix_tomo=apix_tomo, apix_unbin=apix_unbin)
write_star(smk.output.star, {"particles": out_table})

info = read_info_json(smk.input.info)
info.setdefault("apix_unbin", apix_unbin)
b = summary["template_box_px"]
coords = pk.binned_to_unbinned(kept.xyz, tomo.shape, apix_tomo, apix_unbin)
add_boxes(info, coords, cfg["label"], boxsize=int(round(b * apix_tomo / apix_unbin)), method="tm",
          scores=kept.score, replace=True)
write_info_json(smk.output.info, info)

threshold = cfg["min_score"] if cfg["min_score"] is not None else summary["threshold"]
fig = pk.review_figure(tomo, kept, scores, threshold, radius_px=b / 2,
                       title=f"{smk.wildcards.tomo}: {len(kept)} picks ({cfg['label']})", searched=scores != 0)
with atomic_write(smk.output.review) as tmp:
    fig.savefig(tmp, dpi=90, format="png")
