"""spa_report: convergence plot (FSC vs truth and iteration-to-iteration), class gallery, summary json
(figures: emflow.pipeline.spa_plots)."""
from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

import json  # noqa: E402

from emflow.demo import scores  # noqa: E402
from emflow.io import atomic_write, read_fsc_txt, read_hdf_stack  # noqa: E402
from emflow.pipeline.spa_plots import class_gallery, convergence_plot  # noqa: E402


def main(inp, out, iters: list[str]) -> None:
    summary: dict = {"iterations": []}
    prev, truth, bar_freq = [], [], None  # demo: the accuracy bar, FSC vs truth ≥ 0.5 at 2.5 px (1/Å)
    for it, fpath, tpath, epath in zip(iters, inp.fsc, inp.fsc_truth, inp.truth_eval):
        prev.append(read_fsc_txt(fpath))
        entry = {"iter": it, "fsc_prev_0.5_A": scores.fsc_crossing(*prev[-1], 0.5)}
        with open(epath) as fh:
            ev = json.load(fh)
        has_truth = ev.get("truth", True) is not None  # demo: the truth evaluation of spa_fsc
        truth.append(read_fsc_txt(tpath) if has_truth else None)
        if has_truth:
            entry |= {k: v for k, v in ev.items() if k not in ("iter", "apix")}
            bar_freq = 1.0 / (ev["bar_px"] * ev["apix"])
        summary["iterations"].append(entry)
    convergence_plot(iters, prev, truth, bar_freq, out.convergence)
    avgs, headers = read_hdf_stack(inp.classes)
    class_gallery(avgs, [h.get("ptcl_repr", 0) for h in headers], out.gallery)
    with atomic_write(out.summary) as tmp, open(tmp, "w") as fh:
        json.dump(summary, fh, indent=1)
    log.info("summary: %s", summary["iterations"][-1])


main(snakemake.input, snakemake.output, list(snakemake.params.iters))  # noqa: F821
