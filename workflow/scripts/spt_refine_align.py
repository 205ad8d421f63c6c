"""Snakemake adapter: one chunk of particles, one iteration (p: align3d; t/r/d: subtilt refinement) -> npz."""

from emflow.pipeline.log import progress_logger, setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import numpy as np  # noqa: E402

from emflow.geometry import angle_between  # noqa: E402
from emflow.io import atomic_write  # noqa: E402
from emflow.sta.spt_files import ImageLoader, read_map, read_state, read_tables  # noqa: E402
from emflow.sta.spt_refine import AlignParams, align_particles_p, chunk_ranges  # noqa: E402
from emflow.sta.subtilt_refine import refine_subtilts  # noqa: E402

smk = snakemake  # noqa: F821
inp, out, spt = smk.input, smk.output, smk.params.spt  # this iteration's keys (spt_refine.iteration_params)
it, chunk = int(smk.wildcards.it), int(smk.wildcards.chunk)
kind = spt["kind"]
table = read_tables(inp.info3d, inp.info2d)
state = read_state(table, inp.ali3d, inp.ali2d)
even, apix = read_map(inp.even)
odd, _ = read_map(inp.odd)
refs = [even, odd] if spt["goldstandard"] else [0.5 * (even + odd)] * 2
with open(inp.res) as f:
    res_a = float(json.load(f)["maxres_a"])
a, b = chunk_ranges(table.n3d, spt["chunk_size"])[chunk]
parts = np.arange(a, b)
loader = ImageLoader(table, even.shape[0])
prog = progress_logger(log, f"iteration {it} ({kind}) particles {a}-{b - 1}", 1.0)
minres = spt["minres"] or None
if kind == "p":
    mode = spt["mode"]
    mode_keys = {"maxang_deg": spt["maxang"]} if mode == "local" else {"delta_deg": spt["delta_deg"], "npos": spt["npos"]}
    new = align_particles_p(table, state, parts, loader, refs, apix,
                            AlignParams(maxres_a=res_a, minres_a=minres, mode=mode, sym=spt["sym"],
                                        maxshift_px=spt["maxshift"], **mode_keys), progress=prog)
    log.info("p (%s) at %.1f Å: mean score %.4f", mode, res_a, float(new.score3d[parts].mean()))
else:
    # neighbours may lie outside the chunk: the loader serves any subtilt of the run
    new = refine_subtilts(table, state, table.rows_of(parts), loader, refs, apix, kind, res_a, minres,
                          smooth=spt["smooth"], smooth_n=spt["smoothN"], maxshift_px=spt["maxshift"],
                          microscope=smk.params.microscope, progress=prog)
    r = table.rows_of(parts)
    dds = np.hypot(*(new.dshift[r] - state.dshift[r]).T)
    drot = angle_between(state.drot[r], new.drot[r])
    log.info("%s at %.1f Å: shift change rms %.2f px, rotation change median %.2f°, |ddefocus| median %.3f µm",
             kind, res_a, float(np.sqrt(np.mean(dds ** 2))), float(np.median(drot)),
             float(np.median(np.abs(new.ddef_um[r]))))
rows = table.rows_of(parts)
with atomic_write(out.chunk) as tmp, open(tmp, "wb") as f:
    np.savez(f, particles=parts, rows=rows, rot=new.rot[parts], shift=new.shift[parts], score3d=new.score3d[parts],
             drot=new.drot[rows], dshift=new.dshift[rows], score2d=new.score2d[rows], ddef_um=new.ddef_um[rows])
