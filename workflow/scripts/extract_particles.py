"""Snakemake adapter: tilt series + info json + picks → subtilts, 3D particles and a summary (one tomogram × label)."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.sta.extract import (  # noqa: E402
    ExtractParams, TiltGeometry, check_picks, extract_particles, extraction_boxes, particle_headers,
    prepare_tilt_series, read_picks, subtilt_headers,
)
from emflow.io import atomic_write, read_hdf_stack, read_info_json, read_mrc, tiltseries, write_hdf_stack  # noqa: E402


def read_tilt_series(path: str) -> np.ndarray:
    """Tilt series (ntilt, ny, nx) from an MRC stack or an EMAN2 HDF (one 3D image or many 2D)."""
    if path.endswith(".hdf"):
        images, _ = read_hdf_stack(path)
        return images[0] if images.ndim == 4 and images.shape[0] == 1 else images
    return read_mrc(path)[0]


def main(inp, out, wildcards, extract: dict, microscope: dict, thickness_unbin_px: int, threads: int) -> None:
    start = time.monotonic()
    label = wildcards.label
    stack = tiltseries.read_tilt_series(inp.tilt_series, mmap=False)[0]  # MRC or EMAN2 HDF, by content
    info = read_info_json(inp.info)
    geom = TiltGeometry.from_info(info, apix=microscope["apix"], voltage_kv=microscope["voltage_kv"],
                                  cs_mm=microscope["cs_mm"], ampcont=microscope["ampcont"], source=inp.info)
    shape_unbin = (stack.shape[2], stack.shape[1], int(thickness_unbin_px))
    coords, class_box = read_picks(inp.picks, label, shape_unbin)
    boxsize = extract["boxsize_unbin"] or class_box
    if not boxsize:
        raise InputError(f"no box size for label {label!r}: class_list has none", source=inp.picks,
                         fix="set extract.boxsize_unbin (unbinned px)")
    keep, excluded = check_picks(coords, shape_unbin, boxsize, source=inp.picks, skip_edge=extract["skip_edge"])
    for e in excluded:
        log.warning("skipping pick %d at %s: %s", e["index"], np.round(e["xyz_unbin"], 1).tolist(), e["reason"])
    picked = np.flatnonzero(keep)
    coords = coords[keep]
    box, pad2d = extraction_boxes(int(boxsize), extract["shrink"], extract["padtwod"])
    log.info("%d picks of %r (%d skipped), box %d, subtilts %d px, shrink %d, %d tilts",
             len(coords), label, len(excluded), box, pad2d, extract["shrink"], geom.n_tilts)
    params = ExtractParams(box=box, pad2d=pad2d, shrink=extract["shrink"], maxtilt_deg=extract["maxtilt_deg"],
                           phase_flip=extract["phase_flip"], mask_subtilts=extract["mask_subtilts"],
                           min_tilt_fraction=extract["min_tilt_fraction"])
    if params.phase_flip and geom.defocus_um is None:
        log.warning("the info json has no defocus: subtilts are not phase flipped")
    res = extract_particles(prepare_tilt_series(stack, extract["shrink"]), geom, coords, params,
                            progress=progress_logger(log, "particles", 1.0), workers=threads)
    for i in np.flatnonzero(res.zero_volume):
        log.warning("particle %d has %d usable subtilts (< %.0f%% of %d): zero volume", i, res.n_subtilts[i],
                    100 * params.min_tilt_fraction, geom.n_tilts)
    bits = extract["compress_bits"]
    write_hdf_stack(out.particles, res.subtilts, subtilt_headers(res, coords, geom, file_threed=out.particles3d),
                    apix=res.apix, bits=bits)
    write_hdf_stack(out.particles3d, res.volumes, particle_headers(res, coords, file_twod=out.particles),
                    apix=res.apix, bits=bits)
    seconds = time.monotonic() - start
    summary = {
        "tomo": wildcards.tomo, "label": label, "picks_file": inp.picks, "particles3d": out.particles3d,
        "particles": out.particles, "n_picks": int(len(keep)), "n_particles": int(len(coords)),
        "n_subtilts": int(res.subtilts.shape[0]), "n_zero_volume": int(res.zero_volume.sum()),
        "excluded": excluded, "box": box, "pad2d": pad2d, "shrink": extract["shrink"], "apix": res.apix,
        "particle_table": [
            {"model_id": i, "pick_index": int(picked[i]), "xyz_unbin": coords[i].tolist(),
             "n_subtilts": int(res.n_subtilts[i]), "zero_volume": bool(res.zero_volume[i])}
            for i in range(len(coords))
        ],
    }
    with atomic_write(out.summary) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    log.info("%d particles, %d subtilts in %.1f s (%.2f particles/s)", len(coords), res.subtilts.shape[0],
             seconds, len(coords) / max(seconds, 1e-9))


main(snakemake.input, snakemake.output, snakemake.wildcards, snakemake.params.extract,  # noqa: F821
     snakemake.params.microscope, snakemake.params.thickness_unbin_px, snakemake.threads)  # noqa: F821
