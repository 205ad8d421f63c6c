"""Snakemake adapter: partial even/odd reconstruction of one particle chunk (keep + score weights) -> npz."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import numpy as np  # noqa: E402

from emflow.io import atomic_write  # noqa: E402
from emflow.sta.spt_files import ImageLoader, read_map, read_state, read_tables  # noqa: E402
from emflow.sta.spt_refine import chunk_ranges, parse_keep, reconstruct_halves, select_subtilts  # noqa: E402

smk = snakemake  # noqa: F821
inp, out, spt = smk.input, smk.output, smk.params.spt
table = read_tables(inp.info3d, inp.info2d)
state = read_state(table, inp.ali3d, inp.ali2d)
ref, apix = read_map(inp.even)
box = ref.shape[0]
keep, w = select_subtilts(table, state, parse_keep(spt["keep"]))  # global quantiles: same in every chunk
a, b = chunk_ranges(table.n3d, spt["chunk_size"])[int(smk.wildcards.chunk)]
rows = table.rows_of(np.arange(a, b))
even, odd = reconstruct_halves(table, state, rows, ImageLoader(table, box), box, sym=spt["sym"], keep_mask=keep,
                               weights=w, apix=apix, microscope=smk.params.microscope)
with atomic_write(out.rec) as tmp, open(tmp, "wb") as f:
    np.savez(f, F_even=even.F, W_even=even.W, F_odd=odd.F, W_odd=odd.W, box=box, apix=apix,
             n_even=even.n_inserted, n_odd=odd.n_inserted)
log.info("particles %d-%d: %d of %d subtilts inserted (even %d, odd %d)", a, b - 1, int(keep[rows].sum()), rows.size,
         even.n_inserted, odd.n_inserted)
