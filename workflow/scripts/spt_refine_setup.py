"""Snakemake adapter: set .lst + reference -> run tables, identity alignments, threed_00 even/odd (spec §3.6 steps 0-1)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import numpy as np  # noqa: E402

from emflow import filters, masks  # noqa: E402
from emflow.errors import InputError  # noqa: E402
from emflow.io import atomic_write, read_hdf_stack, read_lst, write_hdf_stack  # noqa: E402
from emflow.sta.spt_files import gather_metadata, load_reference, read_map, write_state, write_tables  # noqa: E402
from emflow.sta.spt_refine import RefineState, parse_iters, parse_keep  # noqa: E402

inp, out, spt = snakemake.input, snakemake.output, snakemake.params.spt  # noqa: F821
parse_iters(spt["iters"])
parse_keep(spt["keep"])
table = gather_metadata(read_lst(inp.lst), shrink=snakemake.params.shrink, maxtilt_deg=spt["maxtilt_deg"],  # noqa: F821
                        source=inp.lst)
if table.n3d == 0 or table.n2d == 0:
    raise InputError("the particle set is empty", source=inp.lst, fix="check picking and extraction")
img, heads = read_hdf_stack(table.path3d[0], [table.idx3d[0]])
box, apix = img.shape[-1], float(heads[0].get("apix_x", 1.0))
write_tables(table, out.info3d, out.info2d)
write_state(table, RefineState.identity(table), out.ali3d, out.ali2d)
ref = load_reference(inp.ref, box, apix)
ref = filters.normalize_edgemean(ref) * masks.soft_sphere(box, box * 0.45, box * 0.04)
if spt["goldcontinue"]:
    even = odd = ref
    log.info("goldcontinue: the reference is used unfiltered for both halves")
else:
    even = odd = filters.lowpass_tophat(ref, apix, spt["startres"])
for path, vol in ((out.even, even), (out.odd, odd), (out.threed, 0.5 * (even + odd))):
    write_hdf_stack(path, np.asarray(vol, np.float32)[None], [{"apix_x": apix, "apix_y": apix, "apix_z": apix}], apix=apix)
res0 = spt["maxres"] if spt["maxres"] > 0 else spt["startres"]
with atomic_write(out.res) as tmp, open(tmp, "w") as f:
    json.dump({"iteration": 0, "maxres_a": res0, "box": box, "apix": apix}, f, indent=1)
with atomic_write(out.params) as tmp, open(tmp, "w") as f:
    json.dump({**spt, "box": box, "apix": apix, "n_particles": table.n3d, "n_subtilts": table.n2d}, f, indent=1)
log.info("%d particles (%d even, %d odd), %d subtilts, box %d, %.3f Å/px", table.n3d, int((table.cls == 0).sum()),
         int((table.cls == 1).sum()), table.n2d, box, apix)
