"""Snakemake adapter (checkpoint): picks of one tomogram × label → the extraction plan (kept picks,
excluded picks, box sizes, particle chunks for the extract_chunk jobs)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.io import atomic_write  # noqa: E402
from emflow.io.tiltseries import tilt_series_shape  # noqa: E402
from emflow.sta.extract import check_picks, chunk_bounds, extraction_boxes, read_picks  # noqa: E402


def main(inp, out, wildcards, extract: dict, thickness_unbin_px: int) -> None:
    label = wildcards.label
    n_tilts, ny, nx = tilt_series_shape(inp.tilt_series)  # the header only
    shape_unbin = (nx, ny, int(thickness_unbin_px))
    coords, class_box = read_picks(inp.picks, label, shape_unbin)
    boxsize = extract["boxsize_unbin"] or class_box
    if not boxsize:
        raise InputError(f"no box size for label {label!r}: class_list has none", source=inp.picks,
                         fix="set extract.boxsize_unbin (unbinned px)")
    keep, excluded = check_picks(coords, shape_unbin, boxsize, source=inp.picks, skip_edge=extract["skip_edge"])
    for e in excluded:
        log.warning("skipping pick %d at %s: %s", e["index"], np.round(e["xyz_unbin"], 1).tolist(), e["reason"])
    box, pad2d = extraction_boxes(int(boxsize), extract["shrink"], extract["padtwod"])
    chunks = chunk_bounds(int(keep.sum()), extract["chunk_size"])
    plan = {
        "tomo": wildcards.tomo, "label": label, "picks_file": inp.picks, "n_picks": int(len(keep)),
        "boxsize_unbin": int(boxsize), "box": box, "pad2d": pad2d, "shrink": extract["shrink"],
        "n_tilts": int(n_tilts), "excluded": excluded,
        "pick_index": np.flatnonzero(keep).tolist(), "xyz_unbin": coords[keep].tolist(), "chunks": chunks,
    }
    log.info("%d picks of %r (%d skipped), box %d, subtilts %d px, shrink %d, %d tilts: %d chunk job(s) of <= %d",
             int(keep.sum()), label, len(excluded), box, pad2d, extract["shrink"], n_tilts, len(chunks),
             extract["chunk_size"])
    with atomic_write(out.plan) as tmp, open(tmp, "w") as f:
        json.dump(plan, f, indent=1)


main(snakemake.input, snakemake.output, snakemake.wildcards, snakemake.params.extract,  # noqa: F821
     snakemake.params.thickness_unbin_px)  # noqa: F821
