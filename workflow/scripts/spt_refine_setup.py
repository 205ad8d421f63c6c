"""Snakemake adapter: set .lst + reference -> run tables, identity alignments, threed_00 even/odd (spec §3.6 steps 0-1)."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import numpy as np  # noqa: E402

from emflow.errors import InputError  # noqa: E402
from emflow.io import atomic_write, read_hdf_stack, read_lst, write_hdf_stack  # noqa: E402
from emflow.sta.spt_files import gather_metadata, starting_references, write_state, write_tables  # noqa: E402
from emflow.sta.spt_refine import RefineState  # noqa: E402

inp, out, spt = snakemake.input, snakemake.output, snakemake.params.spt  # noqa: F821
table = gather_metadata(read_lst(inp.lst), shrink=snakemake.params.shrink, maxtilt_deg=spt["maxtilt_deg"],  # noqa: F821
                        source=inp.lst)
if table.n3d == 0 or table.n2d == 0:
    raise InputError("the particle set is empty", source=inp.lst, fix="check picking and extraction")
img, heads = read_hdf_stack(table.path3d[0], [table.idx3d[0]])
box, apix = img.shape[-1], heads[0].get("apix_x")
if not apix or apix <= 0:
    raise InputError("the particles have no pixel size (apix_x) in their header", source=table.path3d[0],
                     fix="re-extract the particles with emflow (rules/extract.smk writes apix_x)")
apix = float(apix)
write_tables(table, out.info3d, out.info2d)
write_state(table, RefineState.identity(table), out.ali3d, out.ali2d)
halves = (inp.ref_even, inp.ref_odd) if spt["goldcontinue"] else None
even, odd = starting_references(inp.ref, box, apix, startres=spt["startres"], goldstandard=spt["goldstandard"],
                                goldcontinue=spt["goldcontinue"], halves=halves,
                                key="spt_refine.ref" if snakemake.params.user_ref else inp.ref,  # noqa: F821
                                overrides=snakemake.params.apix_override)  # noqa: F821
if spt["goldcontinue"]:
    log.info("goldcontinue: the halves start from %s and %s (unfiltered, independent)", *halves)
elif not spt["goldstandard"]:
    log.warning("goldstandard is off: both halves start from the same unfiltered reference (model bias possible)")
for path, vol in ((out.even, even), (out.odd, odd), (out.threed, 0.5 * (even + odd))):
    write_hdf_stack(path, np.asarray(vol, np.float32)[None], [{"apix_x": apix, "apix_y": apix, "apix_z": apix}], apix=apix)
res0 = spt["maxres"] if spt["maxres"] > 0 else spt["startres"]
with atomic_write(out.res) as tmp, open(tmp, "w") as f:
    json.dump({"iteration": 0, "maxres_a": res0, "box": box, "apix": apix}, f, indent=1)
with atomic_write(out.params) as tmp, open(tmp, "w") as f:
    json.dump({**spt, "ref": inp.ref, "box": box, "apix": apix, "n_particles": table.n3d, "n_subtilts": table.n2d},
              f, indent=1)
log.info("%d particles (%d even, %d odd), %d subtilts, box %d, %.3f Å/px", table.n3d, int((table.cls == 0).sum()),
         int((table.cls == 1).sum()), table.n2d, box, apix)
