"""Snakemake adapter: chunk results of one iteration -> aliptcls3d_XX.lst / aliptcls2d_XX.lst (input order)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.sta.spt_files import read_state, read_tables, write_state  # noqa: E402

inp, out = snakemake.input, snakemake.output  # noqa: F821
table = read_tables(inp.info3d, inp.info2d)
state = read_state(table, inp.ali3d, inp.ali2d)
for path in inp.chunks:
    with np.load(path) as d:
        p, r = d["particles"], d["rows"]
        state.rot[p], state.shift[p], state.score3d[p] = d["rot"], d["shift"], d["score3d"]
        state.drot[r], state.dshift[r], state.score2d[r], state.ddef_um[r] = d["drot"], d["dshift"], d["score2d"], d["ddef_um"]
write_state(table, state, out.ali3d, out.ali2d)
log.info("%d chunks, mean particle score %.4f", len(inp.chunks), float(state.score3d.mean()))
