"""The extraction jobs (checkpoint extract_plan, rules extract_chunk and extract_particles): read the
job's files, call :mod:`emflow.sta.extract`, write the outputs. The workflow scripts only map the
rule's named inputs, outputs and params onto these functions."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import time
from collections.abc import Mapping, Sequence

import numpy as np

from emflow.errors import InputError
from emflow.io import atomic_write, read_info_json
from emflow.io.tiltseries import tilt_series_shape
from emflow.pipeline.log import progress_logger
from emflow.sta.extract import (
    ExtractParams,
    TiltGeometry,
    TiltSource,
    check_picks,
    chunk_bounds,
    extract_to_files,
    extraction_boxes,
    gather_extraction,
    open_tilt_series,
    particles_per_block,
    read_picks,
)
from emflow.sta.sets import set_entries, write_set

__all__ = ["plan_extraction", "extract_chunk", "gather_chunks", "build_set", "peak_rss_mb"]

log = logging.getLogger(__name__)


def plan_extraction(*, tilt_series: str, picks: str, plan_out: str, tomo: str, label: str, extract: Mapping,
                    thickness_unbin_px: int) -> None:
    """Picks of one tomogram × label → the extraction plan (kept picks, excluded picks, box sizes,
    particle chunks for the extract_chunk jobs). ``extract`` holds the ``extract`` config keys of the plan."""
    n_tilts, ny, nx = tilt_series_shape(tilt_series)  # the header only
    coords, class_box, declared = read_picks(picks, label)
    # picks may refer to the user's tomogram (declared thickness) or to ours (the config's): either is inside
    shape_unbin = (nx, ny, max(int(thickness_unbin_px), declared or 0))
    boxsize = extract["boxsize_unbin"] or class_box
    if not boxsize:
        raise InputError(f"no box size for label {label!r}: class_list has none", source=picks,
                         fix="set extract.boxsize_unbin (unbinned px)")
    keep, excluded = check_picks(coords, shape_unbin, boxsize, source=picks, skip_edge=extract["skip_edge"])
    for e in excluded:
        log.warning("skipping pick %d at %s: %s", e["index"], np.round(e["xyz_unbin"], 1).tolist(), e["reason"])
    box, pad2d = extraction_boxes(int(boxsize), extract["shrink"], extract["padtwod"])
    chunks = chunk_bounds(int(keep.sum()), extract["chunk_size"])
    plan = {
        "tomo": tomo, "label": label, "picks_file": picks, "n_picks": int(len(keep)),
        "boxsize_unbin": int(boxsize), "box": box, "pad2d": pad2d, "shrink": extract["shrink"],
        "n_tilts": int(n_tilts), "excluded": excluded,
        "pick_index": np.flatnonzero(keep).tolist(), "xyz_unbin": coords[keep].tolist(), "chunks": chunks,
    }
    log.info("%d picks of %r (%d skipped), box %d, subtilts %d px, shrink %d, %d tilts: %d chunk job(s) of <= %d",
             int(keep.sum()), label, len(excluded), box, pad2d, extract["shrink"], n_tilts, len(chunks),
             extract["chunk_size"])
    with atomic_write(plan_out) as tmp, open(tmp, "w") as f:
        json.dump(plan, f, indent=1)


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


def extract_chunk(*, tilt_series: str, info_path: str, plan_path: str, chunk: str, particles_out: str,
                  particles3d_out: str, summary_out: str, extract: Mapping, microscope: Mapping, names: Mapping,
                  threads: int, mem_mb: float) -> None:
    """Tilt series + info json + plan → subtilts and 3D particles of particle chunk ``chunk``, streamed
    to disk in blocks sized by the job's memory ``mem_mb``; ``names`` holds the final file names
    (``particles``, ``particles3d``) the headers point to."""
    start = time.monotonic()
    with open(plan_path) as f:
        plan = json.load(f)
    a, b = plan["chunks"][int(chunk)]
    coords = np.asarray(plan["xyz_unbin"], dtype=np.float64).reshape(-1, 3)[a:b]
    info = read_info_json(info_path)
    geom = TiltGeometry.from_info(info, apix=microscope["apix"], voltage_kv=microscope["voltage_kv"],
                                  cs_mm=microscope["cs_mm"], ampcont=microscope["ampcont"], source=info_path)
    params = ExtractParams(box=plan["box"], pad2d=plan["pad2d"], shrink=extract["shrink"],
                           maxtilt_deg=extract["maxtilt_deg"], phase_flip=extract["phase_flip"],
                           mask_subtilts=extract["mask_subtilts"], min_tilt_fraction=extract["min_tilt_fraction"])
    if params.phase_flip and geom.defocus_um is None:
        log.warning("the info json has no defocus: subtilts are not phase flipped")
    source = TiltSource(open_tilt_series(tilt_series, apix=geom.apix_unbin), extract["shrink"])
    block = particles_per_block(mem_mb, geom.n_tilts, params.pad2d, params.box)
    log.info("chunk %s: particles %d..%d of %d, blocks of %d particles (mem_mb %g)", chunk, a, b - 1,
             len(plan["xyz_unbin"]), block, mem_mb)
    res = extract_to_files(source, geom, coords, params, particles_path=particles_out,
                           particles3d_path=particles3d_out, file_threed=names["particles3d"],
                           file_twod=names["particles"], first_model_id=a, block=block,
                           bits=extract["compress_bits"], progress=progress_logger(log, "particles", 1.0),
                           workers=threads)
    for i in np.flatnonzero(res["zero_volume"]):
        log.warning("particle %d has %d usable subtilts (< %.0f%% of %d): zero volume", a + i,
                    res["n_subtilts"][i], 100 * params.min_tilt_fraction, geom.n_tilts)
    seconds = time.monotonic() - start
    summary = {"chunk": chunk, "first": a, "stop": b, "n_subtilts": res["n_subtilts"].tolist(),
               "zero_volume": res["zero_volume"].tolist(), "apix": res["apix"], "seconds": round(seconds, 2),
               "peak_rss_mb": round(peak_rss_mb(), 1)}
    with atomic_write(summary_out) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    log.info("%d particles, %d subtilts in %.1f s (%.2f particles/s), peak RSS %.0f MB", b - a,
             res["n_subtilts_total"], seconds, (b - a) / max(seconds, 1e-9), summary["peak_rss_mb"])


def gather_chunks(*, plan_path: str, chunk_summaries: Sequence[str], subtilts: Sequence[str],
                  chunks3d: Sequence[str], particles_out: str, particles3d_out: str, summary_out: str,
                  remove_chunks: bool = True) -> None:
    """The chunk files of one tomogram × label → its subtilt and 3D-particle files (image groups copied
    as stored) and the summary (results only; run times and memory go to the log).

    With ``remove_chunks`` (the workflow's case) the chunk files are deleted once all three outputs
    are complete: they are rule ``extract_chunk``'s ``temp()`` outputs, but Snakemake 9 deletes temp
    files only when the job that used them finishes while no checkpoint is pending
    (``snakemake/dag.py``, ``DAG.finish``: "While there are still checkpoint jobs, we cannot safely
    delete temp files"), and in a full run the template-matching set's ``extract_plan`` and the
    refinement's checkpoints are pending, so every chunk stayed until the run ended (7.1 GB in the
    2048² × 1,100-particle scale run). A run killed before this point still has every chunk; one
    killed after it has the complete outputs (and Snakemake, seeing temp inputs gone, re-makes them
    only if this job must run again).
    """
    start = time.monotonic()
    with open(plan_path) as f:
        plan = json.load(f)
    chunks = []
    for path in chunk_summaries:
        with open(path) as f:
            chunks.append(json.load(f))
    if len(chunks) != len(plan["chunks"]):
        raise RuntimeError(f"{len(chunks)} chunk summaries for {len(plan['chunks'])} chunks of {plan_path}")
    offsets = gather_extraction(list(zip(subtilts, chunks3d)), particles_out, particles3d_out)
    n_sub = [n for c in chunks for n in c["n_subtilts"]]
    zero = [z for c in chunks for z in c["zero_volume"]]
    coords = plan["xyz_unbin"]
    summary = {
        "tomo": plan["tomo"], "label": plan["label"], "picks_file": plan["picks_file"],
        "particles3d": particles3d_out, "particles": particles_out, "n_picks": plan["n_picks"],
        "n_particles": len(coords), "n_subtilts": int(sum(n_sub)), "n_zero_volume": int(sum(zero)),
        "excluded": plan["excluded"], "box": plan["box"], "pad2d": plan["pad2d"], "shrink": plan["shrink"],
        "apix": chunks[0]["apix"], "n_chunks": len(chunks), "chunk_subtilt_offsets": offsets,
        "particle_table": [
            {"model_id": i, "pick_index": int(plan["pick_index"][i]), "xyz_unbin": coords[i],
             "n_subtilts": int(n_sub[i]), "zero_volume": bool(zero[i])}
            for i in range(len(coords))
        ],
    }
    with atomic_write(summary_out) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    freed = 0
    if remove_chunks:  # only now: every output above is complete
        for path in (*subtilts, *chunks3d, *chunk_summaries):
            with contextlib.suppress(FileNotFoundError):
                freed += os.path.getsize(path)
                os.remove(path)
        for folder in {os.path.dirname(p) for p in (*subtilts, *chunks3d, *chunk_summaries)}:
            with contextlib.suppress(OSError):  # the chunk folder, when nothing else is in it
                os.rmdir(folder)
        log.info("%d chunk files removed (%.0f MB freed)", 3 * len(chunks), freed / 1e6)
    # run times and memory go to the log (results are the same on every run and machine)
    log.info("%d particles, %d subtilts from %d chunk(s) (%.1f s of chunk jobs, peak %.0f MB) joined in %.1f s",
             len(coords), summary["n_subtilts"], len(chunks), sum(c["seconds"] for c in chunks),
             max(c["peak_rss_mb"] for c in chunks), time.monotonic() - start)


def build_set(particles3d: Sequence[str], summaries: Sequence[str], out_lst: str, spliteo: bool) -> None:
    """Per-tomogram 3D particle files of one label (and their extraction summaries) → the set
    ``sets/<label>.lst`` (e2spt_buildsets), even/odd classes when ``spliteo``."""
    groups = []
    coords: list = []
    for path, summary_path in zip(particles3d, summaries):
        with open(summary_path) as f:
            summary = json.load(f)
        coords = [p["xyz_unbin"] for p in summary["particle_table"]]
        log.info("%s: %d particles", path, len(coords))
        groups.append((path, coords))
    if not any(coords for _, coords in groups):
        # An empty set is bad input for averaging/refinement; it is only logged here because the tiny
        # test config (.test/config.yaml) yields no template-matching picks (see docs/report.md).
        log.error("EMPTY SET %s: no particles in any tomogram (%d searched; see the 'excluded' lists in %s). "
                  "Fix: check the picks of this label (picks.min_score / threshold, extract.skip_edge, "
                  "extract.boxsize_unbin)", out_lst, len(groups), ", ".join(map(str, summaries)))
    entries = set_entries(groups, spliteo=spliteo)
    write_set(out_lst, entries)
    n_odd = sum(e.meta.get("class", 0) for e in entries)
    log.info("%s: %d particles (%d class 1, %d class 0)", out_lst, len(entries), n_odd, len(entries) - n_odd)
