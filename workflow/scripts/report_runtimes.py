"""Snakemake adapter: benchmark tables of every job → bar chart of wall time per rule + a TSV."""

from emflow.pipeline.log import setup_logging

log = setup_logging(snakemake)  # noqa: F821

from emflow.demo import scores  # noqa: E402
from emflow.io import atomic_write  # noqa: E402
from emflow.pipeline import plots  # noqa: E402

smk = snakemake  # noqa: F821
records = scores.read_benchmarks(smk.params.benchmarks)
log.info("%d benchmark tables under %s", len(records), smk.params.benchmarks)
plots.runtimes(records, smk.output.png)
with atomic_write(smk.output.table) as tmp, open(tmp, "w") as fh:
    fh.write("stage\trule\tjob\tseconds\tmax_rss_mb\n")
    for r in records:
        fh.write(f"{r['stage']}\t{r['rule']}\t{r['job']}\t{r['seconds']:.3f}\t{r['max_rss_mb']}\n")
