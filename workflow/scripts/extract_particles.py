"""Snakemake adapter (gather): the chunk files of one tomogram × label → its subtilt and 3D-particle
files (image groups copied as stored) and the summary."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402
import time  # noqa: E402

from emflow.io import atomic_write  # noqa: E402
from emflow.sta.extract import gather_extraction  # noqa: E402


def main(inp, out) -> None:
    start = time.monotonic()
    with open(inp.plan) as f:
        plan = json.load(f)
    chunks = []
    for path in inp.chunk_summaries:
        with open(path) as f:
            chunks.append(json.load(f))
    if len(chunks) != len(plan["chunks"]):
        raise RuntimeError(f"{len(chunks)} chunk summaries for {len(plan['chunks'])} chunks of {inp.plan}")
    offsets = gather_extraction(list(zip(inp.subtilts, inp.chunks3d)), out.particles, out.particles3d)
    n_sub = [n for c in chunks for n in c["n_subtilts"]]
    zero = [z for c in chunks for z in c["zero_volume"]]
    coords = plan["xyz_unbin"]
    summary = {
        "tomo": plan["tomo"], "label": plan["label"], "picks_file": plan["picks_file"],
        "particles3d": out.particles3d, "particles": out.particles, "n_picks": plan["n_picks"],
        "n_particles": len(coords), "n_subtilts": int(sum(n_sub)), "n_zero_volume": int(sum(zero)),
        "excluded": plan["excluded"], "box": plan["box"], "pad2d": plan["pad2d"], "shrink": plan["shrink"],
        "apix": chunks[0]["apix"], "n_chunks": len(chunks), "chunk_subtilt_offsets": offsets,
        "particle_table": [
            {"model_id": i, "pick_index": int(plan["pick_index"][i]), "xyz_unbin": coords[i],
             "n_subtilts": int(n_sub[i]), "zero_volume": bool(zero[i])}
            for i in range(len(coords))
        ],
    }
    with atomic_write(out.summary) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    # run times and memory go to the log (results are the same on every run and machine)
    log.info("%d particles, %d subtilts from %d chunk(s) (%.1f s of chunk jobs, peak %.0f MB) joined in %.1f s",
             len(coords), summary["n_subtilts"], len(chunks), sum(c["seconds"] for c in chunks),
             max(c["peak_rss_mb"] for c in chunks), time.monotonic() - start)


main(snakemake.input, snakemake.output)  # noqa: F821
