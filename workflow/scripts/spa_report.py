"""spa_report: convergence plot (FSC vs truth and iteration-to-iteration), class gallery, summary json."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from emflow.demo import scores
from emflow.io import atomic_write, read_fsc_txt, read_hdf_stack

smk = snakemake  # noqa: F821


summary = {"iterations": []}
bar_freq = None  # demo: the accuracy bar, FSC vs truth ≥ 0.5 at 2.5 px (1/Å)
has_truth = any(json.loads(pathlib.Path(p).read_text()).get("truth", True) is not None for p in smk.input.truth_eval)
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for it, fpath, tpath, epath in zip(smk.params.iters, smk.input.fsc, smk.input.fsc_truth, smk.input.truth_eval):
    f, c = read_fsc_txt(fpath)
    axes[1].plot(f, c, label=f"it {it} vs {int(it) - 1:02d}")
    entry = {"iter": it, "fsc_prev_0.5_A": scores.fsc_crossing(f, c, 0.5)}
    with open(epath) as fh:
        ev = json.load(fh)
    if ev.get("truth", True) is not None:  # demo: the truth evaluation of spa_fsc
        ft, ct = read_fsc_txt(tpath)
        axes[0].plot(ft, ct, label=f"it {it}")
        entry |= {k: v for k, v in ev.items() if k not in ("iter", "apix")}
        bar_freq = 1.0 / (ev["bar_px"] * ev["apix"])
    summary["iterations"].append(entry)
if bar_freq is not None:
    axes[0].axvline(bar_freq, color="red", lw=0.8, ls=":", label="2.5 px bar")
for ax, title in zip(axes, ("FSC vs truth", "FSC between iterations")):
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.axhline(0.143, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="spatial frequency (1/Å)", ylabel="FSC", title=title, ylim=(-0.1, 1.02))
    ax.legend(fontsize=7)
if not has_truth:  # user data: no ground truth, only the iteration-to-iteration panel
    fig.delaxes(axes[0])
fig.tight_layout()
with atomic_write(smk.output.convergence, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=100, format="png")
avgs, headers = read_hdf_stack(smk.input.classes)
order = np.argsort([-h.get("ptcl_repr", 0) for h in headers])[:48]
ncol = 8
nrow = max(1, int(np.ceil(len(order) / ncol)))
fig, axs = plt.subplots(nrow, ncol, figsize=(ncol * 1.2, nrow * 1.3), squeeze=False)
for ax in axs.ravel():
    ax.axis("off")
for ax, c in zip(axs.ravel(), order):
    ax.imshow(avgs[c], cmap="gray")
    ax.set_title(f"{c}: {headers[c].get('ptcl_repr', 0)}", fontsize=6)
with atomic_write(smk.output.gallery, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=100, format="png")
with atomic_write(smk.output.summary) as tmp, open(tmp, "w") as fh:
    json.dump(summary, fh, indent=1)
log.info("summary: %s", summary["iterations"][-1])
