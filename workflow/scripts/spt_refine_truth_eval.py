"""Snakemake adapter (demo): one iteration vs the simulation truth -> truth_eval_XX.json + fsc_truth_XX.png."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from emflow.io import atomic_write, read_fsc_txt  # noqa: E402
from emflow.sta.spt_eval import evaluate_iteration, match_truth, read_truth, tomogram_of  # noqa: E402
from emflow.sta.spt_files import load_reference, read_map, read_state, read_tables  # noqa: E402

smk = snakemake  # noqa: F821
inp, out = smk.input, smk.output
table = read_tables(inp.info3d, inp.info2d)
state = read_state(table, inp.ali3d, inp.ali2d)
final, apix = read_map(inp.threed)
truth = {tomogram_of(p.replace("_truth.json", "__x")): read_truth(p) for p in inp.truth}
rot, pos = match_truth(table, truth, shrink=smk.params.shrink)
res = evaluate_iteration(table, state, final, load_reference(inp.truth_map, final.shape[0], apix, key=inp.truth_map),
                         apix, rot, pos)
with open(inp.res) as f:
    gold = json.load(f)
res.update(iteration=int(smk.wildcards.it), kind=gold["kind"], gold_0143_a=gold["res_0143_masked_a"],
           aligned_at_a=gold["aligned_at_a"])
with atomic_write(out.json) as tmp, open(tmp, "w") as f:
    json.dump(res, f, indent=1)
s_gold, f_gold = read_fsc_txt(inp.fsc_masked)
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(s_gold, f_gold, label=f"gold standard, masked ({res['gold_0143_a']:.1f} Å at 0.143)")
ax.plot(res["freq_inv_a"], res["fsc_truth"], label=f"vs truth ({res['fsc_truth_05_a']:.1f} Å at 0.5)")
for y in (0.143, 0.5):
    ax.axhline(y, color="k", lw=0.5, ls=":")
ax.set(xlabel="spatial frequency (1/Å)", ylabel="FSC", ylim=(-0.1, 1.02),
       title=f"iteration {res['iteration']:02d} ({res['kind']}): {res['median_orientation_deg']:.2f}°, "
             f"{res['median_translation_px']:.2f} px median error")
ax.legend(fontsize=8)
with atomic_write(out.png) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
log.info("iteration %s (%s): gold %.1f Å, vs truth %.1f Å (0.5), %.2f°, %.2f px", res["iteration"], res["kind"],
         res["gold_0143_a"], res["fsc_truth_05_a"], res["median_orientation_deg"], res["median_translation_px"])
