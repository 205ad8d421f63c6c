"""Snakemake adapter: merge partial reconstructions, postprocess (FSCs, masks, filtering), next resolution, plot."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emflow.io import atomic_write, write_fsc_txt, write_hdf_stack, write_mrc  # noqa: E402
from emflow.reconstruct import Reconstructor  # noqa: E402
from emflow.sta.postprocess import next_resolution, postprocess_halves  # noqa: E402

smk = snakemake  # noqa: F821
inp, out, spt = smk.input, smk.output, smk.params.spt
it = int(smk.wildcards.it)
recs = None
for path in inp.recs:
    with np.load(path) as d:
        box, apix = int(d["box"]), float(d["apix"])
        if recs is None:
            recs = [Reconstructor(box, pad=2, kernel="trilinear", sym=spt["sym"]) for _ in range(2)]
        for r, h in zip(recs, ("even", "odd")):
            r.F += d[f"F_{h}"]
            r.W += d[f"W_{h}"]
with open(inp.res_in) as f:
    res_prev = float(json.load(f)["maxres_a"])
pp = postprocess_halves(recs[0].finish(), recs[1].finish(), apix, res_prev, sym=spt["sym"])
res_next = next_resolution(pp.fsc_masked, apix, res_prev, spt["maxres"])
hdr = [{"apix_x": apix, "apix_y": apix, "apix_z": apix}]
for path, vol in ((out.threed, pp.final), (out.even, pp.even), (out.odd, pp.odd), (out.mask, pp.mask)):
    write_hdf_stack(path, np.asarray(vol, np.float32)[None], hdr, apix=apix)
write_mrc(out.threed_mrc, pp.final, apix)
for path, c in ((out.fsc_unmasked, pp.fsc_unmasked), (out.fsc_masked, pp.fsc_masked), (out.fsc_tight, pp.fsc_tight)):
    write_fsc_txt(path, c.freq_inv_a(apix), c.fsc)
summary = {"iteration": it, "kind": spt["kind"], "maxres_a": res_next, "aligned_at_a": res_prev,
           "res_0143_masked_a": pp.res_0143_a, "box": box, "apix": apix, "odd_to_even": pp.align_info}
with atomic_write(out.res) as tmp, open(tmp, "w") as f:
    json.dump(summary, f, indent=1)
fig, ax = plt.subplots(figsize=(6, 4))
for c, lab in ((pp.fsc_unmasked, "unmasked"), (pp.fsc_masked, "masked"), (pp.fsc_tight, "tight")):
    ax.plot(c.freq_inv_a(apix), c.fsc, label=lab)
ax.axhline(0.143, color="k", lw=0.5)
ax.set(xlabel="spatial frequency (1/Å)", ylabel="FSC", ylim=(-0.1, 1.02),
       title=f"iteration {it:02d} ({summary['kind']}): {pp.res_0143_a:.1f} Å at 0.143")
ax.legend()
with atomic_write(out.png) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
log.info("iteration %d: %.1f Å (masked FSC 0.143), next alignment resolution %.1f Å", it, pp.res_0143_a, res_next)
