"""Snakemake adapter: tilt series + info json + plan → subtilts and 3D particles of one particle chunk,
streamed to disk in blocks sized by the job's memory (resources.mem_mb)."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from emflow.io import atomic_write, read_info_json  # noqa: E402
from emflow.sta.extract import (  # noqa: E402
    ExtractParams,
    TiltGeometry,
    TiltSource,
    extract_to_files,
    open_tilt_series,
    particles_per_block,
)


def peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM; ``ru_maxrss`` would include the parent's over fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(inp, out, wildcards, extract: dict, microscope: dict, names: dict, threads: int, mem_mb: float) -> None:
    start = time.monotonic()
    with open(inp.plan) as f:
        plan = json.load(f)
    a, b = plan["chunks"][int(wildcards.chunk)]
    coords = np.asarray(plan["xyz_unbin"], dtype=np.float64).reshape(-1, 3)[a:b]
    info = read_info_json(inp.info)
    geom = TiltGeometry.from_info(info, apix=microscope["apix"], voltage_kv=microscope["voltage_kv"],
                                  cs_mm=microscope["cs_mm"], ampcont=microscope["ampcont"], source=inp.info)
    params = ExtractParams(box=plan["box"], pad2d=plan["pad2d"], shrink=extract["shrink"],
                           maxtilt_deg=extract["maxtilt_deg"], phase_flip=extract["phase_flip"],
                           mask_subtilts=extract["mask_subtilts"], min_tilt_fraction=extract["min_tilt_fraction"])
    if params.phase_flip and geom.defocus_um is None:
        log.warning("the info json has no defocus: subtilts are not phase flipped")
    source = TiltSource(open_tilt_series(inp.tilt_series, apix=geom.apix_unbin), extract["shrink"])
    block = particles_per_block(mem_mb, geom.n_tilts, params.pad2d, params.box)
    log.info("chunk %s: particles %d..%d of %d, blocks of %d particles (mem_mb %g)", wildcards.chunk, a, b - 1,
             len(plan["xyz_unbin"]), block, mem_mb)
    res = extract_to_files(source, geom, coords, params, particles_path=out.particles,
                           particles3d_path=out.particles3d, file_threed=names["particles3d"],
                           file_twod=names["particles"], first_model_id=a, block=block,
                           bits=extract["compress_bits"], progress=progress_logger(log, "particles", 1.0),
                           workers=threads)
    for i in np.flatnonzero(res["zero_volume"]):
        log.warning("particle %d has %d usable subtilts (< %.0f%% of %d): zero volume", a + i,
                    res["n_subtilts"][i], 100 * params.min_tilt_fraction, geom.n_tilts)
    seconds = time.monotonic() - start
    summary = {"chunk": wildcards.chunk, "first": a, "stop": b, "n_subtilts": res["n_subtilts"].tolist(),
               "zero_volume": res["zero_volume"].tolist(), "apix": res["apix"], "seconds": round(seconds, 2),
               "peak_rss_mb": round(peak_rss_mb(), 1)}
    with atomic_write(out.summary) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    log.info("%d particles, %d subtilts in %.1f s (%.2f particles/s), peak RSS %.0f MB", b - a,
             res["n_subtilts_total"], seconds, (b - a) / max(seconds, 1e-9), summary["peak_rss_mb"])


main(snakemake.input, snakemake.output, snakemake.wildcards, snakemake.params.extract,  # noqa: F821
     snakemake.params.microscope, snakemake.params.final, snakemake.threads, snakemake.resources.mem_mb)  # noqa: F821
